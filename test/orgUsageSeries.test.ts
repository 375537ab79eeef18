import t, { type Test } from 'tap';
import { readUsageSeries } from '../api/usage/usage.repository';
import { captureMainStatement, explainStatement, pagesRead, sumOverRelation, type PlanNode } from '../harness/explain';
import { ORG_HOUR_INDEX } from '../migrations/20261208000280_org_usage_series';
import { TABLE } from '../shared/tables';
import { seedOrg, startTestApi, twoOrgWorld } from './helpers/api';
import { freshDatabase, migrateBesideWrites, migrateDownTo, onCitus } from './helpers/database';
import { MIGRATION_CONFIG } from '../shared/db';
import { flushUses } from './helpers/flushUses';
import { runCli } from '../scripts/cli';

// GET /api/orgs/:id/usage: every key of the org summed by the hour or day, from both bucket tables
// (closed hours moved to api_key_usage_hourly, open ones in api_key_usage_current_hours; an hour
// may have a row in each after a late use), with the keys used per bucket and over the range.

const ORG_HOUR_MIGRATION = '20261208000280_org_usage_series.ts';
const BEFORE_ORG_HOUR_INDEX = '20261208000270_key_restore.ts';
const DAY_1 = '2026-03-01T00:00:00.000Z';
const DAY_2 = '2026-03-02T00:00:00.000Z';
const at = (iso: string, hours: number) => new Date(Date.parse(iso) + hours * 3_600_000);

async function world(t: Test) {
  const { db, api, acme, globex } = await twoOrgWorld(t, Date.now());
  const create = async (name: string) => (await api.services.apiKeys.create(acme.org.id, { name, scopes: ['keys:read'], expiresAt: null })).key.id;
  const [ci, staging, guessed] = [await create('ci'), await create('staging'), await create('guessed')];
  const row = (orgId: string, keyId: string, hour: Date, counts: { ok?: number; forbidden?: number; bad_secret?: number }) => {
    const ok = counts.ok ?? 0;
    const forbidden = counts.forbidden ?? 0;
    return {
      org_id: orgId,
      key_id: keyId,
      hour,
      request_count: ok + forbidden,
      ok_count: ok,
      forbidden_count: forbidden,
      bad_secret_count: counts.bad_secret ?? 0,
    };
  };
  await db(TABLE.usageHourly).insert([
    row(acme.org.id, ci, at(DAY_1, 3), { ok: 10, forbidden: 2 }),
    row(acme.org.id, ci, at(DAY_1, 4), { ok: 5 }),
    row(acme.org.id, staging, at(DAY_1, 3), { ok: 1 }),
    row(acme.org.id, staging, at(DAY_2, 1), { ok: 7 }),
    // Failed attempts only: in the outcomes, not a key used.
    row(acme.org.id, guessed, at(DAY_1, 3), { bad_secret: 9 }),
    row(globex.org.id, globex.adminKeyId, at(DAY_1, 3), { ok: 1000 }),
  ]);
  // A late use of ci's 03:00 after its hour was moved: the same hour in the open hours' table.
  await db(TABLE.usageCurrentHours).insert([row(acme.org.id, ci, at(DAY_1, 3), { ok: 3 }), row(globex.org.id, globex.adminKeyId, at(DAY_2, 1), { ok: 500 })]);
  const series = (query: string, key = acme.adminKey, orgId = acme.org.id) => api.request('GET', `/api/orgs/${orgId}/usage?${query}`, { key });
  return { db, api, acme, globex, ci, staging, guessed, series };
}

