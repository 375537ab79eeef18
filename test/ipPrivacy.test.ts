import { isIP } from 'node:net';
import t, { type Test } from 'tap';
import { lockOrgFor } from '../api/orgs/orgs.repository';
import { runCli } from '../scripts/cli';
import type pg from 'pg';
import { createDb, type Db } from '../shared/db';
import { eraseKeyIps, expireIpData, type IpErasureError } from '../shared/ipRetention';
import { truncateIp } from '../shared/ipTruncation';
import { encodeUsageLine, packDatagrams } from '../shared/usageWire';
import { seedOrg, startTestApi } from './helpers/api';
import { sendDatagrams, startTestCollector } from './helpers/collector';
import { waitFor } from '../harness/wait';
import { freshDatabase, onCitus } from './helpers/database';
import { DAY_MS } from '../shared/timeUnits';

// Client IPs are personal data: IP_TRUNCATE keeps only the network, IP_RETENTION_DAYS bounds how
// long any address is kept (every table that holds one), and `key erase-ips` erases one key's.

t.test('truncateIp: IPv4 to its /24, IPv6 to its /48, anything else untouched', async (t) => {
  const cases: Array<[string, string]> = [
    ['203.0.113.77', '203.0.113.0'],
    ['10.0.0.0', '10.0.0.0'],
    ['2001:db8:abcd:12::1', '2001:db8:abcd::'],
    ['2001:0db8:0001:0002:0003:0004:0005:0006', '2001:db8:1::'],
    ['2001:db8::7', '2001:db8::'],
    ['fe80::1', 'fe80::'],
    ['::1', '::'],
    ['::ffff:192.0.2.1', '::'],
    ['64:ff9b:1::192.0.2.1', '64:ff9b:1::'],
    ['not-an-ip', 'not-an-ip'],
  ];
  for (const [ip, expected] of cases) {
    t.equal(truncateIp(ip), expected, ip);
    if (isIP(ip)) t.equal(isIP(truncateIp(ip)), isIP(ip), `${ip}: still an address of its family`);
  }
});

async function world(t: Test) {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const acme = await seedOrg(api, db);
  const other = await api.services.apiKeys.create(acme.org.id, { name: 'other', scopes: ['keys:read'], expiresAt: null });
  // Every event then also makes a webhook delivery, whose payload copies the event's details.
  await db('webhooks').insert({ org_id: acme.org.id, url: 'https://203.0.113.10/in', event_types: ['*'], secret_box: Buffer.alloc(44) });
  return { db, url, api, acme, otherKeyId: other.key.id };
}

// The details of each event type that carries an address (docs/events.md), and one that carries none.
const eventDetails = (ip: string | null): Record<string, Record<string, unknown>> => ({
  'key.dormant': { lastUsedAt: null, dormantDays: 30 },
  'key.failed_attempts': { hour: '2026-11-25T12:00:00.000Z', attempts: 20, threshold: 20, lastIp: ip },
  'key.first_use': { ip },
  'key.new_ip': { ip, prefix: ip && `${ip.replace(/\.\d+$/, '.0')}/24` },
  'key.outside_networks': { ips: ip && [ip], expectedNetworks: ['10.0.0.0/8'] },
  'key.revoked_used': { ip, ips: ip && [ip] },
});

