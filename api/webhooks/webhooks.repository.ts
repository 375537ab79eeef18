import type { Db } from '../../shared/db';
import { TABLE } from '../../shared/tables';
import { countUpTo } from '../countUpTo';

export interface WebhookRecord {
  id: string;
  orgId: string;
  url: string;
  eventTypes: string[];
  createdAt: Date;
  /** The key that created it; null when not known (made before creators were recorded, with no audit entry naming one). */
  createdByKeyId: string | null;
  /** While a secret rotation's grace period is open: when the previous secret stops signing. Null otherwise. */
  previousSecretExpiresAt: Date | null;
}

/** A webhook's newest delivery (of those, the last settled): what a list shows to say whether its receiver is healthy. */
export interface LastDelivery {
  status: DeliveryStatus;
  eventType: string;
  /** When it completed (succeeded or gave up), or was enqueued while still pending. */
  at: Date;
}

interface WebhookRow {
  id: string;
  org_id: string;
  url: string;
  event_types: string[];
  created_at: Date;
  created_by_key_id: string | null;
  previous_secret_expires_at: Date | null;
}

// The sealed secrets are never selected here: the API writes them and only the worker reads them.
const PLAIN_COLUMNS = ['id', 'org_id', 'url', 'event_types', 'created_at', 'created_by_key_id'];
/** As written: what an insert or update returns. */
const WEBHOOK_COLUMNS = [...PLAIN_COLUMNS, 'previous_secret_expires_at'];

// A grace period that has ended reads as none, on the database's clock: the one the worker signs
// by (collector/webhookStore.ts), so what the API shows and refuses is what the worker does. At
// `asOf` when given (databaseClock), else at the transaction's start (now()).
const webhookColumns = (db: Db, prefix = '', asOf?: Date) => [
  ...PLAIN_COLUMNS.map((column) => `${prefix}${column}`),
  db.raw(`case when ${prefix}previous_secret_expires_at > ? then ${prefix}previous_secret_expires_at end as previous_secret_expires_at`, [
    asOf ?? db.raw('now()'),
  ]),
];

/**
 * The database's clock as it reads now: now() is the transaction's start, before a wait for the
 * org's lock (up to API_STATEMENT_TIMEOUT_MS), and a change that waited judged and stamped its
 * grace period by it (a 5 s grace stored ending 3 s before the rotation answered). Read in a
 * select of its own and passed on: Citus refuses such functions beside column references in an
 * UPDATE and its RETURNING.
 */
export async function databaseClock(db: Db): Promise<Date> {
  return (await db.raw<{ rows: Array<{ at: Date }> }>('select clock_timestamp() as at')).rows[0].at;
}

const toWebhook = (row: WebhookRow): WebhookRecord => ({
  id: row.id,
  orgId: row.org_id,
  url: row.url,
  eventTypes: row.event_types,
  createdAt: row.created_at,
  createdByKeyId: row.created_by_key_id,
  previousSecretExpiresAt: row.previous_secret_expires_at,
});

export async function insertWebhook(
  db: Db,
  webhook: { id: string; orgId: string; url: string; eventTypes: string[]; secretBox: Buffer; createdByKeyId: string | null },
): Promise<WebhookRecord> {
  const [row] = await db(TABLE.webhooks)
    .insert({
      id: webhook.id,
      org_id: webhook.orgId,
      url: webhook.url,
      event_types: webhook.eventTypes,
      secret_box: webhook.secretBox,
      created_by_key_id: webhook.createdByKeyId,
    })
    .returning<WebhookRow[]>(WEBHOOK_COLUMNS);
  return toWebhook(row);
}

/** Its grace period judged at `asOf` when given, else at the transaction's start. */
export async function findWebhookInOrg(db: Db, orgId: string, id: string, asOf?: Date): Promise<WebhookRecord | undefined> {
  const row: WebhookRow | undefined = await db(TABLE.webhooks)
    .select(...webhookColumns(db, '', asOf))
    .where({ id, org_id: orgId })
    .first();
  return row && toWebhook(row);
}

/**
 * A new sealed secret; the one it replaces keeps signing for `graceSeconds` from `asOf`
 * (databaseClock; 0: not kept at all). The sealed box is moved as it is, never opened: the API
 * does not read a secret back. Undefined when the webhook is not the org's.
 */
