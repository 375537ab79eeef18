import type { Knex } from 'knex';
import type { PoolClient } from 'pg';
import type { Db } from '../shared/db';
import { OUTCOMES, provenCount } from '../shared/usageWire';
import { emptyDelta, mergeBatches, type KeyUsageDelta, type UsageBatch } from './aggregator';
import { recordFlushEvents, type EventDetection } from './eventStore';
import { HOUR_TABLES, IP_TABLES, RECENT_IPS_PER_KEY, TABLE } from '../shared/tables';
import { connectionOf, copyChunks, msToTime, prepareStaging, STAGED_KEY } from './flushStaging';
import { chunksWritten, CopyBytes, NEWLINE, TAB } from './copyBytes';
import { writeRefusedLine } from './logDelta';

export interface PendingBatch {
  /**
   * Recorded in usage_flushes, once per org of the batch that exists (and once for all those that
   * do not), in the same transaction, so a retried batch is applied once.
   */
  readonly id: string;
  batch: UsageBatch;
  /** Its last write's COMMIT may have landed (CommitInDoubtError): its claims may exist. */
  readonly inDoubt?: boolean;
}

export interface WriteResult {
  appliedBatches: number;
  duplicateBatches: number;
  /** Uses of the batches found already committed by an earlier, in-doubt attempt. */
  duplicateUses: number;
  keysWritten: number;
  /** Of keysWritten, those appended to the usage log, not yet applied (collector/usageLog.ts). */
  keysLogged: number;
  usesWritten: number;
  unknownKeys: number;
  unknownUses: number;
  /** Keys whose rows PostgreSQL refused (a data error); their uses are set aside, not retried. */
  /**
   * Set aside in api_key_usage_set_aside: keys PostgreSQL refused (`deleted`: not kept, the key no
   * longer exists), and usage log rows a fold could not decode (`unreadable`, collector/usageLog.ts).
   */
  quarantined: Array<{ keyId: string; orgId: string; uses: number; unreadable?: true; deleted?: true }>;
  statements: number;
  /** Key events this write recorded (0 with detection off). */
  eventsRecorded: number;
  /** Keys whose facts detection read: those that could raise an event (0 with detection off). */
  eventCandidates: number;
  /**
   * Keys that gained a recent or failed address, or a network of the history, in this write: the
   * only ones it can have put over their caps, so the only ones prune() needs. A key is named once
   * per table it gained a row in; the flusher queues each key once.
   */
  keysToTrim: KeyRef[];
}

export interface UsageStore {
  /**
   * `toLog`: append to the usage log (true) or write the usage tables (false); unset, the store
   * decides by the batches' keys (logMinKeys). A store without a log writes the tables.
   * Once it has resolved, the store keeps none of the batches' keys, and its result holds none of
   * them (keysToTrim, quarantined: objects of their own): the aggregator reuses them for new keys
   * (Aggregator.recycle).
   */
  write(batches: readonly PendingBatch[], toLog?: boolean): Promise<WriteResult>;
  /** Best-effort upkeep outside the flush transaction: trims recent IPs (and the IP-prefix history) and expired rows. */
  prune(keys: readonly KeyRef[]): Promise<void>;
  expireOldRows(retentionDays: number): Promise<void>;
  /** Applies (part of) the usage log to the usage tables (collector/usageLog.ts); absent: the store keeps no log. */
  fold?(): Promise<FoldResult>;
  /**
   * write() appends to the usage log when its batches hold this many keys or more
   * (COLLECTOR_USAGE_LOG), and such appends may wait for the folds; absent: the store keeps no
   * log of its own writes (it may still fold one).
   */
  readonly logMinKeys?: number;
}

export interface FoldResult extends WriteResult {
  /** Rows the fold found in the usage log and left for a later fold: the log's backlog. */
  logRowsLeft: number;
  /** Orgs the fold chose but another collector's fold held: their rows were in the log, or in that fold. */
  orgsSkipped: number;
}

// The write failed at or after COMMIT: PostgreSQL may or may not have applied it.
export class CommitInDoubtError extends Error {
  constructor(
    readonly cause: unknown,
    message = `commit outcome unknown: ${(cause as Error)?.message ?? cause}`,
  ) {
    super(message);
    this.name = 'CommitInDoubtError';
  }
}

/**
 * A part of a split write failed after another part committed. The batches keep their ids, as
 * for a commit in doubt; `written` is what the committed parts wrote (their quarantined and
 * unknown keys, events and keys to trim), which the retry will find already claimed.
 */
export class PartlyWrittenError extends CommitInDoubtError {
  constructor(
    cause: unknown,
    readonly written: WriteResult,
  ) {
    super(cause, `another part of the flush committed; this part failed: ${(cause as Error)?.message ?? cause}`);
    this.name = 'PartlyWrittenError';
  }
}

export type KeyRef = Pick<KeyUsageDelta, 'orgId' | 'keyId'>;