// Addresses for a key in every table that holds one, seen `daysAgo`.
async function seedIps(db: Db, orgId: string, keyId: string, ip: string, daysAgo: number) {
  const at = new Date(Date.now() - daysAgo * DAY_MS);
  await db('api_key_usage')
    .insert({
      key_id: keyId,
      org_id: orgId,
      request_count: 1,
      ok_count: 1,
      bad_secret_count: 1,
      last_used_at: at,
      last_used_ip: ip,
      last_failed_at: at,
      last_failed_ip: ip,
    })
    .onConflict(['org_id', 'key_id'])
    .merge();
  await db('api_key_recent_ips').insert({ org_id: orgId, key_id: keyId, ip, first_seen: at, last_seen: at, request_count: 1 });
  await db('api_key_failed_ips').insert({ org_id: orgId, key_id: keyId, ip, first_seen: at, last_seen: at, attempt_count: 1 });
  await db.raw('insert into api_key_ip_history (org_id, key_id, prefix, first_ip, first_seen, last_seen) values (?, ?, network(cast(? as inet)), ?, ?, ?)', [
    orgId,
    keyId,
    `${ip}/24`,
    ip,
    at,
    at,
  ]);
  // A usage log row a fold could not read: its addresses cannot be found, so it goes whole.
  await db('api_key_usage_set_aside').insert({ org_id: orgId, key_id: keyId, logged_at: at, reason: 'unreadable', delta: `["a form to come", "${ip}"]` });
  await db.raw(
    `insert into audit_log (org_id, occurred_at, actor_type, actor_key_id, actor_display_prefix, action, target_key_id, ip)
                values (?, ?, 'key', ?, 'ku_x', 'key.rotate', ?, ?)`,
    [orgId, at, keyId, keyId, ip],
  );
  // A new-network event's dedupe key names its network, as the collector writes it.
  const dedupe = (type: string) => (type === 'key.new_ip' ? `key.new_ip:${keyId}:${ip.replace(/\.\d+$/, '.0')}/24:${at.getTime()}` : null);
  const events = Object.entries(eventDetails(ip)).map(([type, details]) => ({
    org_id: orgId,
    key_id: keyId,
    type,
    occurred_at: at,
    details,
    dedupe_key: dedupe(type),
  }));
  await db('key_events').insert(events);
}

// Erased: the events and deliveries stay, each address field reads null.
const ERASED_DETAILS = Object.values(eventDetails(null));

const ipsOf = async (db: Db, keyId: string) => ({
  usage: await db('api_key_usage').where({ key_id: keyId }).first('last_used_ip', 'last_failed_ip'),
  recent: (await db('api_key_recent_ips').where({ key_id: keyId }).pluck('ip')).sort(),
  failed: (await db('api_key_failed_ips').where({ key_id: keyId }).pluck('ip')).sort(),
  history: (await db('api_key_ip_history').where({ key_id: keyId }).pluck('first_ip')).sort(),
  audit: await db('audit_log').where({ actor_key_id: keyId }).orderBy('id').pluck('ip'),
  events: await db('key_events').where({ key_id: keyId }).orderBy('type').pluck('details'),
  dedupeNamesNetwork: (await db('key_events').where({ key_id: keyId, type: 'key.new_ip' }).pluck('dedupe_key')).map((key: string) =>
    /\d+\.\d+\.\d+\.\d+/.test(key),
  ),
  deliveries: (await db('webhook_deliveries').whereRaw(`payload->>'keyId' = ?`, [keyId]).orderBy('event_type').select('payload')).map(
    (row) => row.payload.details,
  ),
  unreadableLog: await db('api_key_usage_set_aside').where({ key_id: keyId }).pluck('delta'),
});
const ipsKept = (ip: string) => ({
  usage: { last_used_ip: ip, last_failed_ip: ip },
  recent: [ip],
  failed: [ip],
  history: [ip],
  audit: [ip],
  events: Object.values(eventDetails(ip)),
  dedupeNamesNetwork: [true],
  deliveries: Object.values(eventDetails(ip)),
  unreadableLog: [`["a form to come", "${ip}"]`],
});
const IPS_ERASED = {
  usage: { last_used_ip: null, last_failed_ip: null },
  recent: [],
  failed: [],
  history: [],
  audit: [null],
  events: ERASED_DETAILS,
  dedupeNamesNetwork: [false],
  deliveries: ERASED_DETAILS,
  unreadableLog: [],
};
// Per table: rows deleted or fields cleared. Five of the six events (and their deliveries) hold an address.
const ONE_KEY_ERASED = {
  api_key_recent_ips: 1,
  api_key_failed_ips: 1,
  api_key_ip_history: 1,
  api_key_usage: 2,
  audit_log: 1,
  key_events: 5,
  webhook_deliveries: 5,
  api_key_usage_log: 0,
  api_key_usage_set_aside: 1,
};
const NOTHING_ERASED = Object.fromEntries(Object.keys(ONE_KEY_ERASED).map((table) => [table, 0]));

