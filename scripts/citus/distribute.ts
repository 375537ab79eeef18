import { createDb, type Db } from '../../shared/db';
import { exitWhenDone } from '../lib/commandExit';
import { answerWithoutRunning, readNoArguments, type Invocation } from '../lib/noArguments';

// Lays keyusage's tables out on a Citus cluster (docs/scaling.md), after `npm run migrate`.
// Idempotent: tables already laid out are skipped, so it runs again after every migration.
//
//   DATABASE_URL=postgres://…coordinator…/keyusage npm run citus:distribute

// Small, read on every request, written rarely: a copy on every node lets the auth path find a
// key by id alone without asking every shard, and lets each worker join its shards with them.
export const REFERENCE_TABLES = ['organizations', 'api_keys'];
// Every other table with an org_id is distributed by it, co-located with this one, so one org's
// totals, buckets, IPs, events and ledger rows live on the same worker. A table whose primary key
// or unique constraints lack org_id is refused by Citus here, loudly: that is the check.
const COLOCATION_ANCHOR = 'api_key_usage';
// Called by the flush's upserts, which run on the workers.
const FUNCTIONS = ['keyusage_add(bigint, bigint)'];
// Kept by 20261201000060 only for processes of the previous version during a rolling deploy (they
// insert without org_id and upsert ON CONFLICT (key_id, prefix)). Moving to Citus stops the
// collectors, and Citus refuses a unique index without org_id: they go here.
const LEGACY_FOR_ROLLING_DEPLOY = [
  'drop index if exists api_key_ip_history_key_prefix_legacy',
  'drop trigger if exists api_key_ip_history_fill_org_id on api_key_ip_history',
  'drop trigger if exists webhook_delivery_attempts_fill_org_id on webhook_delivery_attempts',
];
// key_events keeps its outbox trigger (it inserts the event's deliveries, on the same org's
// shards) and audit_log its append-only triggers (they read organizations, a reference table on
// every node) and the one that numbers a previous version's entries (it reads the org's entries,
// on the same shard). Citus distributes a table with triggers only with this setting on, and the
// triggers then run on the shards; it is set for the database so later DDL on them works too.
const ALLOW_TRIGGERS = 'citus.enable_unsafe_triggers';
// audit_log refuses TRUNCATE to everyone (migration 20261201000030), and emptying the
// coordinator's local copy of a table cascades along foreign keys (organizations → audit_log): its
// owner lifts that one trigger while the local copies are emptied.
const TRUNCATE_GUARD = { table: 'audit_log', trigger: 'audit_log_no_truncate' };

// A table a migration creates on a distributed cluster with a foreign key to a reference table
// (deferred_network_orgs → organizations) is made a Citus local table at once (partmethod 'n',
// repmodel 's', no co-location group, where a single-shard table has one): it is in
// pg_dist_partition but still on the coordinator alone, and was skipped
// as laid out, so the sweep's LATERAL over it failed on every sweep. Such a table still waits.
const LAID_OUT = `not (partmethod = 'n' and repmodel = 's' and colocationid = 0)`;

async function laidOut(db: Db): Promise<Set<string>> {
  const { rows } = await db.raw(`select logicalrelid::regclass::text as name from pg_dist_partition where ${LAID_OUT}`);
  return new Set(rows.map((row: { name: string }) => row.name));
}

async function tablesWithOrgId(db: Db): Promise<string[]> {
  const { rows } = await db.raw(
    `select c.table_name as name
       from information_schema.columns c
       join information_schema.tables t on t.table_schema = c.table_schema and t.table_name = c.table_name
      where c.table_schema = current_schema() and c.column_name = 'org_id' and t.table_type = 'BASE TABLE'
      order by c.table_name <> ?, c.table_name`,
    [COLOCATION_ANCHOR],
  );
  return rows.map((row: { name: string }) => row.name).filter((name: string) => !REFERENCE_TABLES.includes(name));
}

interface ForeignKey {
  table: string;
  name: string;
  definition: string;
}