const FLUSH_ID_RETENTION = '1 day';
const FLUSH_WORK_MEM = '64MB';

const byKeyId = (a: KeyUsageDelta, b: KeyUsageDelta) => (a.keyId < b.keyId ? -1 : a.keyId > b.keyId ? 1 : a.orgId < b.orgId ? -1 : 1);

const outcomeColumns = OUTCOMES.map((outcome) => `${outcome}_count`);
const addTo = (table: string) => (column: string) => `${column} = keyusage_add(${table}.${column}, excluded.${column})`;
// The newer of two (time, address) pairs; a null time (no such use in the batch) never wins.
const newerIp = (table: string, ip: string, at: string) =>
  `${ip} = case when excluded.${at} >= coalesce(${table}.${at}, '-infinity') then excluded.${ip} else ${table}.${ip} end`;
const latest = (table: string, at: string) => `${at} = greatest(${table}.${at}, excluded.${at})`;

// The flush's rows are staged first (collector/flushStaging.ts); these statements go to
// PostgreSQL as one multi-statement query, one round trip for every table of the flush.
// Keys that do not exist in the org their datagram named are dropped before staging (a forged
// line creates nothing); the upserts then read only staged keys, so api_keys is read once per
// flush, not once per table. A read of api_keys alone rather than an anti-join that deletes from
// the staging table: Citus refuses to modify a local table in a statement that reads a reference
// table ("relation flush_keys is not distributed"). The ids go as one array literal built by a
// join (uuids, validated by the parser), not an array pg serializes element by element: for 100 k
// keys the read took 196 ms this way (median of 12; worst 239 ms) against 248 ms (worst 311;
// bench/logSteps.ts, forms rows and rowsLiteral).
const EXISTING_KEYS = `select id, org_id from ${TABLE.apiKeys} where id = any(cast($1 as uuid[]))`;

/** The id list as one PostgreSQL array literal. */
export const uuidArrayLiteral = (ids: readonly string[]) => `{${ids.join(',')}}`;

export async function existingKeys(connection: PoolClient, keys: KeyUsageDelta[]): Promise<KeyUsageDelta[]> {
  const { rows } = await connection.query<{ id: string; org_id: string }>(EXISTING_KEYS, [uuidArrayLiteral(keys.map((k) => k.keyId))]);
  const orgOf = new Map(rows.map((row) => [row.id, row.org_id]));
  return keys.filter((k) => orgOf.get(k.keyId) === k.orgId);
}

// Rows enter every statement sorted by key id (then hour / ip), so concurrent collectors lock
// shared rows in the same order and cannot deadlock each other. Counters go through
// keyusage_add, which saturates instead of failing the flush. DO UPDATE takes only immutable
// functions on Citus (it runs on the workers), so the time comes from excluded. Every conflict
// target starts with org_id, the distribution column on Citus, so each row's upsert runs on the
// one shard that holds its org (docs/scaling.md).
const UPSERT_TOTALS = `
insert into ${TABLE.usage} (key_id, org_id, request_count, ${outcomeColumns.join(', ')}, last_used_at, last_used_ip,
                           last_failed_at, last_failed_ip, last_revoked_use_at, last_expired_use_at,
                           previous_secret_last_used_at, previous_secret_last_used_ip, updated_at)
select u.key_id, u.org_id, u.request_count, ${outcomeColumns.map((c) => `u.${c}`).join(', ')}, ${msToTime('u.last_used_ms')}, u.last_ip,
       ${msToTime('u.last_failed_ms')}, u.last_failed_ip, ${msToTime('u.last_revoked_use_ms')}, ${msToTime('u.last_expired_use_ms')},
       ${msToTime('u.previous_secret_ms')}, u.previous_secret_ip, now()
  from flush_keys u
 order by u.key_id, u.org_id
on conflict (org_id, key_id) do update set
  ${['request_count', ...outcomeColumns].map(addTo(TABLE.usage)).join(',\n  ')},
  ${newerIp(TABLE.usage, 'last_used_ip', 'last_used_at')},
  ${latest(TABLE.usage, 'last_used_at')},
  ${newerIp(TABLE.usage, 'last_failed_ip', 'last_failed_at')},
  ${latest(TABLE.usage, 'last_failed_at')},
  ${latest(TABLE.usage, 'last_revoked_use_at')},
  ${latest(TABLE.usage, 'last_expired_use_at')},
  ${newerIp(TABLE.usage, 'previous_secret_last_used_ip', 'previous_secret_last_used_at')},
  ${latest(TABLE.usage, 'previous_secret_last_used_at')},
  updated_at = excluded.updated_at`;