t.test('IP_TRUNCATE: the collector aggregates and stores networks only, and the audit log keeps the same', async (t) => {
  const { db, url } = await freshDatabase(t);
  const collector = await startTestCollector(t, url, { IP_TRUNCATE: 'true' });
  const api = await startTestApi(t, db, { env: { IP_TRUNCATE: 'true' } });
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  // Narrower than what truncation keeps: 203.0.113.0 stands for every address of its /24, and was
  // outside the /25 (a false alarm for a client inside it), as 2001:db8:1:: was outside the /64.
  await db('api_keys')
    .where({ id: adminKeyId })
    .update({ expected_networks: ['203.0.113.128/25', '2001:db8:1:5::/64'] });
  const line = (ip: string, outcome: 'ok' | 'bad_secret') => encodeUsageLine({ keyId: adminKeyId, orgId: org.id, ip, outcome, count: 1 });
  await sendDatagrams(
    collector.receiver.port,
    packDatagrams([line('203.0.113.200', 'ok'), line('203.0.113.201', 'ok'), line('2001:db8:1:5::3', 'ok'), line('198.51.100.23', 'bad_secret')]),
  );
  await waitFor('the uses to be written', async () =>
    (await db('api_key_usage').where({ key_id: adminKeyId }).first())?.request_count === 3 ? true : undefined,
  );
  t.same(await db('key_events').where({ key_id: adminKeyId, type: 'key.outside_networks' }), [], 'no alarm for networks overlapping the expected ones');
  const ips = await ipsOf(db, adminKeyId);
  t.same(ips.recent, ['2001:db8:1::', '203.0.113.0']);
  t.equal(
    (await db('api_key_recent_ips').where({ key_id: adminKeyId, ip: '203.0.113.0' }).first()).request_count,
    2,
    'two addresses of one /24 count as one network',
  );
  t.same(ips.failed, ['198.51.100.0']);
  t.same(ips.usage, { last_used_ip: '2001:db8:1::', last_failed_ip: '198.51.100.0' });

  t.equal((await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name: 'x', scopes: ['keys:read'] } })).status, 201);
  t.same(await db('audit_log').where({ actor_key_id: adminKeyId }).pluck('ip'), ['127.0.0.0'], 'the audit log stores the network too');
});

t.test('IP_RETENTION_DAYS: every table loses addresses older than the setting, and keeps the rest', async (t) => {
  const { db, acme, otherKeyId } = await world(t);
  await seedIps(db, acme.org.id, acme.adminKeyId, '192.0.2.1', 100);
  await seedIps(db, acme.org.id, otherKeyId, '192.0.2.2', 10);
  const erased = await expireIpData(db, 90);
  t.same(erased, ONE_KEY_ERASED);
  t.same(await ipsOf(db, acme.adminKeyId), IPS_ERASED, 'older than 90 days: gone, from event details and webhook payloads too');
  t.same(await ipsOf(db, otherKeyId), ipsKept('192.0.2.2'), '10 days: kept');
  t.ok((await db('api_key_usage').where({ key_id: acme.adminKeyId }).first()).last_used_at, 'the times and counts stay; only the address goes');
  t.same(await expireIpData(db, 90), NOTHING_ERASED, 'erased once: a second run finds nothing');
  const shorter = await expireIpData(db, 5);
  // On Citus the other files' rows share the database, and a 5-day setting takes theirs too.
  if (!onCitus()) t.same(shorter, ONE_KEY_ERASED, 'a shorter setting takes the rest');
  t.same(await ipsOf(db, otherKeyId), IPS_ERASED, 'a shorter setting takes the rest of every table');
  await t.rejects(db('audit_log').update({ ip: '203.0.113.1' }), /append-only/, 'the audit log allows erasing an address, nothing else');
});

