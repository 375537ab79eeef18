import t, { type Test } from 'tap';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase, heldAuditLock, someoneWaitsOnLock } from './helpers/database';

// The clean-up's apply waits for its org's audit lock, up to API_STATEMENT_TIMEOUT_MS, and was
// judged by the clock read before that wait: a key that expired meanwhile was revoked, one that
// became dormant meanwhile was spared, and whether the org records uses was told before it. The
// org's audit lock is held here until the apply waits for it; the clock moves on (or a use is
// recorded) before it is released.

const DAY = 86_400_000;

async function heldOrg(t: Test) {
  const { db, url } = await freshDatabase(t, { poolMax: 6 });
  const clock = { now: Date.now() };
  const api = await startTestApi(t, db, { now: () => clock.now });
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const key = async (name: string, createdAt: number, expiresAt: number | null = null) => {
    const { id } = (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt: null })).key;
    await db('api_keys')
      .where({ id })
      .update({ created_at: new Date(createdAt), expires_at: expiresAt === null ? null : new Date(expiresAt) });
    return id;
  };
  const used = (keyId: string, at: number) =>
    db('api_key_usage').insert({ org_id: org.id, key_id: keyId, request_count: 1, ok_count: 1, last_used_at: new Date(at), last_used_ip: '192.0.2.1' });
  // The admin key, the caller, is never selected.
  const apply = (body: { keyIds?: string[] }) =>
    api.request('POST', `/api/orgs/${org.id}/api-keys/revoke-dormant`, { key: adminKey, body: { dormantDays: 30, dryRun: false, ...body } });
  const hold = () => heldAuditLock(t, url, org.id);
  const revoked = (ids: string[]) => db('api_keys').whereIn('id', ids).whereNotNull('revoked_at').orderBy('id').pluck('id');
  return { db, clock, org, adminKeyId, key, used, apply, hold, revoked };
}

t.test('an apply that waited for its org revokes the keys dormant, and active, when its turn comes', async (t) => {
  const { clock, key, used, adminKeyId, apply, hold, revoked } = await heldOrg(t);
  await used(adminKeyId, clock.now);
  const crossing = await key('dormant 1 s after the apply starts', clock.now - 30 * DAY + 1_000);
  const expiring = await key('dormant, expires 1 s after the apply starts', clock.now - 100 * DAY, clock.now + 1_000);
  const held = await hold();
  const applying = apply({ keyIds: [crossing, expiring] });
  await someoneWaitsOnLock(held);
  clock.now += 2_000;
  await held.commit();
  const answer = await applying;
  t.equal(answer.status, 200);
  t.strictSame(
    answer.body.keys.map((k: { id: string; status: string; revokedAt: string }) => [k.id, k.status, k.revokedAt]),
    [[crossing, 'revoked', new Date(clock.now).toISOString()]],
    'the key dormant by then, revoked then; not the key expired by then',
  );
  t.strictSame(await revoked([crossing, expiring]), [crossing], 'as written');
});

t.test("an org's last recorded use that leaves the window while the apply waits: refused", async (t) => {
  const { db, org, clock, key, used, adminKeyId, apply, hold, revoked } = await heldOrg(t);
  await used(adminKeyId, clock.now - 30 * DAY + 1_000);
  const old = await key('never used, 100 days old', clock.now - 100 * DAY);
  const held = await hold();
  const applying = apply({});
  await someoneWaitsOnLock(held);
  clock.now += 2_000;
  await held.commit();
  const answer = await applying;
  t.equal(answer.status, 409, 'no use recorded within 30 days once its turn came');
  t.match(answer.body.error, { code: 'conflict', message: /has a recorded use in the last 30 days/ });
  t.strictSame(await revoked([old]), [], 'nothing revoked');
  t.equal(await db('audit_log').where({ org_id: org.id, action: 'keys.revoke_dormant' }).first(), undefined, 'nothing audited');
});

t.test('a use recorded while the apply waits tells it that the org records uses: applied', async (t) => {
  const { clock, key, used, adminKeyId, apply, hold, revoked } = await heldOrg(t);
  await used(adminKeyId, clock.now - 31 * DAY);
  const old = await key('never used, 100 days old', clock.now - 100 * DAY);
  const busy = await key('used while the apply waits', clock.now - 100 * DAY);
  const held = await hold();
  const applying = apply({});
  // Refused without waiting, it is answered first.
  await Promise.race([someoneWaitsOnLock(held), applying]);
  await used(busy, clock.now);
  await held.commit();
  const answer = await applying;
  t.equal(answer.status, 200, 'not refused');
  t.strictSame(
    (answer.body.keys ?? []).map((k: { id: string }) => k.id),
    [old],
    'the dormant key revoked, not the one just used',
  );
  t.strictSame(await revoked([old, busy]), [old], 'as written');
});
