import t, { type Test } from 'tap';
import { listKeyUsage, type UsageQuery } from '../api/usage/usage.repository';
import type { Db } from '../shared/db';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';
import { captureMainStatement, explainStatement, pagesRead, rowsRead, sumOverRelation, type PlanNode } from '../harness/explain';

// Busiest first (sort=requestCount) and most recently used first (sort=lastUsedAt, the
// dashboard's default), descending, choose their page from the org's usage rows before they touch
// the org's keys (api/usage/usage.repository.ts, usedFirstKeys): the used keys by count or last
// use, then the unused ones by id. These tests page across that seam and check the plan.

const NOW = Date.parse('2026-11-25T15:30:00Z');
const DAY = 86_400_000;

type Listed = { id: string; name: string; requestCount: number; lastUsedAt: string | null; status: string };

// Keys k00…k23 in acme: k00–k11 used (counts and last uses with ties), k12 with a usage row of
// failed attempts only (0 proven uses, no last use), k13–k23 never used; k05 and k17 revoked.
// globex holds a busier and more recently used key.
async function world(t: Test) {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db, { now: () => NOW });
  const acme = await seedOrg(api, db);
  const globex = await seedOrg(api, db, 'globex');
  const counts = [7, 3, 7, 1, 12, 3, 3, 5, 7, 1, 2, 9];
  const ids: string[] = [];
  for (let i = 0; i < 24; i++) {
    const name = `k${String(i).padStart(2, '0')}`;
    ids.push((await api.services.apiKeys.create(acme.org.id, { name, scopes: ['keys:read'], expiresAt: null })).key.id);
  }
  const usage = (orgId: string, keyId: string, count: number, lastUsedAt: Date | null, failed = 0) =>
    db('api_key_usage').insert({
      org_id: orgId,
      key_id: keyId,
      request_count: count,
      ok_count: count,
      bad_secret_count: failed,
      last_used_at: lastUsedAt,
    });
  for (const [i, count] of counts.entries()) await usage(acme.org.id, ids[i], count, new Date(NOW - DAY - (i % 4) * 60_000));
  await usage(acme.org.id, ids[12], 0, null, 4);
  await usage(globex.org.id, globex.adminKeyId, 1000, new Date(NOW));
  await db('api_keys')
    .whereIn('id', [ids[5], ids[17]])
    .update({ revoked_at: new Date(NOW - DAY) });
  const list = async (query: string) => api.request('GET', `/api/orgs/${acme.org.id}/api-keys/usage?${query}`, { key: acme.adminKey });
  return { db, api, acme, globex, ids, list };
}

// Every page of `query` with `limit`, concatenated.
async function allPages(list: (query: string) => Promise<{ status: number; body: any }>, query: string, limit: number) {
  const seen: Listed[] = [];
  let total = Infinity;
  for (let offset = 0; offset < total; offset += limit) {
    const response = await list(`${query}&limit=${limit}&offset=${offset}`);
    if (response.status !== 200) throw new Error(`${query} offset ${offset}: ${response.status} ${JSON.stringify(response.body)}`);
    total = response.body.page.total;
    seen.push(...response.body.data);
  }
  return { seen, total };
}

// The order every sort promises, descending: the value (never used last), then the key id.
const byId = (a: Listed, b: Listed) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
const lastUse = (key: Listed) => (key.lastUsedAt === null ? -Infinity : Date.parse(key.lastUsedAt));
const ORDERS = {
  requestCount: (keys: Listed[]) => [...keys].sort((a, b) => b.requestCount - a.requestCount || byId(a, b)),
  lastUsedAt: (keys: Listed[]) => [...keys].sort((a, b) => lastUse(b) - lastUse(a) || byId(a, b)),
} as const;
const busiestOrder = ORDERS.requestCount;