// request_count of an hour counts proven uses; the outcome columns count every outcome. Into the
// current hours' table, whose only index is its plain primary key, so every update of a bucket is
// HOT; the upkeep moves closed hours into the hourly table (collector/hourMove.ts).
const UPSERT_HOURS = `
insert into ${TABLE.usageCurrentHours} (org_id, key_id, hour, request_count, ${outcomeColumns.join(', ')})
select h.org_id, h.key_id, ${msToTime('h.hour_ms')}, h.request_count, ${outcomeColumns.map((c) => `h.${c}`).join(', ')}
  from flush_hours h ${STAGED_KEY('h')}
 order by h.key_id, h.org_id, h.hour_ms
on conflict (org_id, key_id, hour) do update set
  ${['request_count', ...outcomeColumns].map(addTo(TABLE.usageCurrentHours)).join(',\n  ')}`;

// Proven uses go to api_key_recent_ips, failed attempts to api_key_failed_ips: one shape. Each
// returns the keys that gained an address (an inserted row: xmax 0), the only ones its trim needs;
// a flush of keys seen from known addresses returns none, and nothing is trimmed after it.
// lastIp: the api_key_usage column holding the table's last address (its trim keeps it).
const STORE_IP_TABLES = {
  proven: { ...IP_TABLES.proven, proven: true, lastIp: 'last_used_ip', ips: (k: KeyUsageDelta) => k.ips },
  failed: { ...IP_TABLES.failed, proven: false, lastIp: 'last_failed_ip', ips: (k: KeyUsageDelta) => k.failedIps },
} as const;
type IpTable = (typeof STORE_IP_TABLES)[keyof typeof STORE_IP_TABLES];
const STORE_IP_TABLE_LIST: readonly IpTable[] = Object.values(STORE_IP_TABLES);

const upsertIps = ({ table, count, proven }: IpTable) => `
with written as (
insert into ${table} (org_id, key_id, ip, first_seen, last_seen, ${count})
select r.org_id, r.key_id, r.ip, ${msToTime('r.first_seen_ms')}, ${msToTime('r.last_seen_ms')}, r.n
  from flush_ips r ${STAGED_KEY('r')}
 where ${proven ? '' : 'not '}r.proven
 order by r.key_id, r.org_id, r.ip
on conflict (org_id, key_id, ip) do update set
  first_seen = least(${table}.first_seen, excluded.first_seen),
  last_seen = greatest(${table}.last_seen, excluded.last_seen),
  ${addTo(table)(count)}
returning org_id, key_id, (xmax = 0) as inserted)
select distinct org_id, key_id from written where inserted`;

// The totals first, and for every staged key: the other tables have no foreign key to api_keys;
// their rows go with the key's totals row (migrations/20261201000080). Upserting it either locks
// the existing row or checks the key (the one foreign key left), so an operator's DELETE of the
// key waits for this flush's commit and then takes every row it wrote, or commits first and
// fails this key's insert (a data error: the key is set aside, its other rows rolled back).
const APPLY_STAGED = [UPSERT_TOTALS, UPSERT_HOURS, upsertIps(STORE_IP_TABLES.proven), upsertIps(STORE_IP_TABLES.failed)].join(';\n');

// COPY lines of the staging tables (collector/flushStaging.ts), in their column order.
function writeCounts(out: CopyBytes, counts: KeyUsageDelta['byOutcome']): void {
  out.number(provenCount(counts));
  for (const outcome of OUTCOMES) {
    out.byte(TAB);
    out.number(counts[outcome]);
  }
}

// Each field after a tab.
function writeFields(out: CopyBytes, ...fields: Array<string | number | null>): void {
  for (const field of fields) {
    out.byte(TAB);
    if (typeof field === 'number') out.number(field);
    else out.text(field);
  }
}

function writeKeyLine(out: CopyBytes, k: KeyUsageDelta): void {
  out.text(k.orgId);
  writeFields(out, k.keyId);
  out.byte(TAB);
  writeCounts(out, k.byOutcome);
  // '' is no such address: null.
  writeFields(
    out,
    k.lastUsedAt,
    k.lastIp || null,
    k.lastFailedAt,
    k.lastFailedIp || null,
    k.lastRevokedUseAt,
    k.lastExpiredUseAt,
    k.lastPreviousSecretAt,
    k.lastPreviousSecretIp || null,
  );
  out.byte(NEWLINE);
}

function writeHourLines(out: CopyBytes, k: KeyUsageDelta): void {
  for (const [hour, counts] of k.hours) {
    out.text(k.orgId);
    writeFields(out, k.keyId, hour);
    out.byte(TAB);
    writeCounts(out, counts);
    out.byte(NEWLINE);
  }
}

function writeIpLines(out: CopyBytes, k: KeyUsageDelta): void {
  for (const { proven, ips } of STORE_IP_TABLE_LIST) {
    for (const [ip, stat] of ips(k)) {
      out.text(proven ? 't' : 'f');
      writeFields(out, k.orgId, k.keyId, ip, stat.firstSeen, stat.lastSeen, stat.count);
      out.byte(NEWLINE);
    }
  }
}

