// Secrets under hostile requests: every secret comparison on the real HTTP auth path goes through
// crypto.timingSafeEqual on equal-length HMAC digests (a spy: a timing check could not tell, as the
// HMAC each comparison computes first takes far longer than any early exit saves), and key material a client puts where it does not belong
// (URL path, query, request id, other headers) never reaches a log line or a response body.
import crypto from 'node:crypto';
import http from 'node:http';
import { Writable } from 'node:stream';
import t from 'tap';
import type * as AppModule from '../../api/app';
import { formatKey } from '../../api/keys/keyMaterial';
import { insertOrganization } from '../../api/orgs/orgs.repository';
import { loadConfig } from '../../shared/config';
import { createLogger } from '../../shared/logger';
import { closeServer, listen } from '../../shared/process';
import { seedOrg, startTestApi } from '../helpers/api';
import { freshDatabase } from '../helpers/database';
import { LeakScan, reportFigures } from '../helpers/faults';

const leaks = new LeakScan();

t.test('every secret comparison on the HTTP auth path is crypto.timingSafeEqual on two 32-byte digests', async (t) => {
  const { db } = await freshDatabase(t);
  const calls: Array<[number, number]> = [];
  let bufferEquals = 0;
  const spiedCrypto = {
    ...crypto,
    timingSafeEqual: (a: NodeJS.ArrayBufferView, b: NodeJS.ArrayBufferView) => {
      calls.push([a.byteLength, b.byteLength]);
      return crypto.timingSafeEqual(a, b);
    },
  };
  // A fresh copy of the app whose every module (keyMaterial included) sees the spied node:crypto.
  const { createApp } = t.mockRequire<typeof AppModule>('../../api/app', { 'node:crypto': spiedCrypto, crypto: spiedCrypto });
  const equals = Buffer.prototype.equals;
  Buffer.prototype.equals = function (this: Buffer, other: Uint8Array) {
    bufferEquals += 1;
    return equals.call(this, other);
  };
  t.teardown(() => void (Buffer.prototype.equals = equals));

  const config = loadConfig({ NODE_ENV: 'test', KEY_CACHE_TTL_MS: '0' });
  const lines: string[] = [];
  const logger = createLogger({ level: 'info', name: 'spied', destination: new Writable({ write: (c, _e, done) => (lines.push(c.toString()), done()) }) });
  const { app, services } = createApp({ db, logger, config: config.api, webhooks: config.webhooks, recordUse: () => {} });
  const server = http.createServer(app);
  const port = await listen(server, '127.0.0.1', 0, 'PORT');
  t.teardown(() => closeServer(server));
  leaks.watch('spied api log', () => lines);

  const org = await insertOrganization(db, 'spied');
  const created = await services.apiKeys.create(org.id, { name: 'k', scopes: ['keys:read', 'keys:write'], expiresAt: null });
  const key = created.plaintext;
  const rotated = (await services.apiKeys.rotate(org.id, created.key.id, { graceSeconds: 60 })).plaintext;
  leaks.plaintext(key);
  leaks.plaintext(rotated);
  const get = async (presented: string) => (await fetch(`http://127.0.0.1:${port}/api/whoami`, { headers: { authorization: `Bearer ${presented}` } })).status;

  calls.length = 0;
  bufferEquals = 0;
  const wrong = `${key.slice(0, 36)}${'Q'.repeat(43)}`;
  const cases: Array<[string, string, number, number]> = [
    // [what, presented key, expected status, comparisons: the current hash, then the previous one in grace]
    ['the current secret', rotated, 200, 1],
    ['the previous secret, in its grace period', key, 200, 2],
    ['a wrong secret', wrong, 401, 2],
    ['a secret differing in its last character', formatKey(created.key.id, `${rotated.slice(36, 78)}${rotated[78] === 'A' ? 'B' : 'A'}`), 401, 2],
    ['a checksum that does not match (refused unread)', `${rotated.slice(0, -1)}${rotated.endsWith('A') ? 'B' : 'A'}`, 401, 0],
  ];
  const seen: Record<string, number> = {};
  for (const [what, presented, status, comparisons] of cases) {
    const before = calls.length;
    t.equal(await get(presented), status, `${what}: ${status}`);
    seen[what] = calls.length - before;
    t.equal(calls.length - before, comparisons, `${what}: ${comparisons} constant-time comparison(s)`);
  }
  t.ok(
    calls.every(([a, b]) => a === 32 && b === 32),
    'always two 32-byte HMAC-SHA-256 digests, never the raw secrets',
  );
  t.equal(bufferEquals, 0, 'no Buffer#equals (early-exit) comparison on the way');
  await leaks.hashesFrom(db);
  reportFigures(t, 'constant-time-spy', { comparisons: seen, digestBytes: [...new Set(calls.flat())] });
});

