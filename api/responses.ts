import { z } from 'zod';

// Shapes several response bodies share. Response schemas describe what the API sends; they are
// not parsed at run time (tests validate real responses against them, test/openapi.test.ts), and
// the TypeScript types of the bodies derive from them so the two cannot drift apart.
// `.meta({ id })` names a shape in the OpenAPI document's components (api/openapi/document.ts).

/** A time as the API writes it: ISO 8601 in UTC (Date#toISOString). */
export const isoTime = z.iso.datetime();

/** Ids are UUIDs; request parameters take them in any case, responses give them in lower case. */
export const idString = z.guid();

// Counters are bigints in PostgreSQL: beyond 2^53 they are sent as a decimal string, not rounded.
export const count = z
  .union([z.number().int().min(0), z.string().regex(/^\d+$/)])
  .meta({ id: 'Count', description: 'An exact count: a JSON number up to 2^53 - 1, a decimal string beyond' });

export const offsetPage = z.object({ limit: z.number().int(), offset: z.number().int(), total: z.number().int() });

/** Newest first; nextCursor (null on the last page) is passed back as `cursor` for the next page. */
export const cursorPage = z.object({ limit: z.number().int(), nextCursor: z.string().nullable() });

export const listOf = <T extends z.ZodType, P extends typeof offsetPage | typeof cursorPage>(item: T, page: P) => z.object({ data: z.array(item), page });

/** Free-form details (of an event, an audit entry): names, dates, counts, never key material. */
export const details = z.record(z.string(), z.unknown());
