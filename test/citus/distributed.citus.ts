// Runs only under `npm run test:citus` (its name is outside `npm test`'s include pattern): the
// layout on a real coordinator and two workers, and the end-to-end path across orgs whose shards
// sit on different workers.
import { randomBytes } from 'node:crypto';
import t, { type Test } from 'tap';
import { createDb, migrateLatest, type Db } from '../../shared/db';
import { createScratchDatabase, type ScratchDatabase } from '../../harness/postgres';
import { encodeUsageLine, packDatagrams } from '../../shared/usageWire';
import { seedOrg, startTestApi } from '../helpers/api';
import { secondInThePreviousHour, sendDatagrams, startTestCollector } from '../helpers/collector';
import { waitFor } from '../../harness/wait';
import { claimDueDeliveries, recordAttempt } from '../../collector/webhookStore';
import { closedBefore, moveClosedHours } from '../../collector/hourMove';
import { adminDatabaseUrl, freshDatabase } from '../helpers/database';
import { wiredSystem } from '../helpers/wiredSystem';
import { distributeTables, REFERENCE_TABLES } from '../../scripts/citus/distribute';
import { runCli } from '../../scripts/cli';

// The worker (port) holding an org's shard of the co-located usage tables.
async function workerOf(db: Db, orgId: string): Promise<number> {
  const { rows } = await db.raw(
    `select n.nodeport from pg_dist_placement p join pg_dist_node n on n.groupid = p.groupid
      where p.shardid = get_shard_id_for_distribution_column('api_key_usage', cast(? as uuid))`,
    [orgId],
  );
  return rows[0].nodeport;
}

// At least `min` orgs, seeded until both workers hold one: the hash of a random org id decides,
// so three orgs all land on one worker a quarter of the time. Twelve leave 1 chance in 2,048.
async function orgsOnBothWorkers(t: Test, api: Awaited<ReturnType<typeof startTestApi>>, db: Db, min: number) {
  const orgs: Array<Awaited<ReturnType<typeof seedOrg>>> = [];
  const workers = new Set<number>();
  for (let i = 0; i < 12 && (orgs.length < min || workers.size < 2); i += 1) {
    const seeded = await seedOrg(api, db, `org${i}`);
    orgs.push(seeded);
    workers.add(await workerOf(db, seeded.org.id));
  }
  t.equal(workers.size, 2, `${orgs.length} orgs on both workers`);
  return orgs;
}

// Every table with an org_id, found in the catalog rather than listed, so a new one is checked too.
t.test('the tables are laid out as docs/scaling.md says: reference tables, and every other table with an org_id by it, co-located', async (t) => {
  const { db } = await freshDatabase(t);
  const withOrgId = await db.raw(
    `select c.table_name as name
       from information_schema.columns c
       join information_schema.tables t on t.table_schema = c.table_schema and t.table_name = c.table_name
      where c.table_schema = current_schema() and c.column_name = 'org_id' and t.table_type = 'BASE TABLE'`,
  );
  const distributed = withOrgId.rows.map((row: { name: string }) => row.name).filter((name: string) => !REFERENCE_TABLES.includes(name));
  t.ok(
    ['audit_log', 'api_key_usage_current_hours', 'api_key_usage_log'].every((name) => distributed.includes(name)),
    `the catalog finds them (${distributed.length} tables)`,
  );
  const { rows } = await db.raw(
    `select logicalrelid::regclass::text as name, partmethod, column_to_column_name(logicalrelid, partkey) as column, colocationid
       from pg_dist_partition`,
  );
  const byName = new Map(rows.map((row: { name: string }) => [row.name, row]));
  for (const name of REFERENCE_TABLES) t.match(byName.get(name), { partmethod: 'n' }, `${name} is a reference table`);
  const anchor = byName.get('api_key_usage') as { colocationid: number };
  for (const name of distributed) {
    t.match(byName.get(name), { partmethod: 'h', column: 'org_id', colocationid: anchor.colocationid }, `${name}: by org_id, co-located`);
  }
  const workers = await db.raw(
    `select count(distinct groupid) as n from pg_dist_placement p join pg_dist_shard s using (shardid) where s.logicalrelid = 'api_key_usage'::regclass`,
  );
  t.equal(Number(workers.rows[0].n), 2, 'the shards are spread over both workers');
});

