import t, { type Test } from 'tap';
import { insertKeys } from '../bench/lib/database';
import { listKeyUsage, type UsageQuery } from '../api/usage/usage.repository';
import { captureMainStatement, explainStatement } from '../harness/explain';
import { twoOrgWorld } from './helpers/api';

// GET …/api-keys/usage?after=<key id>: a keyset over the createdAt order. The dormant and status
// filters are judged at each request's own clock, so a key leaves the filtered set when it is
// revoked, used, expires, and joins it when it crosses the threshold: offset pages then skip or
// repeat keys (docs/api-keys.md, `sort`); pages walked with `after` neither skip nor repeat one.

const START = Date.parse('2026-11-25T12:00:00Z');
const DAY = 86_400_000;

type World = Awaited<ReturnType<typeof twoOrgWorld>>;

async function world(t: Test) {
  const w = await twoOrgWorld(t, START);
  // The admin key, used by every request here, is not dormant and sorts before every other key.
  await w
    .db('api_keys')
    .whereIn('id', [w.acme.adminKeyId, w.globex.adminKeyId])
    .update({ created_at: new Date(START - 1000 * DAY) });
  await w.db('api_key_usage').insert({ org_id: w.acme.org.id, key_id: w.acme.adminKeyId, request_count: 1, ok_count: 1, last_used_at: new Date(START) });
  return w;
}

// Keys of acme created at the given times (SQL timestamps, so microseconds can be given), in order.
async function keysCreatedAt({ db, api, acme }: World, times: string[]): Promise<string[]> {
  const ids: string[] = [];
  for (const [i, time] of times.entries()) {
    const { id } = (await api.services.apiKeys.create(acme.org.id, { name: `k${i}`, scopes: ['keys:read'], expiresAt: null })).key;
    await db.raw('update api_keys set created_at = cast(? as timestamptz) where id = ?', [time, id]);
    ids.push(id);
  }
  return ids;
}

const usage = ({ api, acme }: World, query: string) => api.request('GET', `/api/orgs/${acme.org.id}/api-keys/usage?${query}`, { key: acme.adminKey });

// Every page from the first with `after` set to the previous page's nextAfter; `act` runs on each
// page's ids before the next is asked for.
async function walk(w: World, query: string, act: (ids: string[]) => Promise<unknown> = async () => undefined) {
  const pages: string[][] = [];
  let after: string | null = null;
  do {
    const response = await usage(w, after ? `${query}&after=${after}` : query);
    if (response.status !== 200) throw new Error(`${response.status} ${response.text}`);
    const ids = response.body.data.map((key: { id: string }) => key.id);
    pages.push(ids);
    await act(ids);
    after = response.body.page.nextAfter;
  } while (after !== null && pages.length < 20);
  return pages;
}

const daysAgo = (days: number, seconds = 0) => new Date(START - days * DAY + seconds * 1000).toISOString();

t.test('revoking each page before the next: walked with after, every dormant key is shown once (oldest first)', async (t) => {
  const w = await world(t);
  const keys = await keysCreatedAt(
    w,
    [40, 39, 38, 37, 36, 35].map((days) => daysAgo(days)),
  );
  const revoke = (ids: string[]) =>
    Promise.all(ids.map((id) => w.api.request('POST', `/api/orgs/${w.acme.org.id}/api-keys/${id}/revoke`, { key: w.acme.adminKey })));
  const pages = await walk(w, 'dormant=true&sort=createdAt&order=asc&limit=2', revoke);
  t.strictSame(pages, [keys.slice(0, 2), keys.slice(2, 4), keys.slice(4, 6), []], 'k0–k5, each once; the last full page is followed by an empty one');
  const left = await w.db('api_keys').whereIn('id', keys).whereNull('revoked_at').pluck('id');
  t.strictSame(left, [], 'so every one was revoked');
});

t.test('a key crossing the threshold between two pages (newest first) is not a repeat of the previous page', async (t) => {
  const w = await world(t);
  // Dormant at the first page: old and older. 30 s short of 30 idle days then, past them a minute later.
  const [older, old, crossing] = await keysCreatedAt(w, [daysAgo(40), daysAgo(35), daysAgo(30, 30)]);
  const query = 'dormant=true&order=desc&limit=1';
  const first = await usage(w, query);
  t.strictSame(
    first.body.data.map((key: { id: string }) => key.id),
    [old],
  );
  t.strictSame(first.body.page, { limit: 1, offset: 0, total: 2, nextAfter: old });
  w.clock.now += 60_000;
  const second = await usage(w, `${query}&after=${first.body.page.nextAfter}`);
  t.strictSame(
    second.body.data.map((key: { id: string }) => key.id),
    [older],
    'the key after the cursor, not the cursor again',
  );
  t.strictSame(second.body.page, { limit: 1, offset: 0, total: 3, nextAfter: older }, 'total counts the filtered set now, the crossing key included');
  const last = await usage(w, `${query}&after=${older}`);
  t.strictSame(last.body.data, []);
  t.equal(last.body.page.nextAfter, null, 'null on the last page');
  t.notOk(
    [...first.body.data, ...second.body.data].some((key: { id: string }) => key.id === crossing),
    'the key that joined before the cursor is left for a new walk',
  );
});