// A deferred key.new_ip occurs when the sweep raises it, days after its network's first use:
// kept by occurred_at alone, its address outlived the setting by as long as the event waited
// (found by a review; fails without the fix).
t.test("IP_RETENTION_DAYS: a deferred key.new_ip goes by its network's first use, in the event and its deliveries", async (t) => {
  const { db, acme } = await world(t);
  const event = (firstSeenDaysAgo: number, ip: string) => ({
    org_id: acme.org.id,
    key_id: acme.adminKeyId,
    type: 'key.new_ip',
    occurred_at: new Date(Date.now() - DAY_MS),
    details: { ip, prefix: `${ip.replace(/\.\d+$/, '.0')}/24`, firstSeen: new Date(Date.now() - firstSeenDaysAgo * DAY_MS).toISOString(), deferred: true },
    dedupe_key: `deferred:${ip}`,
  });
  await db('key_events').insert([event(100, '192.0.2.9'), event(10, '198.51.100.9')]);
  await expireIpData(db, 90);
  const ips = async (table: string, column: string) => {
    const rows = await db(table)
      .where({ org_id: acme.org.id })
      .select(db.raw(`${column} as ip`));
    return rows.map((row: { ip: string | null }) => row.ip ?? 'erased').sort();
  };
  t.strictSame(await ips('key_events', "details->>'ip'"), ['198.51.100.9', 'erased'], 'first used 100 days ago: erased, though raised yesterday');
  t.strictSame(await ips('webhook_deliveries', "payload->'details'->>'ip'"), ['198.51.100.9', 'erased'], 'and in its delivery');
});

t.test('IP_RETENTION_DAYS: a network still in use keeps its row, but not the first address seen in it when that is older', async (t) => {
  const { db, acme } = await world(t);
  const history = (firstIp: string, firstSeenDaysAgo: number) =>
    db.raw('insert into api_key_ip_history (org_id, key_id, prefix, first_ip, first_seen, last_seen) values (?, ?, network(cast(? as inet)), ?, ?, ?)', [
      acme.org.id,
      acme.adminKeyId,
      `${firstIp}/24`,
      firstIp,
      new Date(Date.now() - firstSeenDaysAgo * DAY_MS),
      new Date(Date.now() - DAY_MS),
    ]);
  await history('192.0.2.57', 100);
  await history('198.51.100.7', 10);
  t.same((await expireIpData(db, 90)).api_key_ip_history, 1, 'one address erased');
  const rows = await db('api_key_ip_history')
    .where({ key_id: acme.adminKeyId })
    .orderBy('first_ip')
    .select(db.raw('cast(prefix as text) as prefix'), 'first_ip');
  t.same(
    rows.map((row) => `${row.prefix} ${row.first_ip}`),
    ['192.0.2.0/24 192.0.2.0', '198.51.100.0/24 198.51.100.7'],
    'first seen 100 days ago: the network stays remembered under its own address; 10 days ago: kept',
  );
  t.same((await expireIpData(db, 90)).api_key_ip_history, 0, 'erased once');
});

// The flush moves a network's last_seen only once it is an hour behind: a use 50 minutes after
// the network's first left it there, and a one-day setting deleted the row by it though the
// network was used within the day; its next use raised key.new_ip (found by a review; fails
// without the fix).
t.test('IP_RETENTION_DAYS: a network used within the setting stays remembered, though its last_seen lags the use', async (t) => {
  const { db, url } = await freshDatabase(t);
  let clockMs = -(DAY_MS + 30 * 60_000);
  const collector = await startTestCollector(t, url, {}, { now: () => Date.now() + clockMs });
  const api = await startTestApi(t, db);
  const { org, adminKeyId } = await seedOrg(api, db);
  const use = async (ip: string, agoMs: number) => {
    clockMs = -agoMs;
    const received = collector.ingest.usageLines + 1;
    await sendDatagrams(collector.receiver.port, [encodeUsageLine({ keyId: adminKeyId, orgId: org.id, ip, outcome: 'ok', count: 1 })]);
    await waitFor(`the use from ${ip} to be received`, () => (collector.ingest.usageLines === received ? true : undefined));
    await collector.flusher.flush();
  };
  await use('198.51.100.7', DAY_MS + 30 * 60_000);
  await use('198.51.100.8', DAY_MS - 20 * 60_000);
  await expireIpData(db, 1);
  t.same(
    (await db('api_key_ip_history').where({ key_id: adminKeyId }).select(db.raw('cast(prefix as text) as prefix'))).map((row) => row.prefix),
    ['198.51.100.0/24'],
    'the network, used 23 h 40 min ago, is remembered',
  );
  await use('198.51.100.8', 0);
  t.same(await db('key_events').where({ key_id: adminKeyId }).pluck('type'), ['key.first_use'], 'its next use is no new network');
});