// audit_log's append-only triggers run on its shards (citus.enable_unsafe_triggers) and read
// organizations, a reference table, there. Before, no case here changed an entry.
t.test('the audit log on the shards: an entry cannot be changed or deleted, its IP can be erased, deleting its org takes it', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db, 'audited');
  const created = await api.request('POST', `/api/orgs/${org.id}/api-keys`, { key: adminKey, body: { name: 'audited', scopes: ['keys:read'] } });
  t.equal(created.status, 201);
  const entries = () => db('audit_log').where({ org_id: org.id }).orderBy('id');
  const byApi = (await entries()).find((entry) => entry.target_key_id === created.body.id);
  t.match(byApi, { action: 'key.create', ip: '127.0.0.1' }, 'the API wrote an entry with the caller address');
  const entry = () => db('audit_log').where({ org_id: org.id, id: byApi.id });

  await t.rejects(entry().update({ details: { name: 'forged' } }), /audit_log is append-only: UPDATE refused/);
  await t.rejects(entry().update({ ip: '192.0.2.1' }), /audit_log is append-only: UPDATE refused/, 'an address cannot be changed, only erased');
  await t.rejects(db('audit_log').where({ org_id: org.id }).del(), /audit_log is append-only: DELETE refused/);
  // Rolled back whatever happens: a TRUNCATE let through would empty every test's entries.
  const truncate = db.transaction(async (trx) => {
    await trx.raw('truncate audit_log');
    throw new Error('audit_log was truncated');
  });
  await t.rejects(truncate, /audit_log is append-only: TRUNCATE refused/);
  t.match(await entry().first(), { ip: '127.0.0.1', details: { name: 'audited' } }, 'unchanged');

  t.equal(await entry().update({ ip: null }), 1, 'erasing the address (IP_RETENTION_DAYS, key erase-ips) is allowed');
  t.equal((await entry().first()).ip, null);

  await db('organizations').where({ id: org.id }).del();
  t.same(await entries(), [], 'deleting the organization takes its entries');
});

t.test('requests through the real API, UDP and the collector are counted exactly for each org', async (t) => {
  const { api, db, org, adminKey } = await wiredSystem(t);
  const other = await seedOrg(api, db, 'globex');
  const callers = [
    { orgId: org.id, adminKey, n: 70 },
    { orgId: other.org.id, adminKey: other.adminKey, n: 45 },
  ];
  for (const caller of callers) {
    const created = await api.services.apiKeys.create(caller.orgId, { name: 'caller', scopes: ['keys:read'], expiresAt: null });
    const statuses = await Promise.all(
      Array.from({ length: caller.n }, async () => (await api.request('GET', '/api/whoami', { key: created.plaintext })).status),
    );
    t.ok(
      statuses.every((status) => status === 200),
      `${caller.n} calls answered`,
    );
    const row = await waitFor('the uses to be persisted', async () => {
      const response = await api.request('GET', `/api/orgs/${caller.orgId}/api-keys/usage`, { key: caller.adminKey });
      const found = response.body.data.find((k: { id: string }) => k.id === created.key.id);
      return found?.requestCount === caller.n ? { found, listed: response.body.data } : undefined;
    });
    t.equal(row.found.lastUsedIp, '127.0.0.1');
    t.equal(row.found.requests.last24h, caller.n, 'the hourly buckets agree');
    t.equal(row.listed.length, 2, 'an org sees only its own keys: its admin and its caller');
  }
});

