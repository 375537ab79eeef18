import { z } from 'zod';
import type { Db } from '../../shared/db';
import { idString } from '../responses';
import { TABLE } from '../../shared/tables';
import { lockOrgFor } from '../orgs/orgs.repository';
import { RefusedUseError } from '../errors';
import type { Outcome } from '../../shared/usageWire';

// The audit log: one row per change to an org's keys, written in the change's own transaction
// (pass the transaction as `db`), so a change and its entry commit or roll back together.
// Append-only: nothing here updates or deletes, and the table's triggers refuse both.

/** The changes audited (docs/api-keys.md, "Audit log", says what each entry's details hold). */
export const AUDIT_ACTIONS = [
  'key.create',
  'key.rotate',
  'key.revoke',
  'key.restore',
  'key.update',
  'keys.revoke_dormant',
  'key.erase_ips',
  'webhook.create',
  'webhook.delete',
  'webhook.rotate_secret',
] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];

/** Who acted: an API key (by id and display prefix, never its secret), or an operator at the CLI. */
export const auditActorShape = z.discriminatedUnion('type', [
  z.object({ type: z.literal('key'), keyId: idString, displayPrefix: z.string() }),
  z.object({ type: z.literal('cli') }),
]);
export type AuditActor = z.output<typeof auditActorShape>;

/** The acting key as the audit log names it; none: the CLI. */
export const auditActor = (actor: { id: string; displayPrefix: string } | undefined): AuditActor =>
  actor ? { type: 'key', keyId: actor.id, displayPrefix: actor.displayPrefix } : { type: 'cli' };

export interface AuditEntry {
  orgId: string;
  actor: AuditActor;
  action: AuditAction;
  targetKeyId: string | null;
  /** Names, scopes, dates, counts: never a key, a secret or a hash. */
  details: Record<string, unknown>;
  /** The client address of the request; null from the CLI. */
  ip: string | null;
}

export interface AuditRecord extends AuditEntry {
  /** The entry's place in its org's log (1, 2, 3, …): the row's own id counts every org's entries. */
  seq: string;
  occurredAt: Date;
}

interface AuditRow {
  id: number;
  seq: number;
  org_id: string;
  occurred_at: Date;
  actor_type: 'key' | 'cli';
  actor_key_id: string | null;
  actor_display_prefix: string | null;
  action: AuditAction;
  target_key_id: string | null;
  details: Record<string, unknown>;
  ip: string | null;
}

// An entry's number is taken at its insert but seen at its commit: two changes of an org at once
// could commit in the other order, and a reader following the log by the newest number it had seen
// skipped the entry committed late below it, for good. The org's entries are written one
// transaction at a time, so numbers follow commits, and the next is the org's last plus one (a
// rollback gives its numbers back: none is skipped). The lock is taken first in every audited
// change (beginAuditedChange), before any other lock, and held to its end: no deadlock.

/** The key a change acts with, as it was when its request was authorized. */
export interface ActingKey {
  id: string;
  rotatedAt: Date | null;
  /** The limits the change was judged by (the keys it may create, renew, rotate or revoke). */
  expiresAt: Date | null;
}

/**
 * First in the transaction of every audited change: one audited change of an org at a time, and
 * the acting key still as it was authorized. A change is authorized when its request arrives but
 * made once its body is read and its turn has come (minutes for a client that sends its body
 * slowly): a key revoked, rotated or expired meanwhile went on creating keys with its old secret.
 * Revoking or rotating the key is an audited change of the same org, so it either committed
 * before this lock (and is seen here) or waits for this change to commit. `now` is the API's
 * clock, by which the request was authorized: read once the lock is held, as the wait for it may
 * take up to API_STATEMENT_TIMEOUT_MS (read before, a key that expired meanwhile went on).
 */