// Stages the rows of the keys that exist in their org, then writes every usage table in one
// round trip. Returns those keys, and the ones that gained an address.
async function applyUsage(connection: PoolClient, keys: KeyUsageDelta[]): Promise<{ statements: number; accepted: KeyUsageDelta[]; grew: KeyRef[] }> {
  if (keys.length === 0) return { statements: 0, accepted: [], grew: [] };
  const accepted = await existingKeys(connection, keys);
  if (accepted.length === 0) return { statements: 1, accepted, grew: [] };
  await prepareStaging(connection);
  const copies =
    (await copyChunks(connection, 'flush_keys', chunksWritten(accepted, writeKeyLine))) +
    (await copyChunks(connection, 'flush_hours', chunksWritten(accepted, writeHourLines))) +
    (await copyChunks(connection, 'flush_ips', chunksWritten(accepted, writeIpLines)));
  // One result per statement; only the address upserts return rows: the keys that gained one.
  const results = (await connection.query(APPLY_STAGED)) as unknown as Array<{ rows: Array<{ org_id: string; key_id: string }> }>;
  const grew = results.flatMap((result) => result.rows.map((row) => ({ orgId: row.org_id, keyId: row.key_id })));
  return { statements: 3 + copies, accepted, grew };
}

export interface ApplyOptions {
  /** Unset: no event detection (EVENTS_ENABLED=false). */
  events?: EventDetection;
  /** COLLECTOR_LOCK_TIMEOUT_MS: each write's (and fold's) lock_timeout; 0 or unset: the server's own. */
  lockTimeoutMs?: number;
}

// Events are detected after the key's rows are written, inside the same savepoint, so an event
// commits exactly when its usage does and a key whose events fail is isolated like any data error.
async function applyBatch(trx: Knex.Transaction, keys: KeyUsageDelta[], { events }: ApplyOptions) {
  const connection = await connectionOf(trx);
  const { statements, accepted, grew } = await applyUsage(connection, keys);
  let more = 0;
  let recorded = 0;
  let candidates = 0;
  if (events) {
    const detected = await recordFlushEvents(connection, accepted, events);
    more += detected.statements;
    recorded += detected.events;
    candidates += detected.candidates;
    // Not push(...): a spread of 125,000 arguments overflows the stack, no data error, so every retry failed.
    for (const key of detected.newNetworks) grew.push(key);
  }
  return { statements: statements + more, accepted, quarantined: [] as KeyUsageDelta[], events: recorded, candidates, grew };
}

// SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation): the rows were
// refused, not the connection. Retrying the same rows would fail forever.
function isDataError(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('23'));
}

type Applied = Awaited<ReturnType<typeof applyBatch>>;

// The keys of the flush, sorted by key id, each (org, key) once. mergeBatches copies every delta,
// which at 100 k keys cost 0.6-0.9 s of the flush; the usual flush holds one batch straight from
// the aggregator (each key once), which only needs sorting. So does a fold's, whose keys carry
// every address of the flushes it took: capped here, it dropped what those flushes had kept.
function mergeFresh(fresh: UsageBatch[]): UsageBatch {
  if (fresh.length === 1) {
    const keys = [...fresh[0].keys].sort(byKeyId);
    const distinct = keys.every((k, i) => i === 0 || k.keyId !== keys[i - 1].keyId || k.orgId !== keys[i - 1].orgId);
    if (distinct) return { keys, uses: fresh[0].uses };
  }
  const merged = mergeBatches(fresh);
  return { keys: merged.keys.sort(byKeyId), uses: merged.uses };
}

// Of one batch's claim rows: whether an org's keys are fresh. An org that exists, if its pair was
// claimed now; one that does not, if the pair standing for them all was.
function freshOrgs(rows: readonly ClaimRow[]): (orgId: string) => boolean {
  const claimed = new Set(rows.filter((row) => row.claimed).map((row) => row.org_id));
  const unknown = new Set(rows.filter((row) => !row.claimed).map((row) => row.org_id));
  const unknownClaimed = [...unknown].some((orgId) => claimed.has(orgId));
  return (orgId) => (unknown.has(orgId) ? unknownClaimed : claimed.has(orgId));
}

/** Every outcome's uses of `keys`. */
export const totalUses = (keys: readonly KeyUsageDelta[]) => keys.reduce((sum, k) => sum + k.total, 0);

// One statement: the pairs claimed now (claimed), and those of orgs that do not exist (not
// claimed); a pair in neither was claimed by an earlier attempt. The orgs that do not exist have
// one pair for them all per batch (the first of them): a flood of forged org ids wrote a ledger
// row for each, kept a day. Claimed once, that pair says whether their keys were counted (as
// unknown) by an attempt that committed, as any org's pair does for its keys.
const CLAIM_PAIRS = `
  with pairs as (select p.org_id, p.id, exists (select from ${TABLE.organizations} as o where o.id = p.org_id) as known
                   from unnest(cast(? as uuid[]), cast(? as uuid[])) as p(org_id, id)),
       claimed as (insert into usage_flushes (org_id, id)
                   select org_id, id from pairs where known
                   union all
                   select (array_agg(org_id order by org_id))[1], id from pairs where not known group by id
                   on conflict do nothing
                   returning org_id, id)
  select org_id, id, true as claimed from claimed
  union all
  select org_id, id, false from pairs where not known`;

