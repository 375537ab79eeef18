// The usage log (COLLECTOR_USAGE_LOG; by default for flushes of 5,000 keys or more): a flush
// appends one row per key, the key's whole delta, and commits; the fold applies the log to the
// usage tables later, all of a key's rows since the last fold, from every flush and every
// collector, in one upsert per table.
//
// Why: one upsert of 100 k rows costs 0.84-0.93 s on the measured server, and a flush upserts at
// least three tables per key, while a COPY of 100 k rows into a table without an index takes
// 0.25-0.31 s (docs/benchmarks.md §4b). With the log a flush is that COPY: the collector's memory
// is released and its uses are durable within the second, whatever the key count, and the fold
// pays the upserts once per key and fold instead of once per key, flush and collector.
import type { Knex } from 'knex';
import Cursor from 'pg-cursor';
import type { PoolClient } from 'pg';
import type { Db } from '../shared/db';
import { FOLD_LOCK_CLASS } from '../shared/usageLogDelta';
import { TABLE } from '../shared/tables';
import { DeltaCoalescer, type KeyUsageDelta } from './aggregator';
import { connectionOf, copyChunks } from './flushStaging';
import { chunksWritten } from './copyBytes';
import { decodeDelta, writeLogLine } from './logDelta';
import type { KnownKeys } from './knownKeys';
import {
  balanceOrgs,
  claimBatches,
  combineParts,
  commitOrDoubt,
  createPgUsageStore,
  keepDoubtedClaims,
  existingKeys,
  setLocals,
  settleParts,
  SPLIT_MIN_KEYS,
  totalUses,
  uuidArrayLiteral,
  writeInOne,
  type ApplyOptions,
  type Claimed,
  type FoldResult,
  type PartResult,
  type PendingBatch,
  type PgUsageStoreOptions,
  type UsageStore,
  type WriteResult,
} from './usageStore';

const LOG_COLUMNS = `${TABLE.usageLog} (org_id, key_id, delta)` as const;

// How many of `keys` exist in the org they name: one number back, not a row per key; the keys are
// read to tell which only when some are missing (forged ids, a deleted key). Each id list goes as
// one array literal built by a join, not an array pg serializes element by element: for 100 k keys
// the count took 187 ms this way (median of 12; worst 262 ms) against 242 ms (worst 332), and reading
// the keys' rows 248 ms (worst 311; bench/logSteps.ts). The ids are uuids, validated by the parser.
const EXISTING_COUNT = `select count(*)::int as n from ${TABLE.apiKeys} a
  join unnest(cast($1 as uuid[]), cast($2 as uuid[])) as k(org_id, key_id) on a.org_id = k.org_id and a.id = k.key_id`;

async function keysThatExist(connection: PoolClient, keys: KeyUsageDelta[]): Promise<{ accepted: KeyUsageDelta[]; statements: number }> {
  if (keys.length === 0) return { accepted: keys, statements: 0 };
  const { rows } = await connection.query<{ n: number }>(EXISTING_COUNT, [
    uuidArrayLiteral(keys.map((k) => k.orgId)),
    uuidArrayLiteral(keys.map((k) => k.keyId)),
  ]);
  if (rows[0].n === keys.length) return { accepted: keys, statements: 1 };
  return { accepted: await existingKeys(connection, keys), statements: 2 };
}

// keysThatExist, asked only of the keys `known` has not confirmed lately (of all, without it).
async function keysThatExistOrKnown(connection: PoolClient, keys: KeyUsageDelta[], known: KnownKeys | undefined) {
  if (known === undefined) return keysThatExist(connection, keys);
  const unconfirmed = known.unconfirmed(keys);
  const checked = await keysThatExist(connection, unconfirmed);
  known.confirm(checked.accepted);
  if (checked.accepted.length === unconfirmed.length) return { accepted: keys, statements: checked.statements };
  const exists = new Set(checked.accepted);
  const missing = new Set(unconfirmed.filter((k) => !exists.has(k)));
  return { accepted: keys.filter((k) => !missing.has(k)), statements: checked.statements };
}