t.test('busiest and most recently used first page through every key once, by value then id, across the used and unused keys', async (t) => {
  const { list, globex } = await world(t);
  const { seen: everything } = await allPages(list, 'sort=createdAt', 100);
  t.equal(everything.length, 25, 'acme: the admin key and 24 more');
  for (const sort of ['requestCount', 'lastUsedAt'] as const) {
    const expected = ORDERS[sort](everything).map((k) => k.id);
    t.equal(new Set(expected).size, 25);
    for (const limit of [1, 5, 7, 12, 13, 25, 50]) {
      const { seen, total } = await allPages(list, `sort=${sort}`, limit);
      t.equal(total, 25, `${sort}, limit ${limit}: total`);
      t.strictSame(
        seen.map((k) => k.id),
        expected,
        `${sort}, limit ${limit}: each key once, in order`,
      );
    }
  }
  const recent = (await list('sort=lastUsedAt&limit=13')).body.data as Listed[];
  t.strictSame(
    recent
      .slice(0, 3)
      .map((k) => k.name)
      .sort(),
    ['k00', 'k04', 'k08'],
    'the latest use first: k00, k04 and k08',
  );
  t.ok(recent[0].id < recent[1].id && recent[1].id < recent[2].id, 'their tie in id order');
  t.strictSame(
    recent.map((k) => k.lastUsedAt !== null),
    [...Array(12).fill(true), false],
    'the twelve used keys first, then a key without a last use (k12, failed attempts only, among them)',
  );
  const first = (await list('sort=requestCount&limit=3')).body.data as Listed[];
  t.strictSame(
    first.map((k) => [k.name, k.requestCount]),
    [
      ['k04', 12],
      ['k11', 9],
      // k00, k02 and k08 tie at 7: the lower id first.
      ...busiestOrder(everything.filter((k) => k.requestCount === 7))
        .slice(0, 1)
        .map((k) => [k.name, 7]),
    ],
  );
  t.notOk(
    everything.some((k) => k.id === globex.adminKeyId),
    "globex's busier key is not acme's",
  );
  const { seen: ascending } = await allPages(list, 'sort=requestCount&order=asc', 4);
  t.strictSame(
    ascending.map((k) => k.requestCount),
    everything.map((k) => k.requestCount).sort((a, b) => a - b),
    'ascending: the unused keys first',
  );
});

t.test('busiest and most recently used first with a filter page the filtered keys alone, across the same seam', async (t) => {
  const { list, db } = await world(t);
  const { seen: everything } = await allPages(list, 'sort=createdAt', 100);
  for (const sort of ['requestCount', 'lastUsedAt'] as const) {
    const active = ORDERS[sort](everything.filter((k) => k.status === 'active'));
    const { seen, total } = await allPages(list, `sort=${sort}&status=active`, 4);
    t.equal(total, 23);
    t.strictSame(
      seen.map((k) => k.id),
      active.map((k) => k.id),
      `${sort}: revoked k05 and k17 left out, the rest in order`,
    );
    const named = await allPages(list, `sort=${sort}&q=k1`, 3);
    t.strictSame(
      named.seen.map((k) => k.name),
      ORDERS[sort](everything.filter((k) => k.name.startsWith('k1'))).map((k) => k.name),
      `${sort}: the names with k1, in order`,
    );
  }
  // Every key but the admin's created 60 days ago: the unused ones and those last used before
  // the threshold are dormant.
  await db('api_keys')
    .whereNot('name', 'admin')
    .update({ created_at: new Date(NOW - 60 * DAY) });
  await db('api_key_usage')
    .whereIn('request_count', [1, 2])
    .update({ last_used_at: new Date(NOW - 40 * DAY) });
  const dormant = await allPages(list, 'sort=requestCount&dormant=true', 5);
  t.ok(dormant.seen.length > 0);
  t.ok(
    dormant.seen.every((k: Listed & { dormant?: boolean }) => k.dormant),
    'only dormant keys',
  );
  t.strictSame(
    dormant.seen.map((k) => k.requestCount),
    [2, 1, 1, ...Array(dormant.seen.length - 3).fill(0)],
    'the dormant used keys first, then the never-used ones',
  );
  const dormantByLastUse = await allPages(list, 'sort=lastUsedAt&dormant=true', 5);
  t.strictSame(
    dormantByLastUse.seen.map((k) => k.id),
    ORDERS.lastUsedAt(dormant.seen).map((k) => k.id),
    'by last use: the same dormant keys, in that order',
  );
});