type ClaimRow = { id: string; org_id: string; claimed: boolean };

// Claims every (batch, org) pair in the flush ledger. A pair already there was committed by an
// earlier attempt whose COMMIT was in doubt, so that org's keys of that batch are skipped. On
// Citus the ledger row lives on the org's shard beside the org's usage rows: each shard's part
// of a flush carries its own proof of having been applied.
export async function claimBatches(trx: Knex.Transaction, batches: readonly PendingBatch[]): Promise<Claimed> {
  const orgsOf = batches.map((b) => [...new Set(b.batch.keys.map((k) => k.orgId))]);
  const pairs = batches.flatMap((b, i) => orgsOf[i].map((orgId) => ({ id: b.id, orgId })));
  const { rows } = await trx.raw<{ rows: ClaimRow[] }>(CLAIM_PAIRS, [pairs.map((p) => p.orgId), pairs.map((p) => p.id)]);
  // By org, not a "batch/org" string made and hashed per key: that cost the receive loop about 0.5 µs
  // a key (profiled at 100 k keys a flush). A batch whose orgs were all claimed (every first
  // attempt) keeps its key array. Two batches of one id (none today) share the id's claimed set,
  // so each asks for every one of its own orgs.
  const fresh = batches.map((b, i) => {
    const isFresh = freshOrgs(rows.filter((row) => row.id === b.id));
    return orgsOf[i].every(isFresh) ? b.batch.keys : b.batch.keys.filter((k) => isFresh(k.orgId));
  });
  return {
    fresh: fresh.map((keys) => ({ keys, uses: totalUses(keys) })),
    freshIds: batches.filter((_, i) => fresh[i].length > 0).map((b) => b.id),
    duplicateUses: batches.reduce((sum, b, i) => sum + b.batch.uses - totalUses(fresh[i]), 0),
  };
}

// Applies `keys` inside a savepoint. A data error rolls back only the savepoint and bisects the
// keys until the offending ones are alone; those are set aside (quarantined) so one bad row
// cannot hold back every org's usage. The happy path costs two extra round trips per flush.
async function applyIsolating(trx: Knex.Transaction, keys: KeyUsageDelta[], options: ApplyOptions): Promise<Applied> {
  await trx.raw('savepoint usage_apply');
  try {
    const applied = await applyBatch(trx, keys, options);
    await trx.raw('release savepoint usage_apply');
    return { ...applied, statements: applied.statements + 2 };
  } catch (error) {
    if (!isDataError(error)) throw error;
    await trx.raw('rollback to savepoint usage_apply');
    if (keys.length === 1) return { statements: 2, accepted: [], quarantined: keys, events: 0, candidates: 0, grew: [] };
    const middle = Math.ceil(keys.length / 2);
    const first = await applyIsolating(trx, keys.slice(0, middle), options);
    const second = await applyIsolating(trx, keys.slice(middle), options);
    return {
      statements: first.statements + second.statements + 2,
      accepted: [...first.accepted, ...second.accepted],
      quarantined: [...first.quarantined, ...second.quarantined],
      events: first.events + second.events,
      candidates: first.candidates + second.candidates,
      grew: [...first.grew, ...second.grew],
    };
  }
}

// Keys of `keys` holding more addresses than are kept. A plain read: on Citus it runs on every
// shard at once, and most flushes find no key over the cap, so they delete nothing.
const OVER_CAP = (table: string) => `
select t.org_id, t.key_id
  from ${table} t
  join unnest(cast(? as uuid[]), cast(? as uuid[])) as k(org_id, key_id) on t.org_id = k.org_id and t.key_id = k.key_id
 group by t.org_id, t.key_id
having count(*) > ?`;

// How a trim ranks one key's rows (alias t), the first `kept` of which stay; then by `column`.
// readsUsage: `order` also reads the key's api_key_usage row (alias u, left joined only then).
interface KeptFirst {
  order: string;
  readsUsage?: boolean;
}

// The older addresses (or networks, `column`) of one org's keys. Rows are locked in (key_id,
// column) order, as flushes lock them, and rows another transaction holds are skipped (trimmed
// after a later flush), so a prune never waits for a lock and cannot deadlock with a flush or with
// another collector's prune. One org per statement because Citus locks rows (FOR UPDATE) only in
// a statement on one shard; api_key_usage, co-located and named with the same org_id, keeps it
// there. Its row is only read, not locked.
const TRIM_ORG = (table: string, column: string, { order, readsUsage }: KeptFirst) => `
with doomed as materialized (
  select r.key_id, r.${column}
    from ${table} r
    join (select t.key_id, t.${column}, row_number() over (partition by t.key_id order by ${order}, t.${column}) as rank
            from ${table} t${readsUsage ? ` left join ${TABLE.usage} u on u.org_id = :orgId and u.key_id = t.key_id` : ''}
           where t.org_id = :orgId and t.key_id = any(cast(:keyIds as uuid[]))) ranked
      on ranked.key_id = r.key_id and ranked.${column} = r.${column}
   where r.org_id = :orgId and ranked.rank > :kept
   order by r.key_id, r.${column}
     for update of r skip locked)
delete from ${table} r using doomed d where r.org_id = :orgId and r.key_id = d.key_id and r.${column} = d.${column}`;