t.test('ties on created_at and microseconds: the walk gives the one-page order, asc and desc, nextAfter null on a short last page', async (t) => {
  const w = await world(t);
  // Two pairs created in the same microsecond, and keys a microsecond apart (a Date would merge them).
  await keysCreatedAt(w, [
    '2026-11-01T00:00:00.000001Z',
    '2026-11-01T00:00:00.000001Z',
    '2026-11-01T00:00:00.000002Z',
    '2026-11-01T00:00:00.000003Z',
    '2026-11-01T00:00:00.000003Z',
    '2026-11-02T00:00:00Z',
    '2026-11-03T00:00:00Z',
  ]);
  let previous: string[] = [];
  for (const order of ['asc', 'desc']) {
    const whole = await usage(w, `order=${order}&limit=200`);
    const expected = whole.body.data.map((key: { id: string }) => key.id);
    t.equal(expected.length, 8, `${order}: the seven keys and the admin key`);
    const pages = await walk(w, `order=${order}&limit=3`);
    t.strictSame(pages.flat(), expected, `${order}: each key once, in the order of one page`);
    if (order === 'desc') t.strictSame(expected, [...previous].reverse(), 'desc is the exact reverse of asc, ties included');
    previous = expected;
    t.strictSame(
      pages.map((ids) => ids.length),
      [3, 3, 2],
      `${order}: the short last page ends the walk`,
    );
    const filtered = await usage(w, `order=${order}&limit=3&after=${expected[2]}&status=active`);
    t.equal(filtered.body.page.total, 8, `${order}: page.total counts the filtered set, not the keys after the cursor`);
  }
});

t.test("after is refused with offset, with another sort, and when it is no key of this org (another org's key answers as none)", async (t) => {
  const w = await world(t);
  const [key] = await keysCreatedAt(w, [daysAgo(1)]);
  const refusals: Array<[string, RegExp]> = [
    [`after=${key}&offset=1`, /^Invalid query: after: not with offset/],
    [`after=${key}&sort=lastUsedAt`, /^Invalid query: after: only with sort=createdAt/],
    [`after=${key}&sort=requestCount&order=asc`, /^Invalid query: after: only with sort=createdAt/],
    ['after=x', /^Invalid query: after: must be a UUID/],
  ];
  for (const [query, message] of refusals) {
    const response = await usage(w, query);
    t.equal(response.status, 400, query);
    t.match(response.body, { error: { code: 'invalid_request', message, requestId: String } }, query);
  }
  t.equal((await usage(w, `after=${key}&offset=0`)).status, 200, 'offset=0 is no offset');
  const answers = [];
  for (const after of [w.globex.adminKeyId, '00000000-0000-4000-8000-000000000000']) {
    const { status, body } = await usage(w, `after=${after}`);
    answers.push({ status, code: body.error.code, message: body.error.message.replace(after, '<id>') });
  }
  t.strictSame(answers[0], answers[1], "another org's key is answered as a key that does not exist");
  t.match(answers[0], { status: 400, code: 'invalid_request', message: /^Invalid query: after: no key of this organization has this id/ });
});

// Every page of the createdAt order sorted every key of the org: the ascending order was NULLS
// FIRST, and the descending one broke created_at's ties by ascending id, neither of which
// api_keys_org_created_idx holds. 0.12 s a page of the CSV report and 0.17–0.2 s the API's default
// first page at 100,000 keys (docs/benchmarks.md §5). The plan is checked with sorts and
// sequential scans priced out, so the table's size here does not decide.
t.test("the createdAt order reads api_keys' index from its start or the cursor, both ways, without sorting the org's keys", async (t) => {
  const w = await world(t);
  const bulk = await insertKeys(w.db, w.acme.org.id, 50, 'bulk-');
  const now = new Date();
  const filters = { orgId: w.acme.org.id, now, status: null, dormantBefore: now, dormant: null, nameOrOwnerContains: null, keyId: null, eventsSince: now };
  const newestFirst = [...bulk].reverse();
  const cases = [
    { order: 'asc', after: undefined, expected: [w.acme.adminKeyId, ...bulk.slice(0, 9)] },
    { order: 'asc', after: bulk[9], expected: bulk.slice(10, 20) },
    { order: 'desc', after: undefined, expected: newestFirst.slice(0, 10) },
    { order: 'desc', after: newestFirst[9], expected: newestFirst.slice(10, 20) },
  ] as const;
  for (const { order, after, expected } of cases) {
    const what = `${order}, ${after ? 'after the tenth key' : 'the first page'}`;
    const query: UsageQuery = { ...filters, sort: 'createdAt', order, after, limit: 10, offset: 0, withoutTotal: true };
    let keys: Array<{ keyId: string }> = [];
    const page = await captureMainStatement(w.db, async () => ({ keys } = await listKeyUsage(w.db, query)));
    t.strictSame(
      keys.map((key) => key.keyId),
      expected,
      `${what}: the ten keys in order`,
    );
    const plan = await w.db.transaction(async (trx) => {
      await trx.raw('set local enable_sort = off');
      await trx.raw('set local enable_seqscan = off');
      return (await explainStatement(trx, page, 'costs off')).map((row) => row['QUERY PLAN']).join('\n');
    });
    t.notMatch(plan, /Sort Key: k\.created_at/, `${what}: no sort of the keys`);
    if (after) t.match(plan, new RegExp(`Index Cond: .*ROW\\(created_at, id\\) ${order === 'asc' ? '>' : '<'} ROW`), `${what}: the index starts at the cursor`);
  }
});