// The audit log is never deleted from, and its rule (ip is not null, occurred_at past the cut-off)
// had no index to use: every hourly run read every entry ever written (5.1 s cold at 4 M entries,
// to clear 17 addresses). A deferred key.new_ip's rule (by details.firstSeen) read every event the
// same way. Here most rows are long erased and a few recent ones hold an address: the statements
// the run sends must find the ones due through the indexes of migration 20261207000250, not by
// reading the tables (fails without it: a Seq Scan on each).
t.test(
  "IP_RETENTION_DAYS: the audit log's and a deferred key.new_ip's erasure read the rows due through an index, not the whole table",
  { skip: onCitus() && "the plans are the shards' (one database shared by every test)" },
  async (t) => {
    const { db, acme } = await world(t);
    await db('webhooks').del();
    // 30,000 rows of 400 to 100 days ago, their addresses long erased, then 200 of yesterday.
    const when = "case when g > 30000 then now() - interval '1 day' else now() - make_interval(days => 400 - g / 100) end";
    await db.raw(
      `insert into audit_log (org_id, occurred_at, actor_type, actor_key_id, actor_display_prefix, action, target_key_id, ip)
       select ?, ${when}, 'key', ?, 'ku_x', 'key.rotate', ?, case when g > 30000 then '192.0.2.1' end
         from generate_series(1, 30200) g`,
      [acme.org.id, acme.adminKeyId, acme.adminKeyId],
    );
    await db.raw(
      `insert into key_events (org_id, key_id, type, occurred_at, details)
       select ?, ?, 'key.first_use', ${when}, jsonb_build_object('ip', case when g > 30000 then '192.0.2.1' end)
         from generate_series(1, 30200) g`,
      [acme.org.id, acme.adminKeyId],
    );
    await seedIps(db, acme.org.id, acme.adminKeyId, '192.0.2.2', 100);
    await seedIps(db, acme.org.id, acme.adminKeyId, '198.51.100.3', 95);
    // Deferred key.new_ip events raised yesterday, of networks first used 100 and 10 days ago.
    await db('key_events').insert(
      [100, 10].map((firstSeenDaysAgo, i) => ({
        org_id: acme.org.id,
        key_id: acme.adminKeyId,
        type: 'key.new_ip',
        occurred_at: new Date(Date.now() - DAY_MS),
        details: { ip: `203.0.113.${i}`, prefix: '203.0.113.0/24', firstSeen: new Date(Date.now() - firstSeenDaysAgo * DAY_MS).toISOString(), deferred: true },
        dedupe_key: `deferred:${i}`,
      })),
    );
    await db.raw('analyze audit_log, key_events');
    const statements: Array<{ sql: string; bindings: readonly unknown[] }> = [];
    const record = (query: { sql: string; bindings: readonly unknown[] }) => {
      if (/^update "audit_log"/.test(query.sql) || (/^update "key_events"/.test(query.sql) && query.sql.includes('firstSeen'))) statements.push(query);
    };
    db.on('query', record);
    try {
      t.match(await expireIpData(db, 90), { audit_log: 2, key_events: 11 }, "the entries older than the setting, and the deferred event's");
    } finally {
      db.off('query', record);
    }
    t.equal(statements.length, 2, "the run's statement on the audit log, and on the events by firstSeen");
    const connection = (await db.client.acquireConnection()) as pg.Client;
    try {
      for (const [statement, table, index] of [
        [statements[0], 'audit_log', 'audit_log_ip_held_idx'],
        [statements[1], 'key_events', 'key_events_first_seen_idx'],
      ] as const) {
        const { rows } = await connection.query(`explain (format json) ${statement.sql}`, [...statement.bindings]);
        const scans = planNodes(rows[0]['QUERY PLAN'][0].Plan).filter((node) => node['Relation Name'] === table && node['Node Type'] !== 'ModifyTable');
        t.same(
          scans.filter((node) => node['Node Type'] === 'Seq Scan'),
          [],
          `no Seq Scan on ${table}`,
        );
        t.ok(scans.length > 0 && scans.every((node) => node['Index Name'] === index), `read through ${index}`, { scans });
      }
    } finally {
      await db.client.releaseConnection(connection);
    }
  },
);

