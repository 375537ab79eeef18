import type { Db } from '../shared/db';
import { TABLE } from '../shared/tables';

// The outbox side of webhooks: claim due deliveries, record each attempt's outcome.

export interface ClaimedDelivery {
  id: string;
  orgId: string;
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
// One org per claim: Citus runs FOR UPDATE only in a statement that stays on one shard, and an
// org's deliveries and webhooks share one (docs/scaling.md). The orgs with due deliveries are
// found first by a plain read, which may span shards.
const DUE_ORGS = `
select org_id from ${TABLE.webhookDeliveries}
 where status = 'pending' and next_attempt_at <= ?
 group by org_id order by min(next_attempt_at)
 limit ?`;

const CLAIM = `
with due as (
  select id from ${TABLE.webhookDeliveries}
   where org_id = :orgId and status = 'pending' and next_attempt_at <= :now
   order by next_attempt_at
   limit :limit
   for update skip locked
)
update ${TABLE.webhookDeliveries} d
   set attempts = d.attempts + 1, next_attempt_at = :leaseUntil
  from due, ${TABLE.webhooks} w
 where d.org_id = :orgId and d.id = due.id and w.org_id = :orgId and w.id = d.webhook_id
returning d.id, d.org_id, d.webhook_id, d.event_id, d.event_type, d.payload, d.attempts, w.url, w.secret_box`;

interface ClaimRow {
  id: string;
  org_id: string;
  webhook_id: string;
  event_id: string;
  event_type: string;
  payload: Record<string, unknown>;
  attempts: number;
  url: string;
  secret_box: Buffer;
}

export interface ClaimOptions {
  now: Date;
  leaseUntil: Date;
  limit: number;
  /** Sends the caller has in flight per org, which count against maxPerOrg. */
  inFlight?: ReadonlyMap<string, number>;
  /** Deliveries one org may have in flight at most, those claimed here included. */
  maxPerOrg?: number;
}

/**
 * Up to `limit` due deliveries, oldest org first, each org's in one statement. Each org takes its
 * share of the limit first, then orgs with more due fill what the others left: the oldest org
 * took the whole limit, and one org's backlog (a receiver that never answers, and test pings
 * sent without pause) kept every other org's deliveries waiting.
 */
export async function claimDueDeliveries(db: Db, options: ClaimOptions): Promise<ClaimedDelivery[]> {
  const inFlight = options.inFlight ?? new Map<string, number>();
  const room = (orgId: string) => (options.maxPerOrg ?? Infinity) - (inFlight.get(orgId) ?? 0);
  // Orgs at their cap are read too and passed over, so as many others as the limit are found.
  const due = await db.raw<{ rows: Array<{ org_id: string }> }>(DUE_ORGS, [options.now, options.limit + inFlight.size]);
  const orgs = due.rows.map((row) => row.org_id).filter((orgId) => room(orgId) > 0);
  const claimed: ClaimedDelivery[] = [];
  const taken = new Map<string, number>();
  // Orgs that had fewer due than they were offered: a second claim would find none.
  const drained = new Set<string>();
  for (const share of [Math.ceil(options.limit / Math.max(1, orgs.length)), options.limit]) {
    for (const orgId of orgs) {
      const own = taken.get(orgId) ?? 0;
      const limit = Math.min(share - own, room(orgId) - own, options.limit - claimed.length);
      if (limit <= 0 || drained.has(orgId)) continue;
      const { rows } = await db.raw<{ rows: ClaimRow[] }>(CLAIM, { orgId, now: options.now, limit, leaseUntil: options.leaseUntil });
      claimed.push(...rows.map(toClaimedDelivery));
      taken.set(orgId, own + rows.length);
      if (rows.length < limit) drained.add(orgId);
    }
  }
  return claimed;
}

const toClaimedDelivery = (row: ClaimRow): ClaimedDelivery => ({
  id: row.id,
  orgId: row.org_id,
  webhookId: row.webhook_id,
  eventId: row.event_id,
  eventType: row.event_type,
  payload: row.payload,
  attempt: row.attempts,
  url: row.url,
  secretBox: row.secret_box,
});

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
      `insert into ${TABLE.webhookDeliveryAttempts} (org_id, delivery_id, attempt, started_at, duration_ms, status_code, error, succeeded)
       select org_id, id, ?, ?, ?, ?, ?, ? from ${TABLE.webhookDeliveries} where id = ?`,
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
