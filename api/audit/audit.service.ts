import { z } from 'zod';
import type { Db } from '../../shared/db';
import { cursorPage, details, idString, isoTime, listOf } from '../responses';
import { originOnly, type UrlView } from '../webhooks/webhooks.service';
import { requireKeyInOrg } from '../keys/requireKeyInOrg';
import { AUDIT_ACTIONS, auditActorShape, listAudit, type AuditRecord } from './audit.repository';

const MAX_BIGINT = 9_223_372_036_854_775_807n;

// The cursor is opaque to clients (base64url of `seq:` and the last entry's number), so the paging
// scheme can change without breaking them. The prefix came with the per-org numbers: a cursor of
// the global ids before them is refused (400), not read as a number it is not.
const CURSOR_PREFIX = 'seq:';
export const encodeCursor = (seq: string) => Buffer.from(CURSOR_PREFIX + seq, 'utf8').toString('base64url');

/** The entry number a cursor stands for, or undefined if it is not one this service made. */
export function decodeCursor(cursor: string): string | undefined {
  const text = Buffer.from(cursor, 'base64url').toString('utf8');
  const seq = text.startsWith(CURSOR_PREFIX) ? text.slice(CURSOR_PREFIX.length) : '';
  // Within bigint: a larger number would make PostgreSQL fail the comparison (a 500, not a 400).
  return /^[1-9]\d{0,18}$/.test(seq) && BigInt(seq) <= MAX_BIGINT && encodeCursor(seq) === cursor ? seq : undefined;
}

const auditEntry = z
  .object({
    id: z.string().regex(/^\d+$/).meta({ description: "The entry's number in its org's log: 1, 2, 3, … in commit order, without gaps" }),
    occurredAt: isoTime,
    actor: auditActorShape,
    action: z.enum(AUDIT_ACTIONS),
    targetKeyId: idString.nullable(),
    details: details.meta({ description: 'What docs/api-keys.md ("Audit log") lists for the action' }),
    ip: z.string().nullable(),
  })
  .meta({ id: 'AuditEntry' });
export const auditList = listOf(auditEntry, cursorPage).meta({ id: 'AuditLog' });

// A webhook entry's URL is the webhook list's: a key that may read the log but not change the
// webhook would otherwise find here the token the list keeps from it.
function detailsFor(entry: AuditRecord, urlView: UrlView): Record<string, unknown> {
  const { details } = entry;
  const hasUrl = (entry.action === 'webhook.create' || entry.action === 'webhook.delete') && typeof details.url === 'string';
  return urlView === 'origin' && hasUrl ? { ...details, url: originOnly(details.url as string) } : details;
}

const toView = (entry: AuditRecord, urlView: UrlView): z.output<typeof auditEntry> => ({
  id: entry.seq,
  occurredAt: entry.occurredAt.toISOString(),
  actor: entry.actor,
  action: entry.action,
  targetKeyId: entry.targetKeyId,
  details: detailsFor(entry, urlView),
  ip: entry.ip,
});

export type AuditService = ReturnType<typeof createAuditService>;

export function createAuditService(deps: { db: Db }) {
  return {
    /** Newest first; webhook URLs as `urlView` says. One row more than asked tells whether there is a next page. */
    async list(orgId: string, page: { limit: number; beforeSeq: string | null; actorKeyId?: string }, urlView: UrlView): Promise<z.output<typeof auditList>> {
      // A key of another org (or none) is not_found, not an empty page, as for webhooks and keys.
      if (page.actorKeyId) await requireKeyInOrg(deps.db, orgId, page.actorKeyId);
      const rows = await listAudit(deps.db, orgId, { ...page, limit: page.limit + 1 });
      const data = rows.slice(0, page.limit);
      const nextCursor = rows.length > page.limit ? encodeCursor(data[data.length - 1].seq) : null;
      return { data: data.map((entry) => toView(entry, urlView)), page: { limit: page.limit, nextCursor } };
    },
  };
}
