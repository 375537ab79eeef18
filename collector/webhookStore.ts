import type { Db } from '../shared/db';
import { TABLE } from '../shared/tables';

// The outbox side of webhooks: claim due deliveries, record each attempt's outcome.

export interface ClaimedDelivery {
  id: string;
  webhookId: string;
  eventId: string;
  eventType: string;
  payload: Record<string, unknown>;
  /** This attempt's number, counted at claim time so a crash mid-send still uses one up. */
  attempt: number;
  url: string;
  secretBox: Buffer;
}

// `skip locked` lets several collectors claim side by side without waiting for or taking each
// other's rows. Claiming moves next_attempt_at to the end of a lease instead of holding a
// transaction open across the HTTP request: if this process dies mid-send, the row becomes due
// again when the lease ends and another worker delivers it (at least once).
const CLAIM = `
with due as (
  select id from ${TABLE.webhookDeliveries}
   where status = 'pending' and next_attempt_at <= ?
   order by next_attempt_at
   limit ?
   for update skip locked
)
update ${TABLE.webhookDeliveries} d
   set attempts = d.attempts + 1, next_attempt_at = ?
  from due, ${TABLE.webhooks} w
 where d.id = due.id and w.id = d.webhook_id
returning d.id, d.webhook_id, d.event_id, d.event_type, d.payload, d.attempts, w.url, w.secret_box`;

export async function claimDueDeliveries(db: Db, options: { now: Date; leaseUntil: Date; limit: number }): Promise<ClaimedDelivery[]> {
  const { rows } = await db.raw(CLAIM, [options.now, options.limit, options.leaseUntil]);
  return rows.map((row: Record<string, any>) => ({
    id: row.id,
    webhookId: row.webhook_id,
    eventId: row.event_id,
    eventType: row.event_type,
    payload: row.payload,
    attempt: row.attempts,
    url: row.url,
    secretBox: row.secret_box,
  }));
}

export interface AttemptOutcome {
  startedAt: Date;
  durationMs: number;
  statusCode: number | null;
  error: string | null;
  succeeded: boolean;
  /** When to try again; undefined when this attempt settles the delivery. */
  retryAt: Date | undefined;
}

export type DeliveryState = 'succeeded' | 'failed' | 'pending';

// The attempt row and the delivery's new state commit together. The update only applies while
// the delivery still carries this claim's attempt number: a claim whose lease ran out and was
// taken over by another worker records its attempt but does not overwrite the newer state.
export async function recordAttempt(db: Db, delivery: ClaimedDelivery, outcome: AttemptOutcome): Promise<DeliveryState> {
  const state: DeliveryState = outcome.succeeded ? 'succeeded' : outcome.retryAt ? 'pending' : 'failed';
  await db.transaction(async (trx) => {
    await trx.raw(
      `insert into ${TABLE.webhookDeliveryAttempts} (delivery_id, attempt, started_at, duration_ms, status_code, error, succeeded)
       select id, ?, ?, ?, ?, ?, ? from ${TABLE.webhookDeliveries} where id = ?`,
      [delivery.attempt, outcome.startedAt, Math.round(outcome.durationMs), outcome.statusCode, outcome.error, outcome.succeeded, delivery.id],
    );
    await trx(TABLE.webhookDeliveries)
      .where({ id: delivery.id, attempts: delivery.attempt, status: 'pending' })
      .update({
        status: state,
        next_attempt_at: outcome.retryAt ?? outcome.startedAt,
        completed_at: state === 'pending' ? null : new Date(outcome.startedAt.getTime() + outcome.durationMs),
      });
  });
  return state;
}