type PlanNode = { 'Node Type': string; 'Relation Name'?: string; 'Index Name'?: string; Plans?: PlanNode[] };
const planNodes = (node: PlanNode): PlanNode[] => [node, ...(node.Plans ?? []).flatMap(planNodes)];

// The run went table by table and its first failure ended it: with the audit log's statement past
// DATABASE_REPLY_TIMEOUT_MS (or failing for any reason), the events, deliveries and usage log were
// never erased again, with only retention_failures_total to show. Here the audit log is held by
// another session and the run's statements time out on it: every other table is still erased, and
// the run fails naming audit_log (fails without the fix: the events keep their addresses).
t.test(
  'IP_RETENTION_DAYS: a table that cannot be erased fails the run, after every other table is',
  { skip: onCitus() && "the lock is taken on the coordinator's table, the statements run on the shards" },
  async (t) => {
    const { db, url, acme } = await world(t);
    await seedIps(db, acme.org.id, acme.adminKeyId, '192.0.2.1', 100);
    const timingOut = createDb(url, { poolMax: 2, statementTimeoutMs: 500 });
    t.teardown(() => timingOut.destroy());
    const holder = createDb(url, { poolMax: 1 });
    t.teardown(() => holder.destroy());
    const held = await holder.transaction();
    await held.raw('lock table audit_log in access exclusive mode');
    const failure = await expireIpData(timingOut, 90).then(
      () => undefined,
      (error: Error) => error,
    );
    await held.rollback();
    t.match(failure?.message, /^IP addresses not erased in audit_log \(.*statement timeout.*\); the other tables were$/, 'the run fails, naming audit_log');
    t.same([...((failure as IpErasureError | undefined)?.failed?.keys() ?? [])], ['audit_log'], 'and no other table');
    t.same(await ipsOf(db, acme.adminKeyId), { ...IPS_ERASED, audit: ['192.0.2.1'] }, 'every table after the audit log is erased all the same');
    t.same(await expireIpData(db, 90), { ...NOTHING_ERASED, audit_log: 1 }, 'the next run erases the audit log');
  },
);

t.test(
  'key erase-ips beside a flush of the same key: both finish, in the flush order (totals row first), no deadlock',
  { skip: onCitus() && 'the lock wait is on a worker' },
  async (t) => {
    const { db, acme } = await world(t);
    await seedIps(db, acme.org.id, acme.adminKeyId, '192.0.2.1', 1);
    const key = { org_id: acme.org.id, key_id: acme.adminKeyId };
    const flush = await db.transaction();
    await flush('api_key_usage').where(key).increment('request_count', 1);
    const erasure = db.transaction((trx) => eraseKeyIps(trx, acme.org.id, acme.adminKeyId));
    // A session of this test's own database waiting on a lock (other test files hold lock waits of
    // their own: a server-wide count let the flush go on before the erasure had started).
    await waitFor('the erasure to wait for the flush', async () =>
      (await db.raw("select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'")).rows[0].n > 0
        ? true
        : undefined,
    );
    // The flush's next statement: the key's address row, which the erasure deletes.
    const seen = new Date();
    await flush('api_key_recent_ips')
      .insert({ ...key, ip: '192.0.2.1', first_seen: seen, last_seen: seen, request_count: 1 })
      .onConflict(['org_id', 'key_id', 'ip'])
      .merge({ last_seen: seen });
    await flush.commit();
    t.same((await erasure).api_key_recent_ips, 1, 'the erasure ran after the flush, and took the address it wrote');
    t.same(await db('api_key_recent_ips').where(key).pluck('ip'), []);
  },
);