t.test("an org's series sums every key of the org, both bucket tables, and no other org's", async (t) => {
  const { acme, series } = await world(t);
  const days = await series(`granularity=day&from=${DAY_1}&to=${at(DAY_2, 24).toISOString()}&byOutcome=true`);
  t.equal(days.status, 200);
  t.strictSame(days.body, {
    orgId: acme.org.id,
    granularity: 'day',
    from: DAY_1,
    to: at(DAY_2, 24).toISOString(),
    total: 28,
    keysUsed: 2,
    buckets: [
      { start: DAY_1, requestCount: 21, outcomes: { ok: 19, forbidden: 2, expired: 0, revoked: 0, bad_secret: 9, cross_org: 0 }, keysUsed: 2 },
      { start: DAY_2, requestCount: 7, outcomes: { ok: 7, forbidden: 0, expired: 0, revoked: 0, bad_secret: 0, cross_org: 0 }, keysUsed: 1 },
    ],
  });

  const hours = await series(`granularity=hour&from=${at(DAY_1, 3).toISOString()}&to=${at(DAY_1, 6).toISOString()}`);
  t.strictSame(
    hours.body.buckets,
    [
      { start: at(DAY_1, 3).toISOString(), requestCount: 16, keysUsed: 2 },
      { start: at(DAY_1, 4).toISOString(), requestCount: 5, keysUsed: 1 },
      { start: at(DAY_1, 5).toISOString(), requestCount: 0, keysUsed: 0 },
    ],
    'every hour of the range, zero-filled; without byOutcome no outcomes',
  );
  t.strictSame([hours.body.total, hours.body.keysUsed], [21, 2], "the range's keys: ci and staging once each");

  const empty = await series(`granularity=day&from=2025-01-01T00:00:00Z&to=2025-01-03T00:00:00Z`);
  t.strictSame([empty.body.total, empty.body.keysUsed, empty.body.buckets.map((b: { requestCount: number }) => b.requestCount)], [0, 0, [0, 0]]);
});

t.test("another org's series is a 404, and a key needs keys:read", async (t) => {
  const { api, acme, globex, series } = await world(t);
  const across = await series(`granularity=day&from=${DAY_1}&to=${DAY_2}`, globex.adminKey);
  t.equal(across.status, 404, "globex's key asking for acme's series");
  const own = await series(`granularity=day&from=${DAY_1}&to=${DAY_2}`, globex.adminKey, globex.org.id);
  t.equal(own.body.total, 1000, "globex's own series: its key only");
  const writer = await api.services.apiKeys.create(acme.org.id, { name: 'writer', scopes: ['keys:write'], expiresAt: null });
  const forbidden = await series(`granularity=day&from=${DAY_1}&to=${DAY_2}`, writer.plaintext);
  t.equal(forbidden.status, 403);
  t.match(forbidden.body.error.message, /keys:read/);
  const bad = await series('granularity=week');
  t.equal(bad.status, 400);
  t.match(bad.body.error.message, /granularity/);
  const backwards = await series(`from=${DAY_2}&to=${DAY_1}`);
  t.match([backwards.status, backwards.body.error.message], [400, /from: must not be after to/]);
  const extra = await series('keyId=' + acme.adminKeyId);
  t.match([extra.status, extra.body.error.message], [400, /keyId/], 'a parameter the route does not read is refused, not dropped');
});

t.test('uses flushed by the collector show in the series of their org', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const acme = await seedOrg(api, db);
  const other = await api.services.apiKeys.create(acme.org.id, { name: 'other', scopes: ['keys:read'], expiresAt: null });
  await flushUses(db, [
    { orgId: acme.org.id, keyId: acme.adminKeyId },
    { orgId: acme.org.id, keyId: other.key.id },
    { orgId: acme.org.id, keyId: other.key.id },
  ]);
  const now = new Date();
  const response = await api.request(
    'GET',
    `/api/orgs/${acme.org.id}/usage?granularity=hour&from=${at(now.toISOString(), -1).toISOString()}&to=${at(now.toISOString(), 1).toISOString()}`,
    { key: acme.adminKey },
  );
  t.strictSame([response.body.total, response.body.keysUsed], [3, 2]);
});