// Addresses: the most recently seen are kept. Every line of a datagram has its receipt time, so
// its addresses tie on last_seen; among them the key's last address (`lastIp`, the last line's,
// which the key's row shows as its last IP) comes first, then ip. By ip alone a datagram of six
// addresses kept the five that sort first and dropped the last IP from the key's recent ones. The
// API reads them in this order (api/usage/usage.repository.ts), so it shows the rows kept here.
const recentFirst = (lastIp: string): KeptFirst => ({ order: `t.last_seen desc, (t.ip = u.${lastIp}) is not true`, readsUsage: true });
// The key.new_ip history keeps its networks whose events are still deferred first, the earliest
// first used first (collector/deferredNetworks.ts): ranked by last_seen alone, a flood of forged
// networks pushed a real one out before the sweep raised its event, and hid it. A flood of more
// than the bound of them still sends the latest back to "new at their next use". No last network
// is shown next to it, so networks tied on all of these are kept by prefix alone.
const DEFERRED_FIRST: KeptFirst = {
  order: 't.event_due_at is null, case when t.event_due_at is not null then t.first_seen end, t.last_seen desc',
};

// Best effort, outside the flush: keeps the `kept` first rows of each key by `keptFirst`.
async function pruneTable(db: Db, table: string, column: string, keys: readonly KeyRef[], kept: number, keptFirst: KeptFirst) {
  const over = await db.raw(OVER_CAP(table), [keys.map((k) => k.orgId), keys.map((k) => k.keyId), kept]);
  const byOrg = new Map<string, string[]>();
  for (const row of over.rows as Array<{ org_id: string; key_id: string }>) byOrg.set(row.org_id, [...(byOrg.get(row.org_id) ?? []), row.key_id]);
  for (const [orgId, keyIds] of byOrg) await db.raw(TRIM_ORG(table, column, keptFirst), { orgId, keyIds, kept });
}

/** A write's transaction: what it wrote, and the batches it found keys of not yet written. */
export type PartResult = Omit<WriteResult, 'appliedBatches' | 'duplicateBatches'> & { freshIds: string[] };

/** What a write claims inside its transaction: the deltas no earlier transaction applied. */
export interface Claimed {
  fresh: UsageBatch[];
  freshIds: string[];
  duplicateUses: number;
}

/** Commits `trx`; a failure of the COMMIT itself leaves the outcome unknown (CommitInDoubtError). */
export async function commitOrDoubt(trx: Knex.Transaction): Promise<void> {
  try {
    await trx.commit();
    // knex resolves commit() even when the COMMIT query fails; only executionPromise rejects.
    await trx.executionPromise;
  } catch (error) {
    throw new CommitInDoubtError(error);
  }
}

// For the write's transaction only, in one round trip. work_mem: each upsert sorts its whole input
// (key order, for lock order); at 100 k rows the default 4 MB spilled the input and the sort to
// temporary files. lock_timeout: a row held by a transaction left open elsewhere (psql, a stuck
// job) made the write wait for ever, and no key was written; set per transaction, not at connect,
// so connection poolers (which refuse unknown startup parameters) and the collector's other
// statements keep the server's setting. SET LOCAL statements, not set_config(): Citus passes SET
// LOCAL on to the workers' side of the transaction, where the usage rows are, once
// citus.propagate_set_commands says so (on plain PostgreSQL that name is an inert placeholder).
// Citus sends this whole text to each worker connection for each SET it passes on: only SET LOCAL
// statements belong in it.
export const setLocals = (trx: Knex.Transaction, { lockTimeoutMs }: Pick<ApplyOptions, 'lockTimeoutMs'>) =>
  trx.raw(
    [
      `set local citus.propagate_set_commands = 'local'`,
      `set local work_mem = '${FLUSH_WORK_MEM}'`,
      ...(lockTimeoutMs ? [`set local lock_timeout = ${Math.trunc(lockTimeoutMs)}`] : []),
    ].join('; '),
  );