// The erasure took its org's audit lock last, after locking the key's webhook deliveries; a
// webhook delete takes it first and then deletes those deliveries: queued behind the delete, the
// erasure deadlocked with it and PostgreSQL failed one (found by a review; fails without the fix).
t.test(
  'key erase-ips queued behind a webhook delete of its org: both finish, no deadlock',
  { skip: onCitus() && 'the lock wait is on a worker' },
  async (t) => {
    const { db, api, acme } = await world(t);
    await seedIps(db, acme.org.id, acme.adminKeyId, '192.0.2.1', 1);
    const { id: webhookId } = await db('webhooks').where({ org_id: acme.org.id }).first('id');
    const waiting = (count: number) => async () =>
      (await db.raw("select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'")).rows[0].n >= count
        ? true
        : undefined;
    // The org's audit lock held, so that the delete queues first and the erasure behind it.
    const holder = await db.transaction();
    await lockOrgFor(holder, 'audit', acme.org.id);
    const deletion = api.request('DELETE', `/api/orgs/${acme.org.id}/webhooks/${webhookId}`, { key: acme.adminKey });
    await waitFor('the delete to wait', waiting(1));
    const erasure = runCli(['key', 'erase-ips', acme.org.id, acme.adminKeyId], {
      db,
      pepper: 'p'.repeat(32),
      now: Date.now,
      out: () => undefined,
      err: () => undefined,
    });
    await waitFor('the erasure to wait', waiting(2));
    await holder.commit();
    t.strictSame([(await deletion).status, await erasure], [204, 0], 'the delete, then the erasure');
  },
);

t.test("key erase-ips: one key, every table, recorded in the audit log; another org's key is not found", async (t) => {
  const { db, acme, otherKeyId } = await world(t);
  await seedIps(db, acme.org.id, acme.adminKeyId, '192.0.2.1', 1);
  await seedIps(db, acme.org.id, otherKeyId, '192.0.2.2', 1);
  const out: string[] = [];
  const err: string[] = [];
  const cli = (...argv: string[]) => runCli(argv, { db, pepper: 'p'.repeat(32), now: Date.now, out: (text) => out.push(text), err: (text) => err.push(text) });
  t.equal(await cli('key', 'erase-ips', acme.org.id, acme.adminKeyId), 0);
  t.match(out.join('\n'), /api_key_recent_ips\s+1[\s\S]*audit_log\s+1/);
  t.same(await ipsOf(db, acme.adminKeyId), IPS_ERASED);
  t.same(await ipsOf(db, otherKeyId), ipsKept('192.0.2.2'), 'other keys keep theirs');
  t.match(await db('audit_log').where({ action: 'key.erase_ips' }).first(), {
    actor_type: 'cli',
    target_key_id: acme.adminKeyId,
    ip: null,
    details: { erased: { api_key_recent_ips: 1 } },
  });

  t.equal(await cli('key', 'erase-ips', '00000000-0000-4000-8000-000000000000', acme.adminKeyId), 1, 'an unknown org');
  const globex = await db('organizations').insert({ name: 'globex' }).returning('id');
  t.equal(await cli('key', 'erase-ips', globex[0].id, acme.adminKeyId), 1, 'a key of another org');
  t.match(err.join('\n'), /not found/);
  t.same(await eraseKeyIps(db, acme.org.id, acme.adminKeyId), NOTHING_ERASED, 'nothing left');
});

t.test('key erase-ips for a key deleted by SQL: the addresses its webhook deliveries and audit entries kept go too', async (t) => {
  const { db, acme, otherKeyId } = await world(t);
  await seedIps(db, acme.org.id, otherKeyId, '192.0.2.2', 1);
  await db('api_keys').where({ id: otherKeyId }).del();
  const out: string[] = [];
  const cli = (...argv: string[]) => runCli(argv, { db, pepper: 'p'.repeat(32), now: Date.now, out: (text) => out.push(text), err: () => undefined });
  t.equal(await cli('key', 'erase-ips', acme.org.id, otherKeyId), 0);
  t.match(out.join('\n'), /deleted/);
  const left = await ipsOf(db, otherKeyId);
  t.same([left.audit, left.deliveries], [[null], ERASED_DETAILS], 'the rows that outlive the key hold no address');
  t.equal(await cli('key', 'erase-ips', acme.org.id, otherKeyId), 1, 'erased: a second request finds no such key');
});
