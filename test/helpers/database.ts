import { randomBytes } from 'node:crypto';
import type { Test } from 'tap';
import { createDb, type Db } from '../../shared/db';

export const TEMPLATE_DATABASE = 'keyusage_test_template';

export function adminDatabaseUrl(): string {
  const url = process.env.TEST_ADMIN_DATABASE_URL;
  if (!url) throw new Error('TEST_ADMIN_DATABASE_URL is not set: run tests through `npm test -- <file>`');
  return url;
}

// Every test gets its own database, copied from the migrated template, so test files run in
// parallel against one real PostgreSQL without seeing each other's rows.
export async function freshDatabase(t: Test, options: { poolMax?: number } = {}): Promise<{ db: Db; url: string }> {
  // On Citus (npm run test:citus) a copy made with `create database … template` would hold no
  // shards, so every test shares the one database the runner distributed and keeps to its own orgs.
  const shared = process.env.TEST_SHARED_DATABASE_URL;
  if (shared) {
    const db = createDb(shared, { poolMax: options.poolMax ?? 5 });
    t.teardown(() => db.destroy());
    return { db, url: shared };
  }
  const name = `kt_${process.pid}_${randomBytes(4).toString('hex')}`;
  const admin = createDb(adminDatabaseUrl(), { poolMax: 1 });
  await admin.raw(`create database ${name} template ${TEMPLATE_DATABASE}`);
  const url = new URL(adminDatabaseUrl());
  url.pathname = `/${name}`;
  const db = createDb(url.toString(), { poolMax: options.poolMax ?? 5 });
  t.teardown(async () => {
    await db.destroy();
    await admin.raw(`drop database if exists ${name} with (force)`);
    await admin.destroy();
  });
  return { db, url: url.toString() };
}

// A database with nothing in it (no migrations), dropped at the end: for tests of migrate itself.
export async function emptyDatabase(t: Test): Promise<string> {
  const name = `kt_empty_${process.pid}_${randomBytes(4).toString('hex')}`;
  const admin = createDb(adminDatabaseUrl(), { poolMax: 1 });
  await admin.raw(`create database ${name}`);
  t.teardown(async () => {
    await admin.raw(`drop database if exists ${name} with (force)`);
    await admin.destroy();
  });
  const url = new URL(adminDatabaseUrl());
  url.pathname = `/${name}`;
  return url.toString();
}