// One transaction: claims its deltas (the batches' (batch, org) pairs in the ledger, or the rows
// of the usage log a fold takes), applies the fresh keys, commits.
// Keys PostgreSQL refused (applyIsolating) are kept with their deltas, in the transaction that
// writes the others, for a requeue once the cause is fixed: dropped, their uses were lost. Not a
// key deleted since (its totals' foreign key refused it): nothing of a deleted key is kept. Nor
// the addresses: the key's row locks went with its savepoint, so a `key erase-ips` could run and
// commit before this, and never see them; kept for a requeue, they would outlive it.
async function setAsideRefused(trx: Knex.Transaction, refused: KeyUsageDelta[]): Promise<{ kept: Set<KeyUsageDelta>; statements: number }> {
  const connection = await connectionOf(trx);
  const kept = await existingKeys(connection, refused);
  const statements = kept.length > 0 ? await copyChunks(connection, SET_ASIDE_COLUMNS, chunksWritten(kept.map(withoutAddresses), writeRefusedLine)) : 0;
  return { kept: new Set(kept), statements: statements + 1 };
}

// The counts, times and hours of a delta, with no address (as an erased usage log row).
function withoutAddresses(k: KeyUsageDelta): KeyUsageDelta {
  const counts = emptyDelta(k.keyId, k.orgId, undefined, undefined, k.hours);
  counts.total = k.total;
  counts.byOutcome = k.byOutcome;
  counts.lastUsedAt = k.lastUsedAt;
  counts.lastFailedAt = k.lastFailedAt;
  counts.lastRevokedUseAt = k.lastRevokedUseAt;
  counts.lastExpiredUseAt = k.lastExpiredUseAt;
  counts.lastPreviousSecretAt = k.lastPreviousSecretAt;
  return counts;
}

const SET_ASIDE_COLUMNS = `${TABLE.usageSetAside} (org_id, key_id, delta, reason)` as const;

export async function writeInOne(db: Db, claim: (trx: Knex.Transaction) => Promise<Claimed>, apply: ApplyOptions): Promise<PartResult> {
  const trx = await db.transaction();
  let result: PartResult;
  try {
    await setLocals(trx, apply);
    const { fresh, freshIds, duplicateUses } = await claim(trx);
    const merged = mergeFresh(fresh);
    const keys = merged.keys;
    const { statements, accepted, quarantined, events, candidates, grew } = await applyIsolating(trx, keys, apply);
    const setAside = quarantined.length > 0 ? await setAsideRefused(trx, quarantined) : { kept: new Set(), statements: 0 };
    const acceptedUses = totalUses(accepted);
    const quarantinedUses = totalUses(quarantined);
    result = {
      freshIds,
      duplicateUses,
      keysWritten: accepted.length,
      keysLogged: 0,
      usesWritten: acceptedUses,
      unknownKeys: keys.length - accepted.length - quarantined.length,
      unknownUses: merged.uses - acceptedUses - quarantinedUses,
      quarantined: quarantined.map((k) => ({ keyId: k.keyId, orgId: k.orgId, uses: k.total, ...(setAside.kept.has(k) ? {} : { deleted: true as const }) })),
      statements: statements + setAside.statements + 2,
      eventsRecorded: events,
      eventCandidates: candidates,
      keysToTrim: grew,
    };
  } catch (error) {
    await trx.rollback().catch(() => undefined);
    throw error;
  }
  await commitOrDoubt(trx);
  return result;
}

/** Below this many keys a write stays one transaction: a split costs each part its own round trips and commit. */
export const SPLIT_MIN_KEYS = 10_000;

/** Each org's group (0 … parts - 1) by its weight, the heaviest org first into the lightest group, so the groups are near equal. */
export function balanceOrgs(weightOf: ReadonlyMap<string, number>, parts: number): Map<string, number> {
  const load: number[] = Array.from({ length: Math.min(parts, weightOf.size) }, () => 0);
  const groupOf = new Map<string, number>();
  for (const [orgId, weight] of [...weightOf].sort((a, b) => b[1] - a[1])) {
    const group = load.indexOf(Math.min(...load));
    groupOf.set(orgId, group);
    load[group] += weight;
  }
  return groupOf;
}

// The batches' keys in `parts` groups of whole orgs (balanceOrgs). Whole orgs because the flush
// ledger claims (batch, org) pairs: each part's transaction carries the proof of its own orgs'
// writes.
function splitByOrg(batches: readonly PendingBatch[], parts: number): PendingBatch[][] {
  const keysOfOrg = new Map<string, number>();
  for (const { batch } of batches) for (const k of batch.keys) keysOfOrg.set(k.orgId, (keysOfOrg.get(k.orgId) ?? 0) + 1);
  const keys = [...keysOfOrg.values()].reduce((sum, n) => sum + n, 0);
  if (parts < 2 || keysOfOrg.size < 2 || keys < SPLIT_MIN_KEYS) return [[...batches]];
  const groupOf = balanceOrgs(keysOfOrg, parts);
  return Array.from({ length: Math.min(parts, keysOfOrg.size) }, (_, group) =>
    batches
      .map(({ id, batch }) => {
        const mine = batch.keys.filter((k) => groupOf.get(k.orgId) === group);
        return { id, batch: { keys: mine, uses: totalUses(mine) } };
      })
      .filter(({ batch }) => batch.keys.length > 0),
  );
}