// Citus refuses to distribute a table that a still-local table references, and a table that
// references a still-local one, so a foreign key between two tables it is about to distribute
// (webhook_deliveries → webhooks, attempts → deliveries) is dropped first and added back once
// both are distributed and co-located, as the Citus documentation advises. Nor can it be added
// back between a distributed table and a still-local one, so after a refusal halfway nothing could
// restore it: the drop, the distribution and the re-adding are one transaction (distributePending).
async function foreignKeysAmong(db: Db, tables: readonly string[]): Promise<ForeignKey[]> {
  const { rows } = await db.raw(
    `select conrelid::regclass::text as "table", conname as name, pg_get_constraintdef(oid) as definition
       from pg_constraint
      where contype = 'f' and conrelid::regclass::text = any(?) and confrelid::regclass::text = any(?)
      order by 1, 2`,
    [[...tables], [...tables]],
  );
  return rows;
}

// Run against a plain PostgreSQL (a DATABASE_URL that names the old server, or a node where the
// extension was never created), the first catalog read failed with `relation "pg_dist_partition"
// does not exist`, which names neither the cause nor the fix.
async function assertCitusInstalled(db: Db): Promise<void> {
  const { rows } = await db.raw(`select 1 from pg_extension where extname = 'citus'`);
  if (rows.length === 0) {
    throw new Error(
      'the citus extension is not installed in this database: DATABASE_URL must name the database on the Citus coordinator ' +
        'where `create extension citus` ran (docs/scaling.md, "Moving to Citus"); nothing was changed',
    );
  }
}

/** Returns the tables it laid out now. */
export async function distributeTables(db: Db): Promise<string[]> {
  await assertCitusInstalled(db);
  const done = await laidOut(db);
  const changed: string[] = [];
  for (const sql of LEGACY_FOR_ROLLING_DEPLOY) await db.raw(sql);
  const { rows } = await db.raw('select current_database() as name');
  await db.raw(`alter database ?? set ${ALLOW_TRIGGERS} = on`, [rows[0].name]);
  for (const table of REFERENCE_TABLES.filter((name) => !done.has(name))) {
    await db.raw('select create_reference_table(?)', [table]);
    changed.push(table);
  }
  const pending = (await tablesWithOrgId(db)).filter((name) => !done.has(name));
  await distributePending(db, pending);
  changed.push(...pending);
  for (const signature of FUNCTIONS) await db.raw('select create_distributed_function(?)', [signature]);
  await emptyLocalCopies(db);
  return changed;
}

// All or nothing: a refusal (a unique key without org_id) or any error halfway rolls back the
// dropped foreign keys with the tables distributed before it, so a run again finds both as they
// were. In sequential mode from the start: in a transaction, Citus refuses to distribute a table
// with a foreign key to a reference table (organizations) after anything ran in parallel, as the
// distribution of a table without one does.
async function distributePending(db: Db, pending: readonly string[]): Promise<void> {
  if (pending.length === 0) return;
  let step = 'dropping the foreign keys among them';
  try {
    await db.transaction(async (trx) => {
      await trx.raw(`set local citus.multi_shard_modify_mode to 'sequential'`);
      // For the session, not the transaction: ALTER DATABASE reaches new sessions only, and
      // emptyLocalCopies then alters a trigger of audit_log, distributed by now, on this one (its
      // callers' pools hold one connection).
      await trx.raw(`select set_config('${ALLOW_TRIGGERS}', 'on', false)`);
      const foreignKeys = await foreignKeysAmong(trx, pending);
      for (const key of foreignKeys) await trx.raw('alter table ?? drop constraint ??', [key.table, key.name]);
      for (const table of pending) {
        step = `distributing ${table}`;
        const colocateWith = table === COLOCATION_ANCHOR ? 'default' : COLOCATION_ANCHOR;
        const paused = await pauseInsertTriggers(trx, table);
        await trx.raw(`select create_distributed_table(?, 'org_id', colocate_with => ?)`, [table, colocateWith]);
        for (const trigger of paused) await trx.raw(`alter table ?? ${RESUME[trigger.state]} trigger ??`, [table, trigger.name]);
      }
      step = 'adding back the foreign keys among them';
      for (const key of foreignKeys) await trx.raw(`alter table ?? add constraint ?? ${key.definition}`, [key.table, key.name]);
    });
  } catch (error) {
    const { message, detail } = error as Error & { detail?: string };
    throw new Error(
      `citus:distribute failed ${step}: ${message}${detail ? ` (${detail})` : ''}. Rolled back: none of ${pending.join(', ')} is ` +
        'distributed, and the foreign keys among them are in place; fix the cause and run npm run citus:distribute again',
      { cause: error },
    );
  }
}

