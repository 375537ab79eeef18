import { randomBytes } from 'node:crypto';
import t, { type Test } from 'tap';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// An IPv6 subscriber is given a whole /64: counted per address, each of its 2^64 addresses had a
// failure window of its own, and the limit bound nothing. TRUST_PROXY=loopback lets each request
// name its client with X-Forwarded-For.

const THROTTLE = { TRUST_PROXY: 'loopback', AUTH_THROTTLE_MAX_FAILURES_PER_IP: '4', AUTH_THROTTLE_WINDOW_MS: '60000' };

async function world(t: Test, env: Record<string, string> = {}) {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { ...THROTTLE, ...env } });
  const { adminKey } = await seedOrg(api, db);
  const whoami = (ip: string, key: string) => api.request('GET', '/api/whoami', { key, headers: { 'x-forwarded-for': ip } });
  const unknownKey = () => `ku_${randomBytes(16).toString('hex')}_${randomBytes(32).toString('base64url')}`;
  const lockouts = () => api.evidence.logLines.map((line) => JSON.parse(line)).filter((line) => line.kind === 'auth_throttle_ip');
  return { api, adminKey, whoami, unknownKey, lockouts };
}

t.test('two addresses of one IPv6 /64 share one failure window; another /64 and IPv4 addresses have their own', async (t) => {
  const { adminKey, whoami, unknownKey, lockouts } = await world(t);
  const failures = [
    await whoami('2001:db8:1:2::a', unknownKey()),
    await whoami('2001:db8:1:2::a', unknownKey()),
    await whoami('2001:db8:1:2:ffff:ffff:ffff:b', unknownKey()),
    await whoami('2001:DB8:1:2:0:0:0:C', unknownKey()),
  ];
  t.same(
    failures.map((r) => r.status),
    [401, 401, 401, 401],
    'four failures from three addresses of the /64',
  );
  const refused = await whoami('2001:db8:1:2::d', adminKey);
  t.equal(refused.status, 429, 'a fifth address of the /64 is refused, even with a right key');
  t.equal(refused.body.error.code, 'too_many_requests');
  t.equal((await whoami('2001:db8:1:3::a', adminKey)).status, 200, 'the next /64 is served');
  for (const ip of ['192.0.2.1', '192.0.2.2', '192.0.2.1', '192.0.2.2']) await whoami(ip, unknownKey());
  t.equal((await whoami('192.0.2.3', adminKey)).status, 200, 'IPv4: counted per address, as before');
  t.match(lockouts(), [{ ip: '2001:db8:1:2::/64', msg: 'too many failed authentication attempts: throttled' }], 'the lockout names the /64');
});

t.test('with IP_TRUNCATE a /64 locked out is logged as its /48', async (t) => {
  const { whoami, unknownKey, lockouts, api } = await world(t, { IP_TRUNCATE: 'true' });
  for (let i = 0; i < 4; i += 1) await whoami(`2001:db8:1:2::${i + 1}`, unknownKey());
  t.match(lockouts(), [{ ip: '2001:db8:1::' }]);
  t.notOk(
    api.evidence.logLines.some((line) => line.includes('2001:db8:1:2')),
    'neither an address nor the /64 in any log line',
  );
});
