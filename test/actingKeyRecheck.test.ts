import http from 'node:http';
import t from 'tap';
import { waitFor } from '../harness/wait';
import { seedOrg, startTestApi, verificationsOf } from './helpers/api';
import { freshDatabase } from './helpers/database';

// A change was authorized when its request arrived and made once its body had been read: a client
// sending its body slowly (Node waits up to 300 s) kept a key's power after the key was revoked or
// rotated, and minted a key that outlived it (found by a review, 2026-12-05).

// A POST whose headers go at once and whose body waits for `release`: the request is authorized
// before its body arrives. Resolves with the response's status and body.
function slowPost(port: number, path: string, key: string, body: unknown) {
  const text = JSON.stringify(body);
  const request = http.request({
    host: '127.0.0.1',
    port,
    path,
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) },
  });
  const answer = new Promise<{ status: number; body: any }>((resolve, reject) => {
    request.on('response', (response) => {
      let received = '';
      response.setEncoding('utf8').on('data', (chunk) => (received += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(received) }));
    });
    request.on('error', reject);
  });
  request.write(text.slice(0, 1));
  return { release: () => request.end(text.slice(1)), answer };
}

// The use's outcome is the answer's: a 401 for a key revoked meanwhile was recorded ok (fails
// without RefusedUseError), so no revoked-key-in-use event was raised for it.
const cases = [
  { name: 'revoked', meanwhile: 'revoke', status: 401, outcome: 'revoked' },
  { name: 'rotated, its old secret in its grace period', meanwhile: 'rotate', status: 401, outcome: 'forbidden' },
  { name: 'expired', meanwhile: 'expire', status: 401, outcome: 'expired' },
  // The create asks for a key that never expires, which the key may no longer give.
  { name: 'given an earlier expiry', meanwhile: 'shorten', status: 401, outcome: 'forbidden' },
  { name: 'left alone', meanwhile: 'nothing', status: 201, outcome: 'ok' },
] as const;

for (const { name, meanwhile, status, outcome } of cases) {
  t.test(`a key ${name} while its create's body is on its way: ${status} (fails without the fix)`, async (t) => {
    const { db } = await freshDatabase(t);
    const api = await startTestApi(t, db);
    const { org, adminKey, adminKeyId } = await seedOrg(api, db);
    const verified = verificationsOf(api);
    const slow = slowPost(api.port, `/api/orgs/${org.id}/api-keys`, adminKey, { name: 'late', scopes: ['keys:read', 'keys:write'], expiresAt: null });
    // Its key checked, it waits for its body (its use is recorded when answered).
    await waitFor("the create's key to be checked", () => (verified() === 1 ? true : undefined));
    if (meanwhile === 'revoke') await api.services.apiKeys.revoke(org.id, adminKeyId);
    if (meanwhile === 'rotate') await api.services.apiKeys.rotate(org.id, adminKeyId, { graceSeconds: 3600 });
    if (meanwhile === 'shorten') await api.services.apiKeys.update(org.id, adminKeyId, { expiresAt: new Date(Date.now() + 3_600_000) });
    // Its expiry reached while it waited (written directly: no route moves an expiry earlier).
    if (meanwhile === 'expire')
      await db('api_keys')
        .where({ id: adminKeyId })
        .update({ expires_at: new Date(Date.now() - 60_000) });
    slow.release();
    const { status: answered, body } = await slow.answer;
    t.equal(answered, status);
    t.same(
      api.uses.map((use) => use.outcome),
      [outcome],
      `its use recorded ${outcome}`,
    );
    const minted = await db('api_keys').where({ org_id: org.id, name: 'late' }).count<Array<{ count: string }>>('* as count');
    t.equal(Number(minted[0].count), status === 201 ? 1 : 0, status === 201 ? 'the key is created' : 'no key is created');
    if (status === 401) {
      t.match(body.error, {
        code: 'unauthorized',
        message: /revoked, rotated, expired or given an earlier expiry after the request was authorized; nothing was changed/,
      });
      const audit = await db('audit_log')
        .where({ org_id: org.id, action: 'key.create', actor_key_id: adminKeyId })
        .count<Array<{ count: string }>>('* as count');
      t.equal(Number(audit[0].count), 0, 'nor audited');
    }
  });
}

t.test('a revoked key cannot delete a webhook or queue a ping once its request is under way', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const [webhook] = await db('webhooks')
    .insert({ org_id: org.id, url: 'https://hooks.example.com/in', event_types: ['key.revoked_used'], secret_box: Buffer.alloc(60) })
    .returning('id');
  const actor = { id: adminKeyId, displayPrefix: 'ku_', rotatedAt: null, expiresAt: null };
  await api.services.apiKeys.revoke(org.id, adminKeyId);
  await t.rejects(api.services.webhooks.ping(org.id, webhook.id, { actor }), { code: 'unauthorized' });
  await t.rejects(api.services.webhooks.remove(org.id, webhook.id, { actor }), { code: 'unauthorized' });
  t.equal(Number((await db('webhook_deliveries').where({ org_id: org.id }).count<Array<{ count: string }>>('* as count'))[0].count), 0, 'no ping queued');
  t.equal(Number((await db('webhooks').where({ org_id: org.id }).count<Array<{ count: string }>>('* as count'))[0].count), 1, 'the webhook stays');
});