t.test('key material put where it does not belong never reaches a log line or a response body', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  leaks.plaintext(adminKey);
  leaks.watch('api bodies (misplaced keys)', () => api.evidence.bodies);
  leaks.watch('api log (misplaced keys)', () => api.evidence.logLines);
  const probes: Array<[string, 'GET' | 'POST', string, Record<string, string>, string?]> = [
    ['key in the query string', 'GET', `/api/whoami?key=${adminKey}&api_key=${adminKey}`, { authorization: `Bearer ${adminKey}` }],
    ['key as an unknown query parameter on a validated route', 'GET', `/api/orgs/${org.id}/api-keys?key=${adminKey}`, { authorization: `Bearer ${adminKey}` }],
    ['key as the request id (too long for one: replaced)', 'GET', '/api/whoami', { authorization: `Bearer ${adminKey}`, 'x-request-id': adminKey }],
    ['key in unrelated headers', 'GET', '/api/whoami', { authorization: `Bearer ${adminKey}`, 'x-debug': adminKey, cookie: `k=${adminKey}` }],
    ['key with a trailing garbage character', 'GET', '/api/whoami', { authorization: `Bearer ${adminKey}x` }],
    ['key in both headers', 'GET', '/api/whoami', { authorization: `Bearer ${adminKey}`, 'x-api-key': adminKey }],
    [
      'key in JSON body fields',
      'POST',
      `/api/orgs/${org.id}/api-keys`,
      { authorization: `Bearer ${adminKey}` },
      `{"name":"${adminKey}","scopes":["${adminKey}"],"secret":"${adminKey}"}`,
    ],
    [
      'key in a malformed JSON body',
      'POST',
      `/api/orgs/${org.id}/api-keys`,
      { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
      `{"name":"${adminKey}`,
    ],
  ];
  for (const [what, method, path, headers, body] of probes) {
    const response = await api.request(method, path, { headers, body });
    t.ok(response.status < 500, `${what}: ${response.status}`);
    t.notOk(response.headers.get('x-request-id')?.includes(adminKey.slice(36, 79)), `${what}: not echoed in X-Request-Id`);
  }
  // Its hashes first, so the scan also looks for them in what these probes got back.
  await leaks.hashesFrom(db);
  t.same(
    leaks.scan().hits.filter((hit) => hit.source.includes('misplaced')),
    [],
    'none of these reaches a log line or a body',
  );

  // The request log records req.path, and the 404 message echoes it.
  const bodiesBefore = api.evidence.bodies.length;
  const logBefore = api.evidence.logLines.length;
  t.equal(
    (await api.request('GET', `/api/${adminKey}`, { headers: { authorization: `Bearer ${adminKey}` } })).status,
    404,
    'a key pasted into the URL path: 404',
  );
  await new Promise((resolve) => setTimeout(resolve, 50));
  const secret = adminKey.slice(36, 79);
  t.notOk(
    api.evidence.bodies.slice(bodiesBefore).some((text) => text.includes(secret)),
    'the 404 body does not echo it',
  );
  t.notOk(
    api.evidence.logLines.slice(logBefore).some((text) => text.includes(secret)),
    'the request log does not hold it',
  );
});

t.test('leak scan: no key or hash in any response body or log line of this file', async (t) => {
  const result = leaks.scan();
  t.ok(result.texts > 0 && result.secrets > 0, `scanned ${result.texts} texts (${result.bytes} bytes) for ${result.secrets} secrets`);
  t.same(result.hits, [], 'zero hits, the misplaced keys and the URL-path probe included');
});
