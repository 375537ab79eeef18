import t from 'tap';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// A series covers [from, to): the buckets that start before `to`, and the uses of the hours from
// the one holding `from` to the last that starts before `to`. The whole bucket holding `to` was
// read: a daily report ending at midnight got the next day as a bucket and counted its uses, and a
// range of exactly 2,232 hours returned 2,233 buckets. The whole day holding `from` was read too:
// a day series from noon counted the morning's uses (found by a review). With from = to on a
// bucket's start the range is empty, and was answered with that bucket, reporting 0 uses of an
// hour that had some (found by a review).
// One key's series and its org's (GET /api/orgs/:id/usage) share the range's rules: an org whose
// only used key is the admin key answers the same buckets.
const SERIES_PATHS = {
  key: (orgId: string, keyId: string) => `/api/orgs/${orgId}/api-keys/${keyId}/usage`,
  org: (orgId: string) => `/api/orgs/${orgId}/usage`,
};

for (const [whose, seriesPath] of Object.entries(SERIES_PATHS))
  t.test(`${whose}: a series' range ends before \`to\`, and holds at most 2,232 buckets`, async (t) => {
    const { db } = await freshDatabase(t);
    const api = await startTestApi(t, db);
    const { org, adminKey, adminKeyId } = await seedOrg(api, db);
    await db('api_key_usage_hourly').insert([
      { org_id: org.id, key_id: adminKeyId, hour: new Date('2026-01-01T11:00:00Z'), request_count: 11, ok_count: 11 },
      { org_id: org.id, key_id: adminKeyId, hour: new Date('2026-01-01T23:00:00Z'), request_count: 2, ok_count: 2 },
      { org_id: org.id, key_id: adminKeyId, hour: new Date('2026-01-02T05:00:00Z'), request_count: 5, ok_count: 5 },
    ]);
    const series = (query: string) => api.request('GET', `${seriesPath(org.id, adminKeyId)}?${query}`, { key: adminKey });

    const day = await series('granularity=day&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z');
    t.equal(day.status, 200);
    t.strictSame(
      day.body.buckets.map((bucket: { start: string; requestCount: number }) => [bucket.start, bucket.requestCount]),
      [['2026-01-01T00:00:00.000Z', 13]],
      'one day, without the next day and its uses',
    );
    t.equal(day.body.total, 13);
    const partial = await series('granularity=day&from=2026-01-01T12:00:00Z&to=2026-01-02T06:00:00Z');
    t.strictSame(
      partial.body.buckets.map((bucket: { requestCount: number }) => bucket.requestCount),
      [2, 5],
      'the buckets holding from and to, when to is inside one; the first without the hours before from',
    );
    t.equal(partial.body.total, 7);
    const withinHour = await series('granularity=day&from=2026-01-01T11:30:00Z&to=2026-01-01T12:00:00Z');
    t.equal(withinHour.body.total, 11, 'the hour holding from counts whole, as the one holding to');
    // A Date holds milliseconds: cut down, this `to` was 11:00:00.000 and lost the 11:00 hour.
    const finer = await series('granularity=hour&from=2026-01-01T10:00:00Z&to=2026-01-01T11:00:00.0005Z');
    t.equal(finer.body.total, 11, 'a to finer than a millisecond is rounded up: its hour counts');
    const last = await series('granularity=day&from=9999-12-30T00:00:00Z&to=9999-12-31T23:59:59.9995Z');
    t.equal(last.body.to, '9999-12-31T23:59:59.999Z', 'rounded up no further than the last supported millisecond (not year 10000)');
    const instant = await series('granularity=hour&from=2026-01-01T23:30:00Z&to=2026-01-01T23:30:00Z');
    t.equal(instant.body.buckets.length, 1, 'from = to: its bucket');
    const midHour = await series('granularity=hour&from=2026-01-02T05:30:00Z&to=2026-01-02T05:30:00Z');
    t.strictSame(
      midHour.body.buckets.map((bucket: { start: string; requestCount: number }) => [bucket.start, bucket.requestCount]),
      [['2026-01-02T05:00:00.000Z', 5]],
      'from = to inside an hour: that hour, whole',
    );
    // On a bucket's start no bucket starts before `to`: a bucket of 0 uses said the hour had none.
    for (const [granularity, at] of [
      ['hour', '2026-01-02T05:00:00Z'],
      ['day', '2026-01-02T00:00:00Z'],
    ]) {
      const empty = await series(`granularity=${granularity}&from=${at}&to=${at}`);
      t.equal(empty.status, 200);
      t.strictSame([empty.body.buckets, empty.body.total], [[], 0], `from = to at the start of its ${granularity}: no bucket`);
    }

    const start = Date.parse('2026-01-01T00:00:00Z');
    const hours = (n: number, extraMs = 0) => `granularity=hour&from=2026-01-01T00:00:00Z&to=${new Date(start + n * 3_600_000 + extraMs).toISOString()}`;
    t.equal((await series(hours(2232))).body.buckets.length, 2232, '2,232 hours: 2,232 buckets');
    const over = await series(hours(2232, 1));
    t.equal(over.status, 400);
    t.match(over.body.error.message, /the range holds 2233 hours; at most 2232 per request/);
  });

// The default window is the 7 days before `to`: with a `to` early in 1970 it began in 1969, and
// that window sent back was refused (from: must be between 1970-01-01… and …).
t.test('the default from is not before 1970, so the window answered can be sent back', async (t) => {
  const { db } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const series = (query: string) => api.request('GET', `/api/orgs/${org.id}/api-keys/${adminKeyId}/usage?${query}`, { key: adminKey });

  const early = await series('granularity=day&to=1970-01-02T00:00:00Z');
  t.equal(early.status, 200);
  t.equal(early.body.from, '1970-01-01T00:00:00.000Z', 'from 1970, not 1969-12-26');
  t.strictSame(
    early.body.buckets.map((bucket: { start: string }) => bucket.start),
    ['1970-01-01T00:00:00.000Z'],
    'no bucket starts before 1970',
  );
  const again = await series(`granularity=day&from=${early.body.from}&to=${early.body.to}`);
  t.equal(again.status, 200, 'the window answered, sent back');
  t.strictSame(again.body.buckets, early.body.buckets);
});
