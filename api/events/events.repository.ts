import type { Db } from '../../shared/db';
import type { EventType } from '../../shared/keyEvents';
import { TABLE } from '../../shared/tables';

export interface KeyEventRecord {
  id: string;
  orgId: string;
  keyId: string;
  type: EventType;
  occurredAt: Date;
  details: Record<string, unknown>;
  /** The event's key as it is now (null: deleted since; an event outlives its key only by SQL by hand). */
  key: { name: string; owner: string | null } | null;
}

interface KeyEventRow {
  id: string;
  org_id: string;
  key_id: string;
  type: EventType;
  occurred_at: Date;
  details: Record<string, unknown>;
  key_found: boolean;
  key_name: string | null;
  key_owner: string | null;
}

const toRecord = (row: KeyEventRow): KeyEventRecord => ({
  id: row.id,
  orgId: row.org_id,
  keyId: row.key_id,
  type: row.type,
  occurredAt: row.occurred_at,
  details: row.details,
  key: row.key_found ? { name: row.key_name!, owner: row.key_owner } : null,
});

export interface EventQuery {
  orgId: string;
  type?: EventType;
  keyId?: string;
  since?: Date;
  /** The last event of the previous page: this page starts strictly after it, newest first. */
  after?: { occurredAt: Date; id: string };
  limit: number;
}

// Newest first over (occurred_at, id), which key_events_org_time_idx serves for one org. The
// key's name and owner say whom an event concerns (the list showed 8 characters of its id); one
// primary-key probe of api_keys per listed event, a reference table on Citus.
export async function listEvents(db: Db, query: EventQuery): Promise<KeyEventRecord[]> {
  const rows = await db<KeyEventRow>({ e: TABLE.keyEvents })
    .leftJoin({ k: TABLE.apiKeys }, (join) => join.on('k.org_id', 'e.org_id').andOn('k.id', 'e.key_id'))
    .select('e.id', 'e.org_id', 'e.key_id', 'e.type', 'e.occurred_at', 'e.details', { key_name: 'k.name', key_owner: 'k.owner' })
    .select(db.raw('k.id is not null as key_found'))
    .where({ 'e.org_id': query.orgId })
    .modify((q) => {
      if (query.type) q.where({ 'e.type': query.type });
      if (query.keyId) q.where({ 'e.key_id': query.keyId });
      if (query.since) q.where('e.occurred_at', '>=', query.since);
      if (query.after) q.whereRaw('(e.occurred_at, e.id) < (?, ?)', [query.after.occurredAt, query.after.id]);
    })
    .orderBy([
      { column: 'e.occurred_at', order: 'desc' },
      { column: 'e.id', order: 'desc' },
    ])
    .limit(query.limit);
  return rows.map(toRecord);
}