// create_distributed_table copies the table's rows into its shards, and on the shards the copy
// is an insert, which fires their insert triggers: key_events' outbox trigger ran for every event
// already there, and Citus refused its write ("cannot execute a distributed query from a query on
// a shard"), so a database with events could not be distributed at all. Nor should it run: the
// rows are not new, their triggers ran when they were inserted, and firing the outbox trigger
// again would enqueue deliveries for old events (sent and cleaned up since, or older than the
// webhook): duplicate sends. So the table's enabled insert triggers are disabled before, and Citus
// creates them on the shards disabled as they are (it copies each trigger's state); enabling them
// right after reaches the shards too (citus.enable_unsafe_triggers, set for the session). Within
// distributePending's transaction, no other session ever sees them off, and a failure restores them.
const INSERT = 1 << 2; // pg_trigger.tgtype's TRIGGER_TYPE_INSERT bit
const RESUME: Record<string, string> = { O: 'enable', A: 'enable always', R: 'enable replica' };

async function pauseInsertTriggers(trx: Db, table: string): Promise<Array<{ name: string; state: string }>> {
  const { rows } = await trx.raw(
    `select tgname as name, tgenabled as state from pg_trigger
      where tgrelid = cast(? as regclass) and not tgisinternal and tgenabled <> 'D' and tgtype & ${INSERT} <> 0
      order by tgname`,
    [table],
  );
  for (const trigger of rows) await trx.raw('alter table ?? disable trigger ??', [table, trigger.name]);
  return rows;
}

// Laying a table out copies its rows into its shards and leaves the originals in the coordinator's
// own storage of it, read by nothing (Citus's notice advises emptying it). Every laid-out table
// whose own storage still has pages is emptied, not only those laid out in this run:
// create_reference_table commits on its own, so a run refused after it left the reference tables'
// originals (every org, every key hash) behind, and the next run, finding those tables laid out,
// never emptied them. A copy already emptied has no pages: a run with none left changes nothing.
async function emptyLocalCopies(db: Db): Promise<void> {
  const { rows } = await db.raw(
    `select logicalrelid::regclass::text as name from pg_dist_partition where ${LAID_OUT} and pg_relation_size(logicalrelid) > 0 order by 1`,
  );
  if (rows.length === 0) return;
  await db.raw('alter table ?? disable trigger ??', [TRUNCATE_GUARD.table, TRUNCATE_GUARD.trigger]);
  try {
    for (const { name } of rows) await db.raw('select truncate_local_data_after_distributing_table(?)', [name]);
  } finally {
    await db.raw('alter table ?? enable trigger ??', [TRUNCATE_GUARD.table, TRUNCATE_GUARD.trigger]);
  }
}

export const USAGE = [
  'usage: DATABASE_URL=postgres://<owner>@<coordinator>/keyusage npm run citus:distribute',
  '',
  "Lays keyusage's tables out on the Citus cluster whose coordinator DATABASE_URL names, after npm run migrate",
  '(docs/scaling.md, "Moving to Citus"). Idempotent: run it after every migration. It takes no arguments.',
].join('\n');

export const readArguments = (argv: readonly string[]): Invocation<'distribute'> => readNoArguments(argv, 'distribute');

export interface DistributeIo {
  out: (line: string) => void;
  err: (line: string) => void;
}

const stdio: DistributeIo = {
  out: (line) => void process.stdout.write(`${line}\n`),
  err: (line) => void process.stderr.write(`${line}\n`),
};

/** 0 when every table is laid out, or for --help; 2 for a wrong invocation; 1, with `error: …`, when it fails. */
export async function main(argv: readonly string[], env: NodeJS.ProcessEnv, io: DistributeIo = stdio): Promise<number> {
  const answered = answerWithoutRunning(readArguments(argv), USAGE, io);
  if (answered !== undefined) return answered;
  const url = env.DATABASE_URL;
  if (!url) {
    io.err('error: DATABASE_URL must name the Citus coordinator database (its owner, as for npm run migrate)');
    return 2;
  }
  const db = createDb(url, { poolMax: 1, applicationName: 'keyusage-citus-distribute' });
  try {
    const changed = await distributeTables(db);
    io.out(changed.length ? `laid out: ${changed.join(', ')}` : 'every table was already laid out');
    return 0;
  } catch (error) {
    io.err(`error: ${(error as Error).message}`);
    return 1;
  } finally {
    await db.destroy();
  }
}

if (require.main === module) exitWhenDone(main(process.argv.slice(2), process.env), stdio.err);