export async function replaceWebhookSecret(
  db: Db,
  orgId: string,
  id: string,
  change: { secretBox: Buffer; graceSeconds: number; asOf: Date },
): Promise<WebhookRecord | undefined> {
  const keepsOld = change.graceSeconds > 0;
  const ends = keepsOld ? new Date(change.asOf.getTime() + change.graceSeconds * 1000) : null;
  const [row] = await db(TABLE.webhooks)
    .where({ id, org_id: orgId })
    .update({
      // The right-hand secret_box is the row's value before this update.
      previous_secret_box: keepsOld ? db.raw('secret_box') : null,
      previous_secret_expires_at: ends,
      secret_box: change.secretBox,
    })
    .returning<WebhookRow[]>(WEBHOOK_COLUMNS);
  return row && toWebhook(row);
}

export async function listWebhooksInOrg(db: Db, orgId: string, page: { limit: number; offset: number; createdByKeyId?: string }) {
  // The org's webhooks, or those one key created (a leaked key's clean-up).
  const matching = (prefix: string) => ({
    [`${prefix}org_id`]: orgId,
    ...(page.createdByKeyId === undefined ? {} : { [`${prefix}created_by_key_id`]: page.createdByKeyId }),
  });
  const [rows, [{ count }]] = await Promise.all([
    db(`${TABLE.webhooks} as w`)
      .select<Array<WebhookRow & { last_status: DeliveryStatus | null; last_event_type: string | null; last_at: Date | null }>>(
        ...webhookColumns(db, 'w.'),
        'd.status as last_status',
        'd.event_type as last_event_type',
        db.raw('coalesce(d.completed_at, d.created_at) as last_at'),
      )
      // Among the newest deliveries, the one that settled last: one flush writes all its deliveries
      // at one created_at, and with the tie left to the random id an earlier success could hide a
      // later give-up. Newest first still, so the (webhook_id, created_at, id) index finds it
      // without sorting every delivery a webhook has kept.
      .joinRaw(
        `left join lateral (select status, event_type, completed_at, created_at from ${TABLE.webhookDeliveries}
            where org_id = w.org_id and webhook_id = w.id
            order by created_at desc, coalesce(completed_at, created_at) desc, id desc limit 1) d on true`,
      )
      .where(matching('w.'))
      .orderBy([{ column: 'w.created_at' }, { column: 'w.id' }])
      .limit(page.limit)
      .offset(page.offset),
    db(TABLE.webhooks).where(matching('')).count<{ count: number }[]>({ count: '*' }),
  ]);
  return {
    webhooks: rows.map((row) => ({
      ...toWebhook(row),
      lastDelivery: row.last_status && row.last_event_type && row.last_at ? { status: row.last_status, eventType: row.last_event_type, at: row.last_at } : null,
    })),
    total: Number(count),
  };
}

/** Its deliveries and their attempts go with it (ON DELETE CASCADE): all of them, in one statement holding its row (see deleteSomeDeliveries). */
export async function deleteWebhookInOrg(db: Db, orgId: string, id: string): Promise<boolean> {
  return (await db(TABLE.webhooks).where({ id, org_id: orgId }).delete()) > 0;
}

/** How many deliveries deleteSomeDeliveries takes at most: each brings its attempts (up to WEBHOOK_MAX_ATTEMPTS). */
export const DELIVERIES_PER_DELETE = 2_000;

/**
 * Up to `limit` of a webhook's deliveries, their attempts with them (ON DELETE CASCADE); returns
 * how many it found, all gone afterwards, whoever deleted them: a chunk whose rows the retention's
 * delete took first deletes none, and counted so it ended the chunks with rows left. The webhook's row is not touched, so a flush enqueueing a delivery to it does not wait.
 * The ids first, then the rows by primary key: as one statement (`id in (select … limit)`) the
 * plan was a semi join that ran the subquery once per delivery of the webhook (5 s for 4,500,
 * before ANALYZE), or read the whole table for each chunk (after). Both on the org's shard on Citus.
 */
export async function deleteSomeDeliveries(db: Db, orgId: string, webhookId: string, limit: number): Promise<number> {
  const ids = await db(TABLE.webhookDeliveries).where({ org_id: orgId, webhook_id: webhookId }).limit(limit).pluck('id');
  if (ids.length > 0) await db(TABLE.webhookDeliveries).where({ org_id: orgId }).whereRaw('id = any(cast(? as uuid[]))', [ids]).delete();
  return ids.length;
}

