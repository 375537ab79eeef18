import type { Knex } from 'knex';
import type { Db } from '../shared/db';
import { OUTCOMES } from '../shared/usageWire';
import { mergeBatches, type KeyUsageDelta, type UsageBatch } from './aggregator';

export interface PendingBatch {
  /** Recorded in usage_flushes in the same transaction, so a retried batch is applied once. */
  readonly id: string;
  batch: UsageBatch;
}

export interface WriteResult {
  appliedBatches: number;
  duplicateBatches: number;
  /** Uses of the batches found already committed by an earlier, in-doubt attempt. */
  duplicateUses: number;
  keysWritten: number;
  usesWritten: number;
  unknownKeys: number;
  unknownUses: number;
  statements: number;
}

export interface UsageStore {
  write(batches: readonly PendingBatch[]): Promise<WriteResult>;
  /** Best-effort upkeep outside the flush transaction: trims recent IPs and expired rows. */
  prune(keyIds: readonly string[]): Promise<void>;
  expireOldRows(retentionDays: number): Promise<void>;
}

// The write failed at or after COMMIT: PostgreSQL may or may not have applied it.
export class CommitInDoubtError extends Error {
  constructor(readonly cause: unknown) {
    super(`commit outcome unknown: ${(cause as Error)?.message ?? cause}`);
    this.name = 'CommitInDoubtError';
  }
}

export const RECENT_IPS_PER_KEY = 5;
const FLUSH_ID_RETENTION = '1 day';

const byKeyId = (a: KeyUsageDelta, b: KeyUsageDelta) => (a.keyId < b.keyId ? -1 : a.keyId > b.keyId ? 1 : a.orgId < b.orgId ? -1 : 1);

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

const outcomeColumns = OUTCOMES.map((outcome) => `${outcome}_count`);

// Rows enter every statement sorted by key id (then hour / ip), so concurrent collectors lock
// shared rows in the same order and cannot deadlock each other. The join on api_keys keeps
// only keys that exist in the org the datagram named: a forged line creates nothing.
const UPSERT_TOTALS = `
insert into api_key_usage (key_id, org_id, request_count, ${outcomeColumns.join(', ')}, last_used_at, last_used_ip, updated_at)
select u.key_id, u.org_id, u.total, ${outcomeColumns.map((c) => `u.${c}`).join(', ')}, u.last_used_at, u.last_ip, now()
  from unnest(cast(? as uuid[]), cast(? as uuid[]), cast(? as bigint[]), ${outcomeColumns.map(() => 'cast(? as bigint[])').join(', ')},
              cast(? as timestamptz[]), cast(? as text[]))
       as u(key_id, org_id, total, ${outcomeColumns.join(', ')}, last_used_at, last_ip)
  join api_keys k on k.id = u.key_id and k.org_id = u.org_id
 order by u.key_id
on conflict (key_id) do update set
  request_count = api_key_usage.request_count + excluded.request_count,
  ${outcomeColumns.map((c) => `${c} = api_key_usage.${c} + excluded.${c}`).join(',\n  ')},
  last_used_ip = case when excluded.last_used_at >= api_key_usage.last_used_at then excluded.last_used_ip else api_key_usage.last_used_ip end,
  last_used_at = greatest(api_key_usage.last_used_at, excluded.last_used_at),
  updated_at = now()
returning key_id, org_id`;

const UPSERT_HOURS = `
insert into api_key_usage_hourly (key_id, hour, request_count)
select h.key_id, h.hour, h.request_count
  from unnest(cast(? as uuid[]), cast(? as uuid[]), cast(? as timestamptz[]), cast(? as bigint[])) as h(key_id, org_id, hour, request_count)
  join api_keys k on k.id = h.key_id and k.org_id = h.org_id
 order by h.key_id, h.hour
on conflict (key_id, hour) do update set request_count = api_key_usage_hourly.request_count + excluded.request_count`;

const UPSERT_IPS = `
insert into api_key_recent_ips (key_id, ip, first_seen, last_seen, request_count)
select r.key_id, r.ip, r.first_seen, r.last_seen, r.request_count
  from unnest(cast(? as uuid[]), cast(? as uuid[]), cast(? as text[]), cast(? as timestamptz[]), cast(? as timestamptz[]), cast(? as bigint[]))
       as r(key_id, org_id, ip, first_seen, last_seen, request_count)
  join api_keys k on k.id = r.key_id and k.org_id = r.org_id
 order by r.key_id, r.ip
on conflict (key_id, ip) do update set
  first_seen = least(api_key_recent_ips.first_seen, excluded.first_seen),
  last_seen = greatest(api_key_recent_ips.last_seen, excluded.last_seen),
  request_count = api_key_recent_ips.request_count + excluded.request_count`;