// The append: the batches' (batch, org) pairs claimed in the flush ledger, as a direct write
// claims them, and the fresh keys' deltas COPYed into the log, in one transaction. A retry of a
// batch whose COMMIT was in doubt finds its pairs claimed and appends nothing again. Keys that do
// not exist in the org they named are dropped here, as a direct write drops them: a flood of
// forged ids fills no log, and a use is counted persisted or unknown once, at its flush (the fold
// checks again, for keys deleted since). It takes the write's lock_timeout: a lock on the log (an
// index being built, an operator's LOCK TABLE) made every append wait for ever.
async function append(db: Db, batches: readonly PendingBatch[], options: ApplyOptions, known: KnownKeys | undefined): Promise<WriteResult> {
  const trx = await db.transaction();
  let claimed: Claimed;
  let keys: KeyUsageDelta[];
  let accepted: KeyUsageDelta[];
  let statements = 2;
  try {
    await setLocals(trx, options);
    claimed = await claimBatches(trx, batches);
    keys = claimed.fresh.flatMap((batch) => batch.keys);
    const connection = await connectionOf(trx);
    const checked = await keysThatExistOrKnown(connection, keys, known);
    accepted = checked.accepted;
    statements += checked.statements;
    statements += await copyChunks(connection, LOG_COLUMNS, chunksWritten(accepted, writeLogLine));
  } catch (error) {
    await trx.rollback().catch(() => undefined);
    throw error;
  }
  await commitOrDoubt(trx);
  const acceptedUses = totalUses(accepted);
  return combineParts(batches, [
    {
      ...NOTHING_APPLIED,
      freshIds: claimed.freshIds,
      duplicateUses: claimed.duplicateUses,
      keysWritten: accepted.length,
      keysLogged: accepted.length,
      usesWritten: acceptedUses,
      unknownKeys: keys.length - accepted.length,
      unknownUses: totalUses(keys) - acceptedUses,
      statements: statements + 1,
    },
  ]);
}

const NOTHING_APPLIED = {
  keysWritten: 0,
  keysLogged: 0,
  usesWritten: 0,
  unknownKeys: 0,
  unknownUses: 0,
  quarantined: [],
  statements: 0,
  eventsRecorded: 0,
  eventCandidates: 0,
  keysToTrim: [],
};

// Every fold of an org holds this transaction-level lock (FOLD_LOCK_CLASS, hash of the org id), so
// two collectors never fold one org at once: the second skips it (its rows are left for its next
// fold, or taken by the first if they were there when its delete began), so folds never wait for
// each other and cannot deadlock. Advisory locks live where the collectors connect: the one
// server, or the Citus coordinator.

const LOCK_ORGS = `select o as org_id from unnest(cast(? as uuid[])) as o where pg_try_advisory_xact_lock(${FOLD_LOCK_CLASS}, hashtext(cast(o as text)))`;
export const TAKE_LOG = `delete from ${TABLE.usageLog} where org_id = any($1::uuid[]) returning org_id, key_id, logged_at, delta`;
// Rows read from the delete at a time: PostgreSQL runs a DELETE ... RETURNING to its end and keeps
// the rows it returns on its side (spilled to disk past work_mem), and the cursor fetches them in
// batches, so the fold holds one batch of rows and one coalesced delta per key, not every row.
export const TAKE_BATCH_ROWS = 5000;

type LogRow = { org_id: string; key_id: string; logged_at: Date; delta: string };

/** What one part of a fold takes: its orgs, the orgs another fold held (skipped), the rows it could not decode. */
interface FoldClaim {
  orgs: readonly string[];
  skipped: Set<string>;
  setAside: LogRow[];
  maxSetAside: number;
}

