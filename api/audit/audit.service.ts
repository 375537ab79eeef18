import { z } from 'zod';
import type { Db } from '../../shared/db';
import { cursorPage, details, idString, isoTime, listOf } from '../responses';
import { AUDIT_ACTIONS, auditActorShape, listAudit, type AuditRecord } from './audit.repository';

const MAX_BIGINT = 9_223_372_036_854_775_807n;

// The cursor is opaque to clients (base64url of the last entry's id), so the paging scheme can
// change without breaking them.
export const encodeCursor = (id: string) => Buffer.from(id, 'utf8').toString('base64url');

/** The id a cursor stands for, or undefined if it is not one this service made. */
export function decodeCursor(cursor: string): string | undefined {
  const id = Buffer.from(cursor, 'base64url').toString('utf8');
  // Within bigint: a larger id would make PostgreSQL fail the comparison (a 500, not a 400).
  return /^[1-9]\d{0,18}$/.test(id) && BigInt(id) <= MAX_BIGINT && encodeCursor(id) === cursor ? id : undefined;
}

const auditEntry = z
  .object({
    id: z.string().regex(/^\d+$/),
    occurredAt: isoTime,
    actor: auditActorShape,
    action: z.enum(AUDIT_ACTIONS),
    targetKeyId: idString.nullable(),
    details: details.meta({ description: 'What docs/api-keys.md ("Audit log") lists for the action' }),
    ip: z.string().nullable(),
  })
  .meta({ id: 'AuditEntry' });
export const auditList = listOf(auditEntry, cursorPage).meta({ id: 'AuditLog' });

const toView = (entry: AuditRecord): z.output<typeof auditEntry> => ({
  id: entry.id,
  occurredAt: entry.occurredAt.toISOString(),
  actor: entry.actor,
  action: entry.action,
  targetKeyId: entry.targetKeyId,
  details: entry.details,
  ip: entry.ip,
});

export type AuditService = ReturnType<typeof createAuditService>;

export function createAuditService(deps: { db: Db }) {
  return {
    /** Newest first. One row more than asked tells whether there is a next page. */
    async list(orgId: string, page: { limit: number; beforeId: string | null }): Promise<z.output<typeof auditList>> {
      const rows = await listAudit(deps.db, orgId, { limit: page.limit + 1, beforeId: page.beforeId });
      const data = rows.slice(0, page.limit);
      const nextCursor = rows.length > page.limit ? encodeCursor(data[data.length - 1].id) : null;
      return { data: data.map(toView), page: { limit: page.limit, nextCursor } };
    },
  };
}