export async function beginAuditedChange(trx: Db, orgId: string, acting: ActingKey | undefined, now: () => number): Promise<void> {
  await lockOrgFor(trx, 'audit', orgId);
  if (!acting) return;
  const row = await trx(TABLE.apiKeys).where({ org_id: orgId, id: acting.id }).first<ActingKeyRow | undefined>('revoked_at', 'expires_at', 'rotated_at');
  const changed = changedSince(row, acting, now());
  if (changed) {
    throw new RefusedUseError(
      'unauthorized',
      'This API key was revoked, rotated, expired or given an earlier expiry after the request was authorized; nothing was changed',
      changed,
    );
  }
}

type ActingKeyRow = { revoked_at: Date | null; expires_at: Date | null; rotated_at: Date | null };

// The outcome of the acting key's use if the key changed since its request was authorized.
function changedSince(row: ActingKeyRow | undefined, acting: ActingKey, now: number): Outcome | undefined {
  if (!row || row.revoked_at !== null) return 'revoked';
  if (row.expires_at !== null && row.expires_at.getTime() <= now) return 'expired';
  // Rotated: the secret presented is now the previous one, or none (a stale secret: forbidden).
  if (row.rotated_at?.getTime() !== acting.rotatedAt?.getTime()) return 'forbidden';
  // Its life shortened (PATCH expiresAt): the change was judged by the later expiry, and a request
  // held open undid the shortening or created a key outliving it. A longer life judged nothing wrongly.
  if ((row.expires_at?.getTime() ?? Infinity) < (acting.expiresAt?.getTime() ?? Infinity)) return 'forbidden';
  return undefined;
}

export async function recordAudit(db: Db, entry: AuditEntry): Promise<void> {
  await recordAudits(db, entry.orgId, [entry]);
}

// Rows of one insert: 8 columns each, well under PostgreSQL's 65,535 parameters.
const ENTRIES_PER_INSERT = 1000;

/** Entries of one org (a clean-up's, one per revoked key) in a few inserts, not one statement each. */
export async function recordAudits(db: Db, orgId: string, entries: readonly AuditEntry[]): Promise<void> {
  if (entries.length === 0) return;
  await lockOrgFor(db, 'audit', orgId);
  const last = await db<AuditRow>(TABLE.auditLog).where({ org_id: orgId }).max<{ seq: number | null }>('seq as seq').first();
  const next = (last?.seq ?? 0) + 1;
  for (let start = 0; start < entries.length; start += ENTRIES_PER_INSERT) {
    const rows = entries.slice(start, start + ENTRIES_PER_INSERT).map((entry, index) => toRow(entry, next + start + index));
    await db<AuditRow>(TABLE.auditLog).insert(rows);
  }
}

const toRow = (entry: AuditEntry, seq: number) => ({
  seq,
  org_id: entry.orgId,
  actor_type: entry.actor.type,
  actor_key_id: entry.actor.type === 'key' ? entry.actor.keyId : null,
  actor_display_prefix: entry.actor.type === 'key' ? entry.actor.displayPrefix : null,
  action: entry.action,
  target_key_id: entry.targetKeyId,
  details: entry.details,
  ip: entry.ip,
});

const toRecord = (row: AuditRow): AuditRecord => ({
  seq: String(row.seq),
  orgId: row.org_id,
  occurredAt: row.occurred_at,
  actor: row.actor_type === 'key' ? { type: 'key', keyId: row.actor_key_id!, displayPrefix: row.actor_display_prefix! } : { type: 'cli' },
  action: row.action,
  targetKeyId: row.target_key_id,
  details: row.details,
  ip: row.ip,
});

/** Newest first; `beforeSeq` continues after the last entry of the previous page; `actorKeyId`: only that key's entries. */
export async function listAudit(db: Db, orgId: string, page: { limit: number; beforeSeq: string | null; actorKeyId?: string }): Promise<AuditRecord[]> {
  const query = db<AuditRow>(TABLE.auditLog).where({ org_id: orgId }).orderBy('seq', 'desc').limit(page.limit);
  if (page.beforeSeq !== null) query.where('seq', '<', page.beforeSeq);
  // Over audit_log_actor_key_idx (org_id, actor_key_id, seq): one key's entries without the rest of the log.
  if (page.actorKeyId !== undefined) query.where({ actor_key_id: page.actorKeyId });
  return (await query).map(toRecord);
}