t.test('two collectors flushing the same keys of orgs on both workers sum exactly', async (t) => {
  const { db, url } = await freshDatabase(t, { poolMax: 2 });
  const api = await startTestApi(t, db);
  const orgs: Array<Awaited<ReturnType<typeof seedOrg>> & { keys: string[] }> = [];
  for (const seeded of await orgsOnBothWorkers(t, api, db, 4)) {
    const keys = [seeded.adminKeyId];
    for (let k = 0; k < 9; k += 1)
      keys.push((await api.services.apiKeys.create(seeded.org.id, { name: `k${k}`, scopes: ['keys:read'], expiresAt: null })).key.id);
    orgs.push({ ...seeded, keys });
  }

  const slow = { COLLECTOR_FLUSH_INTERVAL_MS: '600000' };
  const collectors = [await startTestCollector(t, url, slow), await startTestCollector(t, url, slow)];
  const lines = orgs.flatMap(({ org, keys }) =>
    keys.map((keyId, i) => encodeUsageLine({ keyId, orgId: org.id, ip: `10.2.0.${i % 3}`, outcome: i % 4 === 0 ? 'bad_secret' : 'ok', count: i + 1 })),
  );
  const ROUNDS = 3;
  for (let round = 0; round < ROUNDS; round += 1) {
    await Promise.all([
      sendDatagrams(collectors[0].receiver.port, packDatagrams(lines)),
      sendDatagrams(collectors[1].receiver.port, packDatagrams([...lines].reverse())),
    ]);
    await waitFor('both collectors to receive the round', () =>
      collectors.every((c) => c.ingest.usageLines === (round + 1) * lines.length) ? true : undefined,
    );
    t.same(await Promise.all(collectors.map((c) => c.flusher.flush())), [true, true], `round ${round} flushed on both`);
  }

  for (const { org, adminKey, keys } of orgs) {
    const usage = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?limit=100`, { key: adminKey });
    const byId = new Map(usage.body.data.map((k: { id: string }) => [k.id, k]));
    const expected = keys.map((_, i) => ({ proven: i % 4 === 0 ? 0 : 2 * ROUNDS * (i + 1), failed: i % 4 === 0 ? 2 * ROUNDS * (i + 1) : 0 }));
    t.same(
      keys.map((keyId) => {
        const row = byId.get(keyId) as { requestCount: number; failedAttempts: number };
        return { proven: row.requestCount, failed: row.failedAttempts };
      }),
      expected,
      `org ${org.id.slice(0, 8)}: every key exact, proven and failed apart`,
    );
    const series = await api.request('GET', `/api/orgs/${org.id}/api-keys/${keys[1]}/usage?granularity=hour&byOutcome=true`, { key: adminKey });
    t.equal(series.body.total, 2 * ROUNDS * 2, 'the time series of a key sums to its total');
  }
  const ledger = await db('usage_flushes')
    .whereIn(
      'org_id',
      orgs.map((o) => o.org.id),
    )
    .count({ n: '*' });
  t.equal(Number(ledger[0].n), 2 * ROUNDS * orgs.length, "one ledger row per flush and org, on the org's shard");
  t.equal(collectors[0].flusher.stats.failedFlushes + collectors[1].flusher.stats.failedFlushes, 0, 'no failed flush');
});

// FOR UPDATE runs on Citus only in a statement that stays on one shard: the claim goes one org at
// a time (collector/webhookStore.ts); a cross-org claim was refused and nothing was delivered.
t.test('the webhook worker claims due deliveries of orgs on both workers', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const orgs = await orgsOnBothWorkers(t, api, db, 3);
  const pinged: string[] = [];
  for (const [i, { org, adminKey }] of orgs.entries()) {
    const hooks = `/api/orgs/${org.id}/webhooks`;
    const created = await api.request('POST', hooks, { key: adminKey, body: { url: 'https://203.0.113.10/hook', events: ['*'] } });
    // The first org's secret rotated with a grace period: its delivery is claimed with the previous secret too.
    if (i === 0)
      t.equal((await api.request('POST', `${hooks}/${created.body.id}/rotate-secret`, { key: adminKey, body: { gracePeriodSeconds: 3600 } })).status, 200);
    const ping = await api.request('POST', `${hooks}/${created.body.id}/test`, { key: adminKey });
    t.equal(ping.status, 202);
    pinged.push(ping.body.deliveryId);
  }
  // A key's event on each org: its delivery names the key as it is, joined from the reference
  // table api_keys in the claim's statement on the org's shard.
  for (const { org, adminKey, adminKeyId } of orgs) {
    await api.request('PATCH', `/api/orgs/${org.id}/api-keys/${adminKeyId}`, { key: adminKey, body: { owner: `owner of ${org.name}` } });
    await db('key_events').insert({ org_id: org.id, key_id: adminKeyId, type: 'key.new_ip', occurred_at: new Date(), details: { ip: '203.0.113.1' } });
  }
  const claim = () => claimDueDeliveries(db, { leaseMs: 60_000, limit: 50, maxAttempts: 8 });
  const { deliveries: claimed } = await claim();
  const deliveries = claimed.filter((d) => d.eventType === 'webhook.ping');
  t.same(deliveries.map((d) => d.id).sort(), [...pinged].sort(), "every org's ping is claimed once");
  const byOrg = (a: [string, unknown], b: [string, unknown]) => (a[0] < b[0] ? -1 : 1);
  t.same(
    claimed
      .filter((d) => d.eventType === 'key.new_ip')
      .map((d): [string, unknown] => [d.orgId, d.key])
      .sort(byOrg),
    orgs.map(({ org }): [string, unknown] => [org.id, { name: 'admin', owner: `owner of ${org.name}` }]).sort(byOrg),
    "each org's key event is claimed once, naming its key and owner",
  );
  t.ok(
    deliveries.every((d) => d.key === null),
    'a ping names no key',
  );
  t.same(
    deliveries.filter((d) => d.previousSecretBox !== null).map((d) => d.id),
    [pinged[0]],
    'the rotated webhook comes with its previous secret in its grace period, the others without',
  );
  t.same(await claim(), { deliveries: [], spent: 0 }, 'leased deliveries are not claimed again');
  // The events list joins the key the same way, on the org's shard, through the API.
  for (const { org, adminKey, adminKeyId } of orgs) {
    const listed = await api.request('GET', `/api/orgs/${org.id}/api-keys/events`, { key: adminKey });
    t.match(listed.body.data, [{ keyId: adminKeyId, key: { name: 'admin', owner: `owner of ${org.name}` } }], `the events list names the key (${org.name})`);
  }
  // recordAttempt reads the delivery FOR KEY SHARE: Citus runs a row lock in a statement on one shard only.
  const sent = { startedAt: new Date(), durationMs: 5, statusCode: 204, error: null, succeeded: true, retryInMs: undefined };
  for (const delivery of deliveries) t.equal(await recordAttempt(db, delivery, sent), 'succeeded', 'and its attempt is recorded');
});

t.test('an event gets a delivery per matching webhook of its org, on its shard, and none without one', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const orgs = [await seedOrg(api, db, 'acme'), await seedOrg(api, db, 'globex'), await seedOrg(api, db, 'initech')];
  const [subscribed, other, silent] = orgs;
  for (const { org, adminKey } of [subscribed, other]) {
    await api.request('POST', `/api/orgs/${org.id}/webhooks`, { key: adminKey, body: { url: 'https://203.0.113.10/hook', events: ['key.new_ip'] } });
  }
  const event = (o: (typeof orgs)[number], type: string) => ({ org_id: o.org.id, key_id: o.adminKeyId, type, occurred_at: new Date(), details: {} });
  const inserted = await db('key_events')
    .insert([event(subscribed, 'key.new_ip'), event(subscribed, 'key.spike'), event(other, 'key.new_ip'), event(silent, 'key.new_ip')])
    .returning(['id', 'org_id', 'type']);
  const deliveries = await db('webhook_deliveries')
    .whereIn(
      'org_id',
      orgs.map((o) => o.org.id),
    )
    .select('org_id', 'event_id', 'event_type');
  // On Citus RETURNING comes back shard by shard, not in the order of the rows.
  const expected = inserted
    .filter((e) => e.type === 'key.new_ip' && e.org_id !== silent.org.id)
    .map((e) => ({ org_id: e.org_id, event_id: e.id, event_type: e.type }));
  const byEvent = (a: { event_id: string }, b: { event_id: string }) => (a.event_id < b.event_id ? -1 : 1);
  t.same(deliveries.sort(byEvent), expected.sort(byEvent), 'the key.new_ip events of the two subscribed orgs; not the spike, not the org without a webhook');
});

// The clean-up's UPDATE of api_keys (a reference table) reads the distributed usage tables and
// the usage log in one CTE, and the dormant rule reads rotated_at in the usage list's
// busiest-first page: both on orgs of both workers.
t.test('the dormant clean-up and the dormant flag, on orgs of both workers', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const orgs = await orgsOnBothWorkers(t, api, db, 2);
  const longAgo = new Date(Date.now() - 200 * 86_400_000);
  for (const { org, adminKey } of orgs) {
    const create = async (name: string) => (await api.services.apiKeys.create(org.id, { name, scopes: ['keys:read'], expiresAt: null })).key.id;
    const [idle, crossedLater, rotated] = [await create('idle'), await create('crossed later'), await create('rotated')];
    // Values, not expressions: Citus refuses a stable function over a column in an UPDATE of a reference table.
    await db('api_keys').whereIn('id', [idle, rotated]).update({ created_at: longAgo });
    await db('api_keys').where({ id: rotated }).update({ rotated_at: new Date() });
    const path = `/api/orgs/${org.id}/api-keys/revoke-dormant`;
    const dry = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90 } });
    t.strictSame(
      dry.body.keys.map((k: { id: string }) => k.id),
      [idle],
      'the idle key, not the rotated one',
    );
    await db('api_keys').where({ id: crossedLater }).update({ created_at: longAgo });
    const applied = await api.request('POST', path, { key: adminKey, body: { dormantDays: 90, dryRun: false, keyIds: [idle] } });
    t.strictSame(
      applied.body.keys.map((k: { id: string; status: string }) => [k.id, k.status]),
      [[idle, 'revoked']],
      'only the listed key',
    );
    const busiest = await api.request('GET', `/api/orgs/${org.id}/api-keys/usage?sort=requestCount&dormantDays=90`, { key: adminKey });
    t.equal(busiest.status, 200);
    t.equal(busiest.body.data.find((k: { id: string }) => k.id === rotated).dormant, false, 'rotated: not dormant');
    t.equal(busiest.body.data.find((k: { id: string }) => k.id === crossedLater).dormant, true, 'crossed later: dormant, not revoked');
  }
});

// Citus refuses a subquery in an INSERT: a key created with expected networks (normalised by
// PostgreSQL's network()) answered 500, and only a PATCH could set them.
t.test('a key created with expected networks, then changed, with the networks normalised', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey } = await seedOrg(api, db);
  const keys = `/api/orgs/${org.id}/api-keys`;
  const created = await api.request('POST', keys, {
    key: adminKey,
    body: { name: 'office', scopes: ['keys:read'], expectedNetworks: ['10.1.2.3/8', '2001:db8::1/32'] },
  });
  t.equal(created.status, 201);
  t.strictSame(created.body.expectedNetworks, ['10.0.0.0/8', '2001:db8::/32']);
  const patched = await api.request('PATCH', `${keys}/${created.body.id}`, { key: adminKey, body: { expectedNetworks: ['192.0.2.9/24'] } });
  t.strictSame([patched.status, patched.body.expectedNetworks], [200, ['192.0.2.0/24']]);
});

// The flush marks the networks over key.new_ip's hourly limit pending (one UPDATE per org) and the
// sweep raises them later (a lateral count per key, an INSERT from arrays, one UPDATE per org).
t.test('key.new_ip over the hourly limit: pending in the flush, raised by the sweep, for orgs on both workers', async (t) => {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const orgs = await orgsOnBothWorkers(t, api, db, 2);
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000', EVENTS_NEW_IP_PER_KEY_HOUR: '1' });
  const second = await secondInThePreviousHour();
  // Its uses are in a closed hour of the shared database: moved, so that test/hourMove.test.ts,
  // which runs next, finds only its own to move.
  t.teardown(() => moveClosedHours(db, closedBefore(Date.now())));
  // Used before: their new networks raise key.new_ip, not key.first_use.
  await db('api_key_usage').insert(orgs.map(({ org, adminKeyId }) => ({ org_id: org.id, key_id: adminKeyId, request_count: 1 })));
  const lines = orgs.flatMap(({ org, adminKeyId }) =>
    [1, 2, 3].map((n) => `${encodeUsageLine({ keyId: adminKeyId, orgId: org.id, ip: `198.51.${n}.1`, outcome: 'ok', count: 1 })}|T${second - n}`),
  );
  await sendDatagrams(collector.receiver.port, lines);
  await waitFor('the lines', () => (collector.ingest.usageLines === lines.length ? true : undefined));
  await collector.flusher.flush();
  // The database is shared with the other tests' orgs.
  const orgIds = orgs.map(({ org }) => org.id);
  const state = async () => {
    const counts = async (table: string, where: string) =>
      Object.fromEntries(
        (await db(table).whereRaw(where).whereIn('org_id', orgIds).groupBy('org_id').select('org_id', db.raw('count(*)::int as n'))).map((r) => [
          r.org_id,
          r.n,
        ]),
      );
    return { events: await counts('key_events', "type = 'key.new_ip'"), pending: await counts('api_key_ip_history', 'event_due_at is not null') };
  };
  const each = (n: number) => Object.fromEntries(orgs.map(({ org }) => [org.id, n]));
  t.strictSame(await state(), { events: each(1), pending: each(2) }, 'one event a key in the hour of its lines, two networks pending');
  const listed = await db('deferred_network_orgs').whereIn('org_id', orgIds).pluck('org_id');
  t.strictSame(listed.sort(), [...orgIds].sort(), 'the flush lists both orgs for the sweep, on their shards');
  await collector.sweep.sweep();
  t.strictSame(await state(), { events: each(2), pending: each(1) }, 'the sweep raises one more a key in this hour');
  t.equal(collector.sweep.stats.failedSweeps, 0);
});

// citus:distribute drops the foreign keys among the tables it distributes and adds them back once
// all are: a refusal halfway left them dropped, and a run again, finding none among the tables,
// never added them back, so their ON DELETE CASCADE was gone. The shared database is laid out, so
// only this test's tables wait, in name order: the last one is refused (a primary key without
// org_id) after the other two were distributed.
t.test('citus:distribute refused halfway keeps the foreign keys among the tables it lays out, and a run again lays them out with them', async (t) => {
  const { db } = await freshDatabase(t, { poolMax: 1 });
  t.teardown(() => db.raw('drop table if exists zz_fk_deliveries, zz_fk_webhooks, zz_fk_zrefused cascade'));
  await db.raw('create table zz_fk_webhooks (org_id uuid not null references organizations (id) on delete cascade, id int, primary key (org_id, id))');
  await db.raw(
    `create table zz_fk_deliveries (org_id uuid not null references organizations (id) on delete cascade, id int, webhook_id int not null,
       primary key (org_id, id), foreign key (org_id, webhook_id) references zz_fk_webhooks (org_id, id) on delete cascade)`,
  );
  await db.raw('create table zz_fk_zrefused (org_id uuid not null, id int primary key)');
  const tables = ['zz_fk_deliveries', 'zz_fk_webhooks', 'zz_fk_zrefused'];
  const foreignKey = async () =>
    (
      await db.raw(
        `select pg_get_constraintdef(oid) as definition from pg_constraint where conrelid = 'zz_fk_deliveries'::regclass and confrelid = 'zz_fk_webhooks'::regclass`,
      )
    ).rows;
  const distributed = async () =>
    (
      await db.raw(`select logicalrelid::regclass::text as name from pg_dist_partition where partmethod = 'h' and logicalrelid::regclass::text = any(?)`, [
        tables,
      ])
    ).rows;
  const cascade = [{ definition: 'FOREIGN KEY (org_id, webhook_id) REFERENCES zz_fk_webhooks(org_id, id) ON DELETE CASCADE' }];
  t.strictSame(await foreignKey(), cascade);

  await t.rejects(
    distributeTables(db),
    /failed distributing zz_fk_zrefused: .*cannot create constraint on "zz_fk_zrefused".*Rolled back: none of zz_fk_deliveries, zz_fk_webhooks, zz_fk_zrefused is distributed.*run npm run citus:distribute again/,
    'refused, saying what was rolled back and what to run',
  );
  t.strictSame(await foreignKey(), cascade, 'the foreign key is still there');
  t.strictSame(await distributed(), [], 'none of them distributed');

  await db.raw('alter table zz_fk_zrefused drop constraint zz_fk_zrefused_pkey, add primary key (org_id, id)');
  t.strictSame(await distributeTables(db), tables, 'a run again lays all three out');
  t.strictSame(await foreignKey(), cascade, 'with the foreign key');
  const [org] = await db('organizations').insert({ name: 'fk' }).returning('id');
  await db('zz_fk_webhooks').insert({ org_id: org.id, id: 1 });
  await db('zz_fk_deliveries').insert({ org_id: org.id, id: 1, webhook_id: 1 });
  await db('zz_fk_webhooks').where({ org_id: org.id, id: 1 }).del();
  t.strictSame(await db('zz_fk_deliveries').where({ org_id: org.id }), [], 'deleting the webhook takes its delivery, on the shards');
  await db('organizations').where({ id: org.id }).del();
});

// A database of its own on every node of the cluster, with the extension and the workers
// registered (as scripts/citus/cluster.ts creates the shared one), migrated but not laid out: a
// deployment moving to Citus with its rows, which the shared database, distributed before any
// test wrote to it, is not. Dropped on every node at the end.
async function undistributedDatabase(t: Test, shared: Db): Promise<Db> {
  const nodes: Array<{ nodename: string; nodeport: number; groupid: number }> = (
    await shared.raw('select nodename, nodeport, groupid from pg_dist_node order by groupid')
  ).rows;
  const name = `kc_moving_${process.pid}_${randomBytes(4).toString('hex')}`;
  const scratch: ScratchDatabase[] = [];
  let db: Db | undefined;
  t.teardown(async () => {
    await db?.destroy();
    for (const database of scratch) await database.drop();
  });
  for (const node of nodes) {
    const admin = new URL(adminDatabaseUrl());
    admin.hostname = node.nodename;
    admin.port = String(node.nodeport);
    scratch.push(await createScratchDatabase(admin.toString(), name));
    const created = createDb(scratch[scratch.length - 1].url, { poolMax: 1 });
    try {
      await created.raw('create extension citus');
    } finally {
      await created.destroy();
    }
  }
  // One connection, as npm run citus:distribute has: distributeTables sets a setting for its session.
  db = createDb(scratch[0].url, { poolMax: 1 });
  const [coordinator, ...workers] = nodes;
  await db.raw('select citus_set_coordinator_host(?, ?)', [coordinator.nodename, coordinator.nodeport]);
  for (const worker of workers) await db.raw('select citus_add_node(?, ?)', [worker.nodename, worker.nodeport]);
  await migrateLatest(db);
  return db;
}

// Distributing copies a table's rows into its shards, and the copy inserts them there: the outbox
// trigger on key_events fired for every event a deployment already had, and Citus refused it ("cannot
// execute a distributed query from a query on a shard"), so no deployment with events could move to
// Citus. Had it run, it would have enqueued deliveries again for events that had theirs (sent and
// cleaned up since) or that came before the webhook. The event before the webhook here shows the
// latter: a copy that enqueued anything would give it a delivery.
t.test('citus:distribute lays out a database that holds key events, enqueues no delivery for them, and a new event then gets its one', async (t) => {
  const { db: shared } = await freshDatabase(t, { poolMax: 1 });
  const db = await undistributedDatabase(t, shared);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db, 'moving');
  const event = (type: string) => ({ org_id: org.id, key_id: adminKeyId, type, occurred_at: new Date(), details: {} });
  const [beforeWebhook] = await db('key_events').insert(event('key.new_ip')).returning('id');
  const hook = await api.request('POST', `/api/orgs/${org.id}/webhooks`, { key: adminKey, body: { url: 'https://203.0.113.10/hook', events: ['*'] } });
  t.equal(hook.status, 201);
  const [withDelivery] = await db('key_events').insert(event('key.spike')).returning('id');
  const deliveries = () => db('webhook_deliveries').where({ org_id: org.id }).orderBy('id').select('id', 'event_id');
  const enqueued = await deliveries();
  t.strictSame(
    enqueued.map((d) => d.event_id),
    [withDelivery.id],
    'before: the event after the webhook has its delivery, the one before has none',
  );

  const laidOut = await distributeTables(db);
  t.ok(
    ['key_events', 'webhooks', 'webhook_deliveries', 'audit_log'].every((name) => laidOut.includes(name)),
    'laid out, events and all',
  );
  const { rows } = await db.raw(`select partmethod from pg_dist_partition where logicalrelid = 'key_events'::regclass`);
  t.strictSame(rows, [{ partmethod: 'h' }], 'key_events is distributed');
  t.strictSame(
    (await db('key_events').where({ org_id: org.id }).orderBy('id').pluck('id')).sort(),
    [beforeWebhook.id, withDelivery.id].sort(),
    'its events are in the shards',
  );
  t.strictSame(await deliveries(), enqueued, 'copying the events enqueued nothing');

  // The outbox trigger is in force again, on the coordinator and on every shard.
  const state = await db.raw(`select tgenabled from pg_trigger where tgrelid = 'key_events'::regclass and tgname = 'key_events_enqueue_webhooks'`);
  t.strictSame(state.rows, [{ tgenabled: 'O' }], 'enabled on the coordinator');
  const shards = await db.raw(
    `select distinct result from run_command_on_shards('key_events', $$select tgenabled from pg_trigger where tgrelid = '%s'::regclass and tgname like 'key_events_enqueue_webhooks%%'$$)`,
  );
  t.strictSame(shards.rows, [{ result: 'O' }], 'and on every shard');
  const [after] = await db('key_events').insert(event('key.new_ip')).returning('id');
  t.strictSame((await deliveries()).map((d) => d.event_id).sort(), [withDelivery.id, after.id].sort(), 'an event after the move gets exactly one delivery');
});

// Laying a table out leaves its original rows in the coordinator's own storage of it, which
// citus:distribute empties. create_reference_table commits on its own, before the other tables
// are distributed in one transaction: a run refused there left organizations laid out with every
// org still in that storage, and the run that succeeded next emptied only the copies of the tables
// it laid out itself (organizations: 8192 bytes, against 0).
t.test('citus:distribute refused after laying out the reference tables empties their coordinator copies on the run that succeeds', async (t) => {
  const { db: shared } = await freshDatabase(t, { poolMax: 1 });
  const db = await undistributedDatabase(t, shared);
  await db('organizations').insert({ name: 'moving' });
  await db.raw('create table zz_refused (org_id uuid not null, id int primary key)');
  // The tables of pg_dist_partition whose storage on the coordinator itself has pages.
  const coordinatorCopies = async () =>
    (await db.raw(`select logicalrelid::regclass::text as name from pg_dist_partition where pg_relation_size(logicalrelid) > 0 order by 1`)).rows.map(
      (row: { name: string }) => row.name,
    );

  await t.rejects(distributeTables(db), /failed distributing zz_refused: .*cannot create constraint on "zz_refused".*Rolled back/);
  const reference = await db.raw(`select logicalrelid::regclass::text as name from pg_dist_partition where partmethod = 'n' and repmodel = 't' order by 1`);
  t.strictSame(
    reference.rows.map((row: { name: string }) => row.name),
    [...REFERENCE_TABLES].sort(),
    'the reference tables stayed laid out',
  );
  t.ok((await coordinatorCopies()).includes('organizations'), "with the org's original row still on the coordinator");

  await db.raw('alter table zz_refused drop constraint zz_refused_pkey, add primary key (org_id, id)');
  t.ok((await distributeTables(db)).includes('zz_refused'), 'a run again lays the rest out');
  t.strictSame(await coordinatorCopies(), [], 'and no laid-out table keeps its original rows on the coordinator, the reference tables included');
  t.strictSame(await db('organizations').pluck('name'), ['moving'], 'the org is in its shards');
  t.strictSame(await distributeTables(db), [], 'a third run has nothing to do');
});

// Each copy of a reference table's rows, per node: one created_at a row, whichever copy a query reads.
async function createdAtPerNode(db: Db, table: string, where: string): Promise<Array<{ nodeport: number; result: string }>> {
  const { rows } = await db.raw(
    `select nodeport, result from run_command_on_placements(?, $$select string_agg(id || '=' || cast(created_at as text), ', ' order by id) from %s where ${where}$$)`,
    [table],
  );
  return rows;
}

// Each node's copy filled the column default with its own transaction's now(): the copies of one
// key differed by 8-70 ms, so a key's createdAt depended on the copy a query read.
t.test("every node's copy of an org and a key made by the CLI and the API holds one created_at", async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const printed: string[] = [];
  const cliDeps = { db, pepper: randomBytes(32).toString('hex'), now: Date.now, out: (text: string) => printed.push(text), err: () => {} };
  t.equal(await runCli(['org', 'create', 'copies', '--json'], cliDeps), 0);
  const { org } = JSON.parse(printed.join('\n')) as { org: { id: string } };
  t.equal(await runCli(['key', 'create', org.id, '--name', 'by cli', '--scopes', 'keys:read'], cliDeps), 0);
  const acme = await seedOrg(api, db, 'acme-copies');
  const created = await api.request('POST', `/api/orgs/${acme.org.id}/api-keys`, { key: acme.adminKey, body: { name: 'by api', scopes: ['keys:read'] } });
  t.equal(created.status, 201);

  const orgs = await createdAtPerNode(db, 'organizations', `id in ('${org.id}', '${acme.org.id}')`);
  const keys = await createdAtPerNode(db, 'api_keys', `org_id in ('${org.id}', '${acme.org.id}')`);
  t.equal(new Set(keys.map((copy) => copy.nodeport)).size, 3, 'a copy on the coordinator and on each worker');
  const distinct = (copies: Array<{ result: string }>) => [...new Set(copies.map((copy) => copy.result))];
  t.equal(distinct(orgs).length, 1, `the orgs' copies agree: ${distinct(orgs).join(' / ')}`);
  t.equal(distinct(keys).length, 1, `the keys' copies agree: ${distinct(keys).join(' / ')}`);
});