// Keys of `count` per org, created one second apart; the first `used` have a usage row.
async function seedMany(db: Db, orgIds: string[], count: number, used: number) {
  for (const orgId of orgIds) {
    await db.raw(
      `insert into api_keys (id, org_id, name, display_prefix, secret_hash, scopes, created_at)
       select gen_random_uuid(), :orgId, 'key-' || i, 'ku_test', decode(md5(i::text), 'hex'), '{keys:read}', now() - make_interval(secs => i)
         from generate_series(1, :count) as i`,
      { orgId, count },
    );
    await db.raw(
      `insert into api_key_usage (org_id, key_id, request_count, ok_count, last_used_at)
       select org_id, id, 1 + (hashtext(id::text) & 1023), 1, now() from api_keys where org_id = :orgId order by created_at desc limit :used`,
      { orgId, used },
    );
  }
  await db.raw('analyze api_keys');
  await db.raw('analyze api_key_usage');
}

// Runs the page statement listKeyUsage sends under EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) and
// returns what its plan read of api_keys: the rows its scans returned or their filters removed,
// and the pages (index and table) they touched. The rows returned alone are no measure: a lookup
// of a page's key that filtered the org's keys one by one (an index on org_id, then the id
// compared as text) returned one row per key too.
async function apiKeysRead(db: Db, query: UsageQuery): Promise<{ rows: number; pages: number }> {
  const page = await captureMainStatement(db, () => listKeyUsage(db, query));
  const [row] = await explainStatement(db, page, 'analyze, buffers, format json');
  const plan = (row['QUERY PLAN'] as Array<{ Plan: PlanNode }>)[0].Plan;
  return { rows: sumOverRelation(plan, 'api_keys', rowsRead), pages: sumOverRelation(plan, 'api_keys', pagesRead) };
}

t.test("busiest and most recently used first read the org's keys for their page only, not every key of the org", async (t) => {
  const { db } = await freshDatabase(t);
  const orgs = (await db.raw(`insert into organizations (name) select 'org-' || i from generate_series(1, 3) as i returning id`)).rows.map(
    (row: { id: string }) => row.id,
  );
  await seedMany(db, orgs, 3000, 1500);
  const now = new Date();
  const base: UsageQuery = {
    orgId: orgs[1],
    now,
    status: null,
    dormantBefore: new Date(now.getTime() - 30 * DAY),
    dormant: null,
    nameOrOwnerContains: null,
    keyId: null,
    eventsSince: new Date(now.getTime() - 7 * DAY),
    sort: 'requestCount',
    order: 'desc',
    limit: 50,
    offset: 0,
  };
  for (const sort of ['requestCount', 'lastUsedAt'] as const) {
    const firstPage = await apiKeysRead(db, { ...base, sort });
    t.ok(firstPage.rows <= 50, `${sort}: the first page read ${firstPage.rows} api_keys rows, returned or filtered out (the org has 3,000)`);
    t.ok(firstPage.pages <= 4 * 50, `${sort}: and ${firstPage.pages} pages: a few a key of the page (its primary key's index, its row)`);
    const pastTheUsed = await listKeyUsage(db, { ...base, sort, offset: 1480 });
    t.strictSame(
      pastTheUsed.keys.map((k) => k.lastUsedAt !== null),
      [...Array(20).fill(true), ...Array(30).fill(false)],
      `${sort}: a page across the seam: the last 20 used keys, then unused ones`,
    );
  }
});