// The fold's claim: the rows of `orgs` (those this fold could lock), deleted in the transaction
// that applies them, so a row is applied exactly when it leaves the log. A row that cannot be
// decoded moves to api_key_usage_set_aside in the same transaction (its uses are not lost: a
// collector that reads it folds it once requeued), reported as quarantined. Such rows are held in
// memory whole until the cursor ends, so beyond maxSetAside the part fails and leaves them all in
// the log: many rows this collector cannot read are another version's appends, for collectors
// of that version to fold, not to be set aside here by the hundred thousand.
async function takeLog(trx: Knex.Transaction, claim: FoldClaim): Promise<Claimed> {
  const { orgs, skipped, setAside } = claim;
  const locked: Array<{ org_id: string }> = (await trx.raw(LOCK_ORGS, [[...orgs]])).rows;
  for (const orgId of orgs) skipped.add(orgId);
  for (const { org_id: orgId } of locked) skipped.delete(orgId);
  if (locked.length === 0) return { fresh: [], freshIds: [], duplicateUses: 0 };
  const cursor = (await connectionOf(trx)).query(new Cursor<LogRow>(TAKE_LOG, [locked.map((row) => row.org_id)]));
  // Every address of every row: a flush keeps 16 a key, and capped again here the fold dropped what
  // several flushes had kept (networks never reported new, addresses never counted), which a
  // direct write of the same flushes keeps. A key's addresses are bounded by its rows taken.
  const coalescer = new DeltaCoalescer(Number.POSITIVE_INFINITY);
  let uses = 0;
  // Read to its end, the cursor has closed its portal itself. No close() on a failed read: the
  // failure already ended the cursor, and close() would wait for a ReadyForQuery that a cut
  // connection never sends, holding the fold forever.
  for (let rows = await cursor.read(TAKE_BATCH_ROWS); rows.length > 0; rows = await cursor.read(TAKE_BATCH_ROWS)) {
    for (const row of rows) {
      try {
        const delta = decodeDelta(row.key_id, row.org_id, row.delta);
        uses += delta.total;
        coalescer.add(delta);
      } catch {
        if (setAside.length >= claim.maxSetAside) {
          await cursor.close();
          throw new Error(
            `more than ${claim.maxSetAside} usage log rows of the orgs folded cannot be decoded by this collector (another version's appends?); they stay in the log: run one collector version`,
          );
        }
        setAside.push(row);
      }
    }
  }
  for (let at = 0; at < setAside.length; at += UNREADABLE_INSERT_ROWS) {
    await trx(TABLE.usageSetAside).insert(setAside.slice(at, at + UNREADABLE_INSERT_ROWS).map((row) => ({ ...row, reason: 'unreadable' })));
  }
  return { fresh: [{ keys: coalescer.keys(), uses }], freshIds: [], duplicateUses: 0 };
}

// Rows of one insert: 5 parameters a row, far below PostgreSQL's 65,535 a statement.
const UNREADABLE_INSERT_ROWS = 1000;
/** Undecodable rows one part of a fold sets aside at most (held whole in memory until then). */
export const FOLD_MAX_UNREADABLE_ROWS = 10_000;

/**
 * Log rows a fold takes at most (whole orgs: one org larger than this is folded alone, whole). It
 * bounds how long a fold's transaction holds the usage rows it writes; the collector's memory
 * holds one delta per key of the fold, whatever the rows (takeLog reads them in batches).
 */
export const FOLD_MAX_ROWS = 200_000;

// With the orgs another collector is folding (their fold lock held, as pg_locks shows it: the class
// and the hash as oid), which the fold leaves out, as skipped: oldest first, the org held was
// picked again and again, and alone when large, so while one org was folded anywhere no other
// collector folded anything.
const ROWS_BY_ORG = `
with held as (
  select objid from pg_locks where locktype = 'advisory' and granted and objsubid = 2 and classid = cast(${FOLD_LOCK_CLASS} as oid)
)
select org_id, n, cast(hashtext(cast(org_id as text)) as oid) in (select objid from held) as held from (
  select org_id, count(*)::int as n, min(logged_at) as oldest from ${TABLE.usageLog} group by org_id
) o
 order by oldest`;

// A read in a transaction of its own, for the write's SET LOCALs; rolled back, it wrote nothing.
async function readUnderLockTimeout(db: Db, options: ApplyOptions, sql: string): Promise<unknown[]> {
  const trx = await db.transaction();
  try {
    await setLocals(trx, options);
    return (await trx.raw(sql)).rows;
  } finally {
    await trx.rollback();
  }
}