// Without 20261208000280's (org_id, hour) index, a short range of an org read either every hour
// the org ever had (the primary key leads with key_id) or every org's rows of the range (the
// retention's index on hour alone). With it, the range's rows of the org only, which lie together
// on the heap (the upkeep moves an hour's rows org by org: here, hour by hour).
t.test("a short range of an org's long history reads the range's pages only", { skip: onCitus() && 'a plan of the single-node table' }, async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const acme = await seedOrg(api, db);
  const to = new Date('2026-03-31T00:00:00Z');
  const hours = async (orgId: string, keys: number, days: number) =>
    db.raw(
      `with keys as (select gen_random_uuid() as id from generate_series(1, ?))
       insert into ${TABLE.usageHourly} (org_id, key_id, hour, request_count, ok_count)
       select ?, keys.id, h, 1, 1
         from generate_series(cast(? as timestamptz) - cast(? as interval), cast(? as timestamptz) - interval '1 hour', interval '1 hour') as h, keys
        order by h, keys.id`,
      [keys, orgId, to, `${days} days`, to],
    );
  // acme: 50 keys × 30 days of hours, 36,000 rows, of which the last day holds 1,200. Twenty
  // other orgs of 500 keys on that day: 240,000 rows.
  await hours(acme.org.id, 50, 30);
  for (let i = 0; i < 20; i++) await hours((await seedOrg(api, db, `other ${i}`)).org.id, 500, 1);
  await db.raw(`vacuum analyze ${TABLE.usageHourly}`);
  const read = () => readUsageSeries(db, { orgId: acme.org.id, from: new Date(to.getTime() - 24 * 3_600_000), to, granularity: 'hour' });
  t.strictSame([(await read()).keysUsed, (await read()).buckets.length], [50, 24]);
  const statement = await captureMainStatement(db, read);
  const [{ 'QUERY PLAN': plan }] = (await explainStatement(db, statement, 'analyze, buffers, format json')) as Array<{
    'QUERY PLAN': Array<{ Plan: PlanNode }>;
  }>;
  const indexes: unknown[] = [];
  const visit = (node: PlanNode & { 'Index Name'?: string }) => {
    if (node['Index Name']) indexes.push(node['Index Name']);
    for (const child of node.Plans ?? []) visit(child);
  };
  visit(plan[0].Plan);
  t.ok(indexes.includes(ORG_HOUR_INDEX.name), `the plan reads ${ORG_HOUR_INDEX.name} (it read ${indexes.join(', ')})`);
  // Without the index the plan read acme's whole month in the primary key: 198 pages. With it 31.
  const pages = sumOverRelation(plan[0].Plan, TABLE.usageHourly, pagesRead);
  t.ok(pages < 100, `pages of the hourly buckets read: ${pages}, the day's, not the month's`);
});

// 20261208000280 builds its index concurrently on a table the previous version filled, while that
// version's upkeep keeps moving hours into it; down() drops it again.
t.test(
  'the migration builds the index beside the previous version, on its rows, and down drops it',
  { skip: onCitus() && 'a single-node migration run' },
  async (t) => {
    const { db, url } = await freshDatabase(t);
    const api = await startTestApi(t, db);
    const acme = await seedOrg(api, db);
    await migrateDownTo(db, BEFORE_ORG_HOUR_INDEX);
    const indexValid = async () =>
      (await db.raw<{ rows: Array<{ valid: boolean }> }>('select indisvalid as valid from pg_index where indexrelid = to_regclass(?)', [ORG_HOUR_INDEX.name]))
        .rows[0]?.valid;
    t.equal(await indexValid(), undefined, 'no index before it');
    const moved = (hour: string, ok: number) => ({ org_id: acme.org.id, key_id: acme.adminKeyId, hour: new Date(hour), request_count: ok, ok_count: ok });
    await db(TABLE.usageHourly).insert(moved(DAY_1, 4));
    const written = await migrateBesideWrites(
      t,
      db,
      url,
      ORG_HOUR_MIGRATION,
      (holder) => holder(TABLE.usageHourly).insert(moved(at(DAY_1, 1).toISOString(), 5)),
      (trx) => trx(TABLE.usageHourly).insert(moved(at(DAY_1, 2).toISOString(), 6)),
    );
    t.notOk(typeof written === 'string', typeof written === 'string' ? written : 'an hour moved in during the build');
    t.equal(await indexValid(), true);
    const series = await readUsageSeries(db, { orgId: acme.org.id, from: new Date(DAY_1), to: new Date(DAY_2), granularity: 'day' });
    t.strictSame([series.buckets.map((b) => b.requestCount), series.keysUsed], [[15], 1], 'every row, before and during the build');
    await db.migrate.down({ ...MIGRATION_CONFIG, name: ORG_HOUR_MIGRATION });
    t.equal(await indexValid(), undefined, 'down drops it');
  },
);