// Every part's outcome, or the error the flusher must act on: a commit in doubt before any other
// failure, since the batches must then keep their ids. A part that failed beside one that
// committed leaves the batches partly written: they must keep their ids and never absorb newer
// uses (PartlyWrittenError, a CommitInDoubtError), and their retry's claims skip the orgs already
// written.
export async function settleParts(batches: readonly PendingBatch[], parts: Array<Promise<PartResult>>): Promise<WriteResult> {
  const settled = await Promise.allSettled(parts);
  const written = settled.flatMap((outcome) => (outcome.status === 'fulfilled' ? [outcome.value] : []));
  const failures = settled.flatMap((outcome) => (outcome.status === 'rejected' ? [outcome.reason as unknown] : []));
  if (failures.length === 0) return combineParts(batches, written);
  const failure = failures.find((error) => error instanceof CommitInDoubtError) ?? failures[0];
  if (written.length === 0) throw failure;
  throw new PartlyWrittenError(failure, combineParts(batches, written));
}

export function combineParts(batches: readonly PendingBatch[], parts: readonly PartResult[]): WriteResult {
  const fresh = new Set(parts.flatMap((part) => part.freshIds));
  const duplicateBatches = batches.filter((b) => b.batch.keys.length > 0 && !fresh.has(b.id)).length;
  const sum = (
    field: 'duplicateUses' | 'keysWritten' | 'keysLogged' | 'usesWritten' | 'unknownKeys' | 'unknownUses' | 'statements' | 'eventsRecorded' | 'eventCandidates',
  ) => parts.reduce((total, part) => total + part[field], 0);
  return {
    appliedBatches: batches.length - duplicateBatches,
    duplicateBatches,
    duplicateUses: sum('duplicateUses'),
    keysWritten: sum('keysWritten'),
    keysLogged: sum('keysLogged'),
    usesWritten: sum('usesWritten'),
    unknownKeys: sum('unknownKeys'),
    unknownUses: sum('unknownUses'),
    quarantined: parts.flatMap((part) => part.quarantined),
    statements: sum('statements'),
    eventsRecorded: sum('eventsRecorded'),
    eventCandidates: sum('eventCandidates'),
    keysToTrim: parts.flatMap((part) => part.keysToTrim),
  };
}

/**
 * Keeps the claims of batches whose COMMIT is in doubt from expiring while they are retried: the
 * upkeep deletes claims FLUSH_ID_RETENTION old, and a batch retried for longer while PostgreSQL
 * answered (every attempt timing out on a lock a forgotten session held) was applied a second time
 * when one succeeded. A statement of its own, before the write: inside it, it would roll back with
 * it. The claims exist only if the COMMIT landed; then they have a full day again.
 */
export async function keepDoubtedClaims(db: Db, batches: readonly PendingBatch[]): Promise<void> {
  const doubted = batches.filter((batch) => batch.inDoubt);
  if (doubted.length === 0) return;
  // By the primary key (org_id, id): a claim's org is one of its batch's, that of its orgs that do
  // not exist included (CLAIM_PAIRS). By id alone it read a day of claims, on every shard on Citus.
  const orgIds = [...new Set(doubted.flatMap((batch) => batch.batch.keys.map((key) => key.orgId)))];
  await db.raw('update usage_flushes set applied_at = now() where org_id = any(cast(? as uuid[])) and id = any(cast(? as uuid[]))', [
    orgIds,
    doubted.map((batch) => batch.id),
  ]);
}

export interface PgUsageStoreOptions extends ApplyOptions {
  /**
   * Transactions a write of SPLIT_MIN_KEYS keys or more, of several orgs, is split into, each on
   * its own connection at once (COLLECTOR_FLUSH_PARALLELISM): PostgreSQL runs a statement on one
   * core. 1: always one transaction.
   */
  parallelism?: number;
}

// The options are the writes' ApplyOptions too.
export function createPgUsageStore(db: Db, options: PgUsageStoreOptions = {}): UsageStore {
  return {
    async write(batches) {
      const parts = splitByOrg(batches, options.parallelism ?? 1);
      return settleParts(
        batches,
        parts.map((part) => writeInOne(db, (trx) => claimBatches(trx, part), options)),
      );
    },

    async prune(keys) {
      if (keys.length === 0) return;
      for (const { table, lastIp } of STORE_IP_TABLE_LIST) await pruneTable(db, table, 'ip', keys, RECENT_IPS_PER_KEY, recentFirst(lastIp));
      // Beyond the bound the least recently seen network is forgotten: a use from it later is new again.
      if (options.events) await pruneTable(db, TABLE.ipHistory, 'prefix', keys, options.events.ipHistoryPerKey, DEFERRED_FIRST);
    },

    async expireOldRows(retentionDays) {
      for (const table of HOUR_TABLES) await db.raw(`delete from ${table} where hour < now() - make_interval(days => ?)`, [retentionDays]);
      await db.raw(`delete from usage_flushes where applied_at < now() - interval '${FLUSH_ID_RETENTION}'`);
    },
  };
}