// The orgs of the next fold, oldest rows first, up to `maxRows` rows, split into `parts` groups
// near equal in rows; and the rows of the orgs it leaves. Read under the write's lock_timeout: an
// exclusive lock on the log (LOCK TABLE's default mode, DDL) made this read, and so every fold
// and the collector's stop, wait for ever.
async function nextFold(db: Db, options: UsageLogOptions): Promise<{ groups: string[][]; rowsLeft: number; held: string[] }> {
  const parts = options.parallelism ?? 1;
  const maxRows = options.foldMaxRows ?? FOLD_MAX_ROWS;
  const rows = await readUnderLockTimeout(db, options, ROWS_BY_ORG);
  const rowsOf = new Map<string, number>();
  const held: string[] = [];
  let taken = 0;
  let rowsLeft = 0;
  for (const { org_id: orgId, n, held: folding } of rows as Array<{ org_id: string; n: number; held: boolean }>) {
    if (folding) held.push(orgId);
    else if (rowsLeft > 0 || (taken > 0 && taken + n > maxRows)) rowsLeft += n;
    else {
      rowsOf.set(orgId, n);
      taken += n;
    }
  }
  // Below SPLIT_MIN_KEYS rows one transaction, as for a direct write.
  const groupOf = balanceOrgs(rowsOf, taken < SPLIT_MIN_KEYS ? 1 : parts);
  const groups: string[][] = [];
  for (const [orgId, group] of groupOf) (groups[group] ??= []).push(orgId);
  return { groups, rowsLeft, held };
}

// One transaction per group of orgs; a row that cannot be decoded counts only once its part
// committed (its delete with it).
async function foldPart(db: Db, orgs: readonly string[], options: UsageLogOptions, skipped: Set<string>): Promise<PartResult> {
  const claim: FoldClaim = { orgs, skipped, setAside: [], maxSetAside: options.foldMaxUnreadableRows ?? FOLD_MAX_UNREADABLE_ROWS };
  const part = await writeInOne(db, (trx) => takeLog(trx, claim), options);
  const unreadable = claim.setAside.map((row) => ({ keyId: row.key_id, orgId: row.org_id, uses: 0, unreadable: true as const }));
  return { ...part, quarantined: [...part.quarantined, ...unreadable] };
}

export interface UsageLogOptions extends PgUsageStoreOptions {
  /**
   * COLLECTOR_USAGE_LOG: a write of this many keys or more appends to the log, a smaller one
   * writes the usage tables; undefined: every write does.
   */
  logMinKeys: number | undefined;
  /** Log rows a fold takes at most: FOLD_MAX_ROWS unless given. */
  foldMaxRows?: number;
  /** Undecodable rows a part of a fold sets aside at most: FOLD_MAX_UNREADABLE_ROWS unless given. */
  foldMaxUnreadableRows?: number;
}

const keysOf = (batches: readonly PendingBatch[]) => batches.reduce((sum, { batch }) => sum + batch.keys.length, 0);

/**
 * The collector's store. write() appends to the usage log (from logMinKeys keys, or as the caller
 * says) or writes the usage tables directly: either way it claims the batches' (batch, org) pairs
 * in the flush ledger, so a retry sent the other way still applies each use once. fold() applies
 * the log in either mode (a collector started without the log folds what one with it left), at
 * most FOLD_MAX_ROWS rows of whole orgs per call, in up to `parallelism` transactions at once,
 * exactly once: a row leaves the log in the transaction that applies it, so a failed or in-doubt
 * fold either applied its rows or left them. With `known`, an append asks the database only about
 * keys it has not confirmed within known's TTL.
 */
export function createUsageStore(db: Db, options: UsageLogOptions, known?: KnownKeys): UsageStore & { fold(): Promise<FoldResult> } {
  const direct = createPgUsageStore(db, options);
  const { logMinKeys } = options;
  const toLogByKeys = (batches: readonly PendingBatch[]) => logMinKeys !== undefined && keysOf(batches) >= logMinKeys;
  return {
    write: async (batches, toLog = toLogByKeys(batches)) => {
      await keepDoubtedClaims(db, batches);
      return toLog ? append(db, batches, options, known) : direct.write(batches);
    },
    logMinKeys,
    fold: async () => {
      const { groups, rowsLeft, held } = await nextFold(db, options);
      const skipped = new Set<string>(held);
      const result = await settleParts(
        [],
        groups.map((orgs) => foldPart(db, orgs, options, skipped)),
      );
      return { ...result, logRowsLeft: rowsLeft, orgsSkipped: skipped.size };
    },
    prune: (keys) => direct.prune(keys),
    expireOldRows: (retentionDays) => direct.expireOldRows(retentionDays),
  };
}
