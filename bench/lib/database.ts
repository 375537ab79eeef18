import { randomBytes } from 'node:crypto';
import { insertApiKey } from '../../api/keys/apiKeys.repository';
import { generateKeyMaterial } from '../../api/keys/keyMaterial';
import type { Scope } from '../../api/keys/scopes';
import { insertOrganization } from '../../api/orgs/orgs.repository';
import { createDb, migrateLatest, type Db } from '../../shared/db';
import { createScratchDatabase, openPostgresServer } from '../../harness/postgres';

// The benchmarks write hundreds of thousands of rows, so they never touch an existing database:
// a fresh one is created (from DATABASE_URL, or in a throwaway local cluster), migrated, and
// dropped at the end.

export interface BenchDatabase {
  url: string;
  db: Db;
  local: boolean;
  close(): Promise<void>;
  /** For signals: stop the throwaway cluster (if any) at once, without waiting on connections. */
  abandon(): void;
}

export async function openBenchDatabase(log: (line: string) => void): Promise<BenchDatabase> {
  const server = await openPostgresServer('keyusage-bench-', log);
  const name = `keyusage_bench_${process.pid}_${randomBytes(3).toString('hex')}`;
  const scratch = await createScratchDatabase(server.adminUrl, name).catch((error: Error) => {
    server.stop();
    throw new Error(`could not create the benchmark database ${name} (the DATABASE_URL role needs CREATEDB): ${error.message}`, { cause: error });
  });
  const db = createDb(scratch.url, { poolMax: 4, applicationName: 'keyusage-bench' });
  await migrateLatest(db);
  log(`benchmark database ${name}`);
  return {
    url: scratch.url,
    db,
    local: server.local,
    async close() {
      await db.destroy();
      await scratch.drop().catch(() => undefined);
      server.stop();
    },
    abandon() {
      try {
        server.stop();
      } catch {
        // Best effort on the way out.
      }
    },
  };
}

export async function createOrg(db: Db, name: string): Promise<string> {
  return (await insertOrganization(db, name)).id;
}

/**
 * `count` keys in one statement (generate_series). Their secrets are unknown (a hash of nothing
 * anyone holds): these keys exist for the collector's join and the usage listing, not to call the
 * API. Created one second apart, oldest first; returns their ids in that order.
 */
export async function insertKeys(db: Db, orgId: string, count: number, namePrefix: string): Promise<string[]> {
  const result = await db.raw(
    `insert into api_keys (id, org_id, name, display_prefix, secret_hash, scopes, created_at)
     select g.id, :orgId, :prefix || g.i, 'ku_' || substr(replace(cast(g.id as text), '-', ''), 1, 8),
            decode(md5(cast(g.id as text)), 'hex'), cast('{keys:read}' as text[]),
            now() - make_interval(secs => :count - g.i)
       from (select gen_random_uuid() as id, i from generate_series(1, cast(:count as int)) as i) g
     returning id, created_at`,
    { orgId, prefix: namePrefix, count },
  );
  return (result.rows as Array<{ id: string; created_at: Date }>).sort((a, b) => a.created_at.getTime() - b.created_at.getTime()).map((row) => row.id);
}

/** `keys` keys spread evenly over `orgs` new orgs, each key beside its org's id; api_keys analyzed. */
export async function createKeysInOrgs(db: Db, keys: number, orgs: number, name: string): Promise<{ orgIds: string[]; keyIds: string[] }> {
  const orgIds: string[] = [];
  const keyIds: string[] = [];
  for (let o = 0; o < orgs; o++) {
    const orgId = await createOrg(db, `bench-${name}-${o}`);
    for (const keyId of await insertKeys(db, orgId, Math.ceil(keys / orgs), `${name}-`)) {
      orgIds.push(orgId);
      keyIds.push(keyId);
    }
  }
  await db.raw('analyze api_keys');
  return { orgIds, keyIds };
}

export async function createCallableKey(db: Db, orgId: string, pepper: string, name: string, scopes: Scope[]) {
  const material = generateKeyMaterial(pepper);
  await insertApiKey(db, {
    id: material.keyId,
    orgId,
    name,
    displayPrefix: material.displayPrefix,
    secretPepperId: material.pepperId,
    secretHash: material.secretHash,
    scopes,
    expiresAt: null,
  });
  return { keyId: material.keyId, plaintext: material.plaintext };
}

/** The WAL insert position now (it is the server's, whichever connection asks): pass it to walSince. */
export const walPosition = async (db: Db): Promise<string> => (await db.raw('select pg_current_wal_lsn() as lsn')).rows[0].lsn;
/** Bytes of WAL the server wrote since `from` (walPosition). */
export const walSince = async (db: Db, from: string): Promise<number> =>
  Number((await db.raw('select pg_wal_lsn_diff(pg_current_wal_lsn(), ?) as bytes', [from])).rows[0].bytes);

/**
 * `orgs` new orgs, each with a webhook and `count` pending deliveries due at `dueAt`, made in SQL
 * (a backlog of millions in seconds); webhook_deliveries analyzed. Returns the orgs' ids.
 */
export async function orgsWithDueDeliveries(db: Db, orgs: number, count: number, dueAt: Date): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < orgs; i += 1) {
    const orgId = await createOrg(db, `due ${i}`);
    const [hook] = await db('webhooks')
      .insert({ org_id: orgId, url: 'https://203.0.113.12/hook', event_types: ['*'], secret_box: Buffer.alloc(32) })
      .returning('id');
    // Each an event of the org's key, as the outbox trigger writes it: the claim reads the key's name and owner.
    const [keyId] = await insertKeys(db, orgId, 1, 'due');
    await db.raw(
      `insert into webhook_deliveries (org_id, webhook_id, event_id, event_type, payload, next_attempt_at)
       select ?, ?, gen_random_uuid(), 'key.new_ip', jsonb_build_object('keyId', cast(? as text)), ? from generate_series(1, ?)`,
      [orgId, hook.id, keyId, dueAt, count],
    );
    ids.push(orgId);
  }
  await db.raw('analyze webhook_deliveries');
  return ids;
}
