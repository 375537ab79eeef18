import t from 'tap';
import { createDb } from '../shared/db';
import { seedOrg, startTestApi } from './helpers/api';
import { freshDatabase } from './helpers/database';

// A database whose default time zone has daylight saving (initdb takes the host's): a day added
// to a timestamp was 23 hours across the March change, and the daily series' buckets after it
// started at 23:00Z and matched no hour.
t.test('a daily series across a daylight-saving change, on a database whose zone has one', async (t) => {
  const { db: owner, url } = await freshDatabase(t);
  const [{ name }] = (await owner.raw('select current_database() as name')).rows;
  await owner.raw(`alter database "${name}" set timezone to 'America/New_York'`);
  // Under npm run test:citus the database is shared with the other tests.
  t.teardown(() => owner.raw(`alter database "${name}" reset timezone`));
  const db = createDb(url, { poolMax: 3 });
  t.teardown(() => db.destroy());
  t.equal((await db.raw("select current_setting('TimeZone') as zone")).rows[0].zone, 'UTC', 'every connection works in UTC');

  const api = await startTestApi(t, db);
  const { org, adminKey, adminKeyId } = await seedOrg(api, db);
  const days = ['2026-03-05', '2026-03-06', '2026-03-07', '2026-03-08', '2026-03-09', '2026-03-10', '2026-03-11'];
  await db('api_key_usage_hourly').insert(
    days.map((day) => ({ org_id: org.id, key_id: adminKeyId, hour: new Date(`${day}T12:00:00Z`), request_count: 1, ok_count: 1 })),
  );
  const series = await api.request(
    'GET',
    `/api/orgs/${org.id}/api-keys/${adminKeyId}/usage?granularity=day&from=2026-03-05T00:00:00Z&to=2026-03-11T13:00:00Z`,
    {
      key: adminKey,
    },
  );
  t.equal(series.status, 200);
  t.strictSame(
    series.body.buckets.map((bucket: { start: string; requestCount: number }) => [bucket.start, bucket.requestCount]),
    days.map((day) => [`${day}T00:00:00.000Z`, 1]),
  );
  t.equal(series.body.total, 7);
});