export async function countWebhooksInOrg(db: Db, orgId: string): Promise<number> {
  const [row] = await db(TABLE.webhooks).where({ org_id: orgId }).count<{ n: string }[]>({ n: '*' });
  return Number(row.n);
}

/** Pending deliveries of one type to a webhook, counted up to `upTo` (the caller's cap): no more rows are read. */
export async function countPendingDeliveries(db: Db, orgId: string, webhookId: string, eventType: string, upTo: number): Promise<number> {
  return countUpTo(db, db(TABLE.webhookDeliveries).where({ org_id: orgId, webhook_id: webhookId, event_type: eventType, status: 'pending' }), upTo);
}

export async function insertDelivery(
  db: Db,
  delivery: { webhookId: string; orgId: string; eventId: string; eventType: string; payload: Record<string, unknown> },
): Promise<string> {
  const [row] = await db(TABLE.webhookDeliveries)
    .insert({
      webhook_id: delivery.webhookId,
      org_id: delivery.orgId,
      event_id: delivery.eventId,
      event_type: delivery.eventType,
      payload: delivery.payload,
    })
    .returning('id');
  return row.id;
}

export const DELIVERY_STATUSES = ['pending', 'succeeded', 'failed'] as const;
export type DeliveryStatus = (typeof DELIVERY_STATUSES)[number];

export interface AttemptRecord {
  attempt: number;
  startedAt: Date;
  durationMs: number;
  statusCode: number | null;
  error: string | null;
  succeeded: boolean;
}

export interface DeliveryRecord {
  id: string;
  eventId: string;
  eventType: string;
  status: DeliveryStatus;
  attemptCount: number;
  nextAttemptAt: Date;
  createdAt: Date;
  completedAt: Date | null;
  attempts: AttemptRecord[];
  /** Where the next page starts if this delivery ends one. */
  position: DeliveryPosition;
}

/** Where a page of deliveries starts: strictly after this one, newest first. */
export interface DeliveryPosition {
  /** Its created_at in UTC to the microsecond (`…T10:00:00.123456Z`): a Date would cut it to the millisecond. */
  createdAt: string;
  id: string;
}

interface DeliveryRow {
  id: string;
  event_id: string;
  event_type: string;
  status: DeliveryStatus;
  attempts: number;
  next_attempt_at: Date;
  created_at: Date;
  completed_at: Date | null;
  position: string;
}

// One query for the page, one for the attempts of every delivery on it (never one per delivery).
// The org is named too, as in every org-scoped query: on Citus that routes the query to the org's
// shard instead of every shard, and a row filed under another org is never read.
// Keyset, not offset: the worker settles deliveries between a client's pages, and an offset over
// `?status=pending` then skipped as many as had left the set.
export async function listDeliveries(db: Db, orgId: string, webhookId: string, query: { limit: number; status?: DeliveryStatus; after?: DeliveryPosition }) {
  const rows: DeliveryRow[] = await db(TABLE.webhookDeliveries)
    .select('*', db.raw(`to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as position`))
    .where({ org_id: orgId, webhook_id: webhookId, ...(query.status ? { status: query.status } : {}) })
    .modify((q) => {
      if (query.after) q.whereRaw('(created_at, id) < (cast(? as timestamptz), ?)', [query.after.createdAt, query.after.id]);
    })
    .orderBy([
      { column: 'created_at', order: 'desc' },
      { column: 'id', order: 'desc' },
    ])
    .limit(query.limit);
  const attempts = await db(TABLE.webhookDeliveryAttempts)
    .where({ org_id: orgId })
    .whereIn(
      'delivery_id',
      rows.map((row) => row.id),
    )
    .orderBy([
      { column: 'attempt', order: 'desc' },
      { column: 'id', order: 'desc' },
    ]);
  return rows.map((row): DeliveryRecord => ({
    id: row.id,
    eventId: row.event_id,
    eventType: row.event_type,
    status: row.status,
    attemptCount: row.attempts,
    nextAttemptAt: row.next_attempt_at,
    createdAt: row.created_at,
    completedAt: row.completed_at,
    attempts: attempts
      .filter((attempt) => attempt.delivery_id === row.id)
      .map((attempt) => ({
        attempt: attempt.attempt,
        startedAt: attempt.started_at,
        durationMs: attempt.duration_ms,
        statusCode: attempt.status_code,
        error: attempt.error,
        succeeded: attempt.succeeded,
      })),
    position: { createdAt: row.position, id: row.id },
  }));
}
