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
}

interface KeyEventRow {
  id: string;
  org_id: string;
  key_id: string;
  type: EventType;
  occurred_at: Date;
  details: Record<string, unknown>;
}

const toRecord = (row: KeyEventRow): KeyEventRecord => ({
  id: row.id,
  orgId: row.org_id,
  keyId: row.key_id,
  type: row.type,
  occurredAt: row.occurred_at,
  details: row.details,
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

// Newest first over (occurred_at, id), which key_events_org_time_idx serves for one org.
export async function listEvents(db: Db, query: EventQuery): Promise<KeyEventRecord[]> {
  const rows = await db<KeyEventRow>(TABLE.keyEvents)
    .select('id', 'org_id', 'key_id', 'type', 'occurred_at', 'details')
    .where({ org_id: query.orgId })
    .modify((q) => {
      if (query.type) q.where({ type: query.type });
      if (query.keyId) q.where({ key_id: query.keyId });
      if (query.since) q.where('occurred_at', '>=', query.since);
      if (query.after) q.whereRaw('(occurred_at, id) < (?, ?)', [query.after.occurredAt, query.after.id]);
    })
    .orderBy([
      { column: 'occurred_at', order: 'desc' },
      { column: 'id', order: 'desc' },
    ])
    .limit(query.limit);
  return rows.map(toRecord);
}
