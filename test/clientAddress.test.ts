import t from 'tap';
import { forwardedAddress } from '../api/auth/clientAddress';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

t.test('an address a trusted proxy forwards: one spelling per address, or none', async (t) => {
  const cases: Array<[string, string | undefined]> = [
    ['192.0.2.7', '192.0.2.7'],
    ['192.0.2.7:5678', '192.0.2.7'],
    ['::ffff:192.0.2.7', '192.0.2.7'],
    ['::FFFF:192.0.2.7', '192.0.2.7'],
    ['::ffff:c000:207', '192.0.2.7'],
    ['0:0:0:0:0:ffff:c000:0207', '192.0.2.7'],
    ['[::ffff:192.0.2.7]:443', '192.0.2.7'],
    ['2001:DB8:0:0::1', '2001:db8::1'],
    ['[2001:db8::1]:443', '2001:db8::1'],
    ['fe80::1%eth0', 'fe80::1'],
    ['unknown', undefined],
    ['192.0.2.7:http', undefined],
    ['', undefined],
  ];
  for (const [text, address] of cases) t.equal(forwardedAddress(text), address, JSON.stringify(text));
});

t.test('through TRUST_PROXY, an upper-case mapped address is recorded as the IPv4 address', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { env: { TRUST_PROXY: 'loopback' } });
  const { adminKey } = await seedOrg(api, db);
  await api.request('GET', '/api/whoami', { key: adminKey, headers: { 'x-forwarded-for': '::FFFF:C000:207' } });
  t.strictSame(
    api.uses.map((use) => use.ip),
    ['192.0.2.7'],
  );
});
