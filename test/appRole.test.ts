import { randomBytes } from 'node:crypto';
import t from 'tap';
import { createPgUsageStore } from '../collector/usageStore';
import { main } from '../scripts/cli';
import { ensureAppRole } from '../scripts/lib/appRole';
import { createDb, unappliedMigrations } from '../shared/db';
import { seedOrg, startTestApi } from './helpers/api';
import { startTestCollector, sendDatagrams } from './helpers/collector';
import { waitFor } from '../harness/wait';
import { adminDatabaseUrl, freshDatabase } from './helpers/database';
import { encodeUsageLine } from '../shared/usageWire';

// The role the launcher gives the API and the collector: rows, yes; schema, roles and other
// databases, no. Run against a fresh copy of the migrated template, as its owner would.

t.test('the app role reads and writes rows and can do nothing else; the API and the collector work as it', async (t) => {
  const { db: owner, url } = await freshDatabase(t);
  const role = `kt_app_${randomBytes(4).toString('hex')}`;
  const password = randomBytes(18).toString('base64url');
  await ensureAppRole(owner, role, password);
  await ensureAppRole(owner, role, password); // idempotent: every npm start runs it

  const appUrl = new URL(url);
  appUrl.username = role;
  appUrl.password = password;
  const app = createDb(appUrl.toString(), { poolMax: 5 });
  t.teardown(async () => {
    await app.destroy();
    // Privileges and default privileges in this database go first, then the role itself.
    await owner.raw(`drop owned by ${role}`);
    const admin = createDb(adminDatabaseUrl(), { poolMax: 1 });
    await admin.raw(`drop role ${role}`);
    await admin.destroy();
  });

  const refused = [
    ['drop table api_keys', /must be owner/],
    ['create table stolen (x int)', /permission denied for schema public/],
    ['select rolpassword from pg_authid', /permission denied for table pg_authid/],
    ['alter table api_keys add column x int', /must be owner/],
    ['truncate api_key_usage', /permission denied/],
    ['delete from knex_migrations', /permission denied/],
    [`create role kt_escalate superuser`, /permission denied/],
  ] as const;
  for (const [sql, error] of refused) await t.rejects(app.raw(sql), { message: error }, `refused: ${sql}`);
  // npm start with the app role's DATABASE_URL cannot tell what is migrated, and says so.
  t.equal(await unappliedMigrations(app), undefined, 'the app role may not read the migrations');
  t.same(await unappliedMigrations(owner), [], 'its owner reads them all applied');

  // A table from a later migration (run by the owner) is covered by the default privileges.
  await owner.raw('create table later_migration (id bigserial primary key, note text)');
  await app('later_migration').insert({ note: 'written by the app role' });
  t.equal((await app('later_migration').first()).note, 'written by the app role', 'tables made by later migrations are granted too');

  const api = await startTestApi(t, app);
  const { org, adminKey, adminKeyId } = await seedOrg(api, app);
  t.equal((await api.request('GET', '/api/whoami', { key: adminKey })).status, 200, 'the API serves as the app role');
  const collector = await startTestCollector(t, appUrl.toString(), { COLLECTOR_FLUSH_INTERVAL_MS: '600000' });
  await sendDatagrams(collector.receiver.port, [encodeUsageLine({ keyId: adminKeyId, orgId: org.id, ip: '203.0.113.7', outcome: 'ok', count: 3 })]);
  await waitFor('the datagram', () => (collector.ingest.usesReceived === 3 ? true : undefined));
  t.ok(await collector.flusher.flush(), 'the collector flushes as the app role');
  await t.resolves(createPgUsageStore(app).expireOldRows(90), 'and its hourly retention deletes as the app role');
  t.equal((await owner('api_key_usage').where({ key_id: adminKeyId }).first()).request_count, 3);

  // The CLI migrated every database it opened, and as this role could not read knex_migrations
  // every command failed.
  const printed: string[] = [];
  const cli = { out: (text: string) => void printed.push(text), err: (text: string) => void printed.push(text) };
  t.equal(await main(['org', 'list', '--json'], { NODE_ENV: 'test', DATABASE_URL: appUrl.toString() }, cli), 0, printed.join('\n'));
  t.match(JSON.parse(printed.join('\n')), [{ id: org.id }], 'the CLI works as the app role');
});