// The CLI's `org usage` for a script on the server with no admin key to hand out: the API's
// answer for the last n days, as whole buckets up to the current one, as JSON and as a table.
t.test("the CLI's org usage is the API's series for the last n days, as JSON and as a table", async (t) => {
  const { db, api, acme, series } = await world(t);
  // Not on a bucket's start: a range from now less n days began inside a bucket, which the API
  // counts whole (a review found 93 days of hours then one bucket past the API's limit).
  const now = at(DAY_2, 12.5).getTime();
  const out: string[] = [];
  const err: string[] = [];
  const deps = {
    db,
    pepper: api.config.api.keyPepper,
    now: () => now,
    usageSettings: api.config.api,
    out: (text: string) => out.push(text),
    err: (text: string) => err.push(text),
  };
  const printed = () => out.splice(0).join('\n');
  t.equal(await runCli(['org', 'usage', acme.org.id, '--days', '2', '--json'], deps), 0);
  const fromApi = await series(`granularity=day&from=${DAY_1}&to=${new Date(now).toISOString()}`);
  t.equal(fromApi.status, 200);
  t.strictSame(JSON.parse(printed()), fromApi.body, "the API's answer for the two days up to now");
  t.same(
    fromApi.body.buckets.map((bucket: { start: string }) => bucket.start),
    [DAY_1, DAY_2],
  );
  t.equal(fromApi.body.total, 28, 'both days of acme, not globex');

  t.equal(await runCli(['org', 'usage', acme.org.id, '--days', '2', '--granularity', 'hour'], deps), 0);
  const [heading, ...rows] = printed().split('\n');
  t.equal(heading, `28 requests, 2 keys used, from ${at(DAY_1, -11).toISOString()} to ${new Date(now).toISOString()} (by hour):`);
  t.equal(rows.length, 1 + 48, 'the column names and 48 hours, the current one last');
  t.match(rows.at(-1), new RegExp(`^${at(DAY_2, 12).toISOString()}\\s`));
  t.match(
    rows.find((row) => row.startsWith(at(DAY_1, 3).toISOString())),
    /^\S+\s+16\s+2$/,
    'ci 10 + 2 + 3 late, staging 1; guessed only failed',
  );

  t.equal(await runCli(['org', 'usage', acme.org.id, '--days', '2', '--outcomes', '--json'], deps), 0);
  const withOutcomes = await series(`granularity=day&from=${DAY_1}&to=${new Date(now).toISOString()}&byOutcome=true`);
  t.strictSame(JSON.parse(printed()), withOutcomes.body, "--outcomes: the API's answer with byOutcome=true");
  t.equal(await runCli(['org', 'usage', acme.org.id, '--days', '2', '--granularity', 'hour', '--outcomes'], deps), 0);
  const [, columns, ...hours] = printed().split('\n');
  t.match(columns, /^START\s+REQUESTS\s+KEYS USED\s+OK\s+FORBIDDEN\s+EXPIRED\s+REVOKED\s+BAD_SECRET\s+CROSS_ORG$/);
  t.match(
    hours.find((row) => row.startsWith(at(DAY_1, 3).toISOString())),
    /^\S+\s+16\s+2\s+14\s+2\s+0\s+0\s+9\s+0$/,
    'ci 13 ok and 2 forbidden, staging 1 ok; guessed 9 bad secrets, not requests of a key used',
  );
  t.equal(await runCli(['key', 'list', acme.org.id, '--outcomes'], deps), 2);
  t.match(err.splice(0).join('\n'), /key list: --outcomes does not apply/);

  t.equal(await runCli(['org', 'usage', acme.org.id, '--days', '93', '--granularity', 'hour'], deps), 0, 'the most hours the API answers');
  t.equal(printed().split('\n').length, 1 + 1 + 93 * 24);
  t.same(err, []);
  t.equal(await runCli(['org', 'usage', acme.org.id, '--days', '94', '--granularity', 'hour'], deps), 2);
  t.match(err.join('\n'), /--days: must be at most 93/);
  t.equal(await runCli(['org', 'usage', acme.org.id, '--days', '2232', '--json'], deps), 0, 'by day, as many days as the API answers');
  t.equal(JSON.parse(printed()).buckets.length, 2232);
  t.equal(await runCli(['org', 'usage', acme.org.id, '--days', '2233'], deps), 2);
  t.match(err.join('\n'), /--days: must be at most 2232/);
  t.equal(await runCli(['org', 'usage', acme.org.id, '--granularity', 'week'], deps), 2);
  t.match(err.join('\n'), /--granularity: must be hour or day/);
  t.equal(await runCli(['org', 'usage', '00000000-0000-4000-8000-000000000000'], deps), 1);
  t.match(err.join('\n'), /error: .*not found/i);
});
