import t from 'tap';
import { truncateIp, truncationBits } from '../shared/ipTruncation';
import { encodeUsageLine } from '../shared/usageWire';
import { seedOrg, startTestApi } from './helpers/api';
import { sendDatagrams, startTestCollector } from './helpers/collector';
import { freshDatabase } from './helpers/database';
import { waitFor } from '../harness/wait';

// A 6to4 address's /48 is 2002: and the client's whole public IPv4 address, so IP_TRUNCATE cuts
// it to that address's /24 instead (found by a privacy review; fails without the fix).

t.test('truncateIp: a 6to4 address to the /24 of the IPv4 address it embeds', async (t) => {
  const cases: Array<[string, string]> = [
    ['2002:cb00:7105::9', '2002:cb00:7100::'],
    ['2002:c000:2ff:1:2:3:4:5', '2002:c000:200::'],
    ['2002:a00:1::', '2002:a00::'],
  ];
  for (const [ip, expected] of cases) t.equal(truncateIp(ip), expected, ip);
  t.same(['203.0.113.0', '2001:db8:1::', '2002:cb00:7100::'].map(truncationBits), [24, 48, 40], 'the network each stands for');
});

t.test('IP_TRUNCATE: a 6to4 client is stored with the /24 of its IPv4 address, in the recent IPs and the key.new_ip history', async (t) => {
  const { db, url } = await freshDatabase(t);
  const collector = await startTestCollector(t, url, { IP_TRUNCATE: 'true' });
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  await sendDatagrams(collector.receiver.port, [encodeUsageLine({ keyId: adminKeyId, orgId: org.id, ip: '2002:cb00:7105::9', outcome: 'ok', count: 1 })]);
  await waitFor('the use to be written', async () =>
    (await db('api_key_usage').where({ key_id: adminKeyId }).first())?.request_count === 1 ? true : undefined,
  );
  t.same(await db('api_key_recent_ips').where({ key_id: adminKeyId }).pluck('ip'), ['2002:cb00:7100::']);
  t.same(await db('api_key_ip_history').where({ key_id: adminKeyId }).select(db.raw('cast(prefix as text) as prefix'), 'first_ip'), [
    { prefix: '2002:cb00:7100::/64', first_ip: '2002:cb00:7100::' },
  ]);
});
