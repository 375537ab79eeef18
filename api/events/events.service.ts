import { z } from 'zod';
import type { Db } from '../../shared/db';
import { EVENT_TYPES, type EventType } from '../../shared/keyEvents';
import { InvalidInputError } from '../errors';
import { cursorPage, details, idString, isoTime, listOf } from '../responses';
import { requireKeyInOrg } from '../keys/requireKeyInOrg';
import { listEvents, type KeyEventRecord } from './events.repository';

// The cursor is opaque to clients: base64url of the last event's time (milliseconds, as every
// event time is stored) and id.
export function encodeCursor(event: Pick<KeyEventRecord, 'occurredAt' | 'id'>): string {
  return Buffer.from(`${event.occurredAt.getTime()}.${event.id}`).toString('base64url');
}

const CURSOR = /^(\d{1,15})\.([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;

export function decodeCursor(cursor: string): { occurredAt: Date; id: string } {
  const match = CURSOR.exec(Buffer.from(cursor, 'base64url').toString());
  if (!match) throw new InvalidInputError('cursor: is not a cursor this endpoint returned');
  return { occurredAt: new Date(Number(match[1])), id: match[2] };
}

const keyEvent = z
  .object({
    id: idString,
    keyId: idString,
    key: z
      .object({ name: z.string(), owner: z.string().nullable() })
      .nullable()
      .meta({ description: "The key's name and owner as they are now, whom the event concerns; null if the key was deleted" }),
    type: z.enum(EVENT_TYPES),
    occurredAt: isoTime,
    details: details.meta({ description: 'What docs/events.md lists for the type' }),
  })
  .meta({ id: 'KeyEvent' });
export const eventList = listOf(keyEvent, cursorPage).meta({ id: 'KeyEventList' });

const toView = (event: KeyEventRecord): z.output<typeof keyEvent> => ({
  id: event.id,
  keyId: event.keyId,
  key: event.key,
  type: event.type,
  occurredAt: event.occurredAt.toISOString(),
  details: event.details,
});

export type EventsService = ReturnType<typeof createEventsService>;

export function createEventsService(deps: { db: Db }) {
  return {
    async list(orgId: string, query: { type?: EventType; keyId?: string; since?: Date; cursor?: string; limit: number }): Promise<z.output<typeof eventList>> {
      const after = query.cursor === undefined ? undefined : decodeCursor(query.cursor);
      // A key of another org (or none) is not_found, not an empty page.
      if (query.keyId) await requireKeyInOrg(deps.db, orgId, query.keyId);
      // One more than asked tells whether a next page exists without a count.
      const events = await listEvents(deps.db, { orgId, type: query.type, keyId: query.keyId, since: query.since, after, limit: query.limit + 1 });
      const page = events.slice(0, query.limit);
      const last = page[page.length - 1];
      return { data: page.map(toView), page: { limit: query.limit, nextCursor: events.length > query.limit ? encodeCursor(last) : null } };
    },
  };
}