async function applyBatch(trx: Knex.Transaction, keys: KeyUsageDelta[], chunkSize: number) {
  let statements = 0;
  const written = new Set<string>();
  for (const chunk of chunks(keys, chunkSize)) {
    const result = await trx.raw(UPSERT_TOTALS, [
      chunk.map((k) => k.keyId),
      chunk.map((k) => k.orgId),
      chunk.map((k) => k.total),
      ...OUTCOMES.map((outcome) => chunk.map((k) => k.byOutcome[outcome])),
      chunk.map((k) => new Date(k.lastUsedAt)),
      chunk.map((k) => k.lastIp),
    ]);
    statements += 1;
    for (const row of result.rows as { key_id: string; org_id: string }[]) written.add(`${row.org_id}/${row.key_id}`);
  }
  const accepted = keys.filter((k) => written.has(`${k.orgId}/${k.keyId}`));

  const hours = accepted.flatMap((k) => [...k.hours].sort(([a], [b]) => a - b).map(([hour, count]) => ({ k, hour, count })));
  for (const chunk of chunks(hours, chunkSize)) {
    await trx.raw(UPSERT_HOURS, [
      chunk.map((h) => h.k.keyId),
      chunk.map((h) => h.k.orgId),
      chunk.map((h) => new Date(h.hour)),
      chunk.map((h) => h.count),
    ]);
    statements += 1;
  }

  const ips = accepted.flatMap((k) => [...k.ips].sort(([a], [b]) => (a < b ? -1 : 1)).map(([ip, stat]) => ({ k, ip, stat })));
  for (const chunk of chunks(ips, chunkSize)) {
    await trx.raw(UPSERT_IPS, [
      chunk.map((r) => r.k.keyId),
      chunk.map((r) => r.k.orgId),
      chunk.map((r) => r.ip),
      chunk.map((r) => new Date(r.stat.firstSeen)),
      chunk.map((r) => new Date(r.stat.lastSeen)),
      chunk.map((r) => r.stat.count),
    ]);
    statements += 1;
  }
  return { statements, accepted };
}

export function createPgUsageStore(db: Db, options: { chunkSize?: number } = {}): UsageStore {
  const chunkSize = options.chunkSize ?? 5000;
  return {
    async write(batches) {
      const trx = await db.transaction();
      let result: WriteResult;
      try {
        const inserted = await trx.raw('insert into usage_flushes (id) select unnest(cast(? as uuid[])) on conflict do nothing returning id', [
          batches.map((b) => b.id),
        ]);
        const fresh = new Set((inserted.rows as { id: string }[]).map((row) => row.id));
        const toApply = batches.filter((b) => fresh.has(b.id));
        const merged = mergeBatches(toApply.map((b) => b.batch));
        const keys = merged.keys.sort(byKeyId);
        const { statements, accepted } = await applyBatch(trx, keys, chunkSize);
        const acceptedUses = accepted.reduce((sum, k) => sum + k.total, 0);
        result = {
          appliedBatches: toApply.length,
          duplicateBatches: batches.length - toApply.length,
          duplicateUses: batches.filter((b) => !fresh.has(b.id)).reduce((sum, b) => sum + b.batch.uses, 0),
          keysWritten: accepted.length,
          usesWritten: acceptedUses,
          unknownKeys: keys.length - accepted.length,
          unknownUses: merged.uses - acceptedUses,
          statements: statements + 1,
        };
      } catch (error) {
        await trx.rollback().catch(() => undefined);
        throw error;
      }
      try {
        await trx.commit();
        // knex resolves commit() even when the COMMIT query fails; only executionPromise rejects.
        await trx.executionPromise;
      } catch (error) {
        throw new CommitInDoubtError(error);
      }
      return result;
    },

    async prune(keyIds) {
      if (keyIds.length === 0) return;
      // Best effort, outside the flush: rows are locked in (key_id, ip) order, as flushes lock them,
      // and rows another transaction holds are skipped (trimmed after a later flush), so a prune
      // never waits for a lock and cannot deadlock with a flush or with another collector's prune.
      await db.raw(
        `with doomed as materialized (
           select r.key_id, r.ip
             from api_key_recent_ips r
             join (select key_id, ip, row_number() over (partition by key_id order by last_seen desc, ip) as rank
                     from api_key_recent_ips where key_id = any(cast(? as uuid[]))) ranked
               on ranked.key_id = r.key_id and ranked.ip = r.ip
            where ranked.rank > ?
            order by r.key_id, r.ip
              for update of r skip locked)
         delete from api_key_recent_ips r using doomed d where r.key_id = d.key_id and r.ip = d.ip`,
        [[...keyIds], RECENT_IPS_PER_KEY],
      );
    },

    async expireOldRows(retentionDays) {
      await db.raw(`delete from api_key_usage_hourly where hour < now() - make_interval(days => ?)`, [retentionDays]);
      await db.raw(`delete from usage_flushes where applied_at < now() - interval '${FLUSH_ID_RETENTION}'`);
    },
  };
}
