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
  /** While a secret rotation's grace period is open (database time): the previous secret's box, which signs too. */
  previousSecretBox: Buffer | null;
  /** When the delivery was made (ms): a put-back waits longer the older it is. */
  createdAt: number;
  /** The event's key as it is at the claim (null: a ping, or a key deleted since). */
  key: KeyAbout | null;
}

/** What a receiver is told of the event's key besides its id: whom to route the alert to. */
export interface KeyAbout {
  name: string;
  owner: string | null;
}

// `skip locked` lets several collectors claim side by side without waiting for or taking each
// other's rows. Claiming moves next_attempt_at to the end of a lease instead of holding a
// transaction open across the HTTP request: if this process dies mid-send, the row becomes due
// again when the lease ends and another worker delivers it (at least once).
// Due and lease times are the database's clock, one for every collector: each collector's own
// clock decided when another's lease had ended, so one running 15 s ahead of another (or stepped
// forward) claimed a delivery still being sent and POSTed it a second time beside it.
// A delivery due again with every attempt used (its last send cut short by a crash, or its
// outcome not recorded) is settled as failed, not sent again: WEBHOOK_MAX_ATTEMPTS is a limit.
// One org per claim: Citus runs FOR UPDATE only in a statement that stays on one shard, and an
// org's deliveries and webhooks share one (docs/scaling.md). The orgs with due deliveries are
// found first by a plain read, which may span shards: the orgs with a webhook, in turn from the
// org after the last one served, each probed for a due delivery (webhook_deliveries_org_due_idx),
// until `limit` are found. It took the orgs oldest due first by reading every due delivery: one
// org's backlog of millions (a receiver that never answers) made every poll read all of it. Not
// oldest first any more: that needs each org's oldest due delivery, which Citus computes only by
// reading all of the org's. The probe is a LATERAL … ORDER BY next_attempt_at LIMIT 1: EXISTS became
// a hash join over every pending delivery when the statistics were stale (a backlog inserted since
// the last ANALYZE), and LIMIT 1 alone a sequential scan that expects a match early (one org's
// rows after another's backlog: read to the end). The order is the index's, and costs nothing.
const dueOrgsIn = (turn: number, range: string) => `
(select ${turn} as turn, w.org_id
   from (select org_id from ${TABLE.webhooks} where ${range} group by org_id) w
   cross join lateral (select 1 from ${TABLE.webhookDeliveries} d
                        where d.org_id = w.org_id and d.status = 'pending' and d.next_attempt_at <= now()
                        order by d.next_attempt_at
                        limit 1) due
  order by w.org_id
  limit :limit)`;
export const DUE_ORGS = `
select org_id from (${dueOrgsIn(1, 'org_id > :after')} union all ${dueOrgsIn(2, 'org_id <= :after')}) turns
 order by turn, org_id
 limit :limit`;

/** The `after` of the first claim: lower than every org id. */
export const BEFORE_EVERY_ORG = '00000000-0000-0000-0000-000000000000';

// A payload's keyId is cast only when it is one: the outbox trigger and the ping write a UUID or
// null, but one row with anything else (SQL by hand) failed the cast, and so every claim of its org.
const UUID_PATTERN = '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';

export const CLAIM = `
with due as (
  select id, attempts from ${TABLE.webhookDeliveries}
   where org_id = :orgId and status = 'pending' and next_attempt_at <= now()
   order by next_attempt_at
   limit :limit
   for update skip locked
), spent as (
  update ${TABLE.webhookDeliveries} d
     set status = 'failed', completed_at = now(), next_attempt_at = now()
    from due
   where d.org_id = :orgId and d.id = due.id and due.attempts >= :maxAttempts
  returning d.id
), claimed as (
  update ${TABLE.webhookDeliveries} d
     set attempts = d.attempts + 1, next_attempt_at = now() + :leaseMs * interval '1 millisecond'
    from due, ${TABLE.webhooks} w
   where d.org_id = :orgId and d.id = due.id and due.attempts < :maxAttempts and w.org_id = :orgId and w.id = d.webhook_id
  returning d.id, d.org_id, d.webhook_id, d.event_id, d.event_type, d.payload, d.attempts, w.url, w.secret_box,
            w.previous_secret_box, w.previous_secret_expires_at, d.created_at
)
-- The grace judged here, not in RETURNING: Citus refuses now() there (not immutable).
-- The key's name and owner as they are now, not as the event's snapshot has them: a receiver
-- routes an alert to the owner named today (api_keys is a reference table on Citus: the
-- statement stays on the org's shard).
select c.id, c.org_id, c.webhook_id, c.event_id, c.event_type, c.payload, c.attempts, c.url, c.secret_box,
       case when c.previous_secret_expires_at > now() then c.previous_secret_box end as previous_secret_box, c.created_at, false as spent,
       k.id is not null as key_found, k.name as key_name, k.owner as key_owner
  from claimed c
  left join ${TABLE.apiKeys} k on k.org_id = :orgId
        and k.id = case when c.payload->>'keyId' ~* '${UUID_PATTERN}' then cast(c.payload->>'keyId' as uuid) end
union all
select id, null, null, null, null, null, null, null, null, null, null, true, false, null, null from spent`;

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
  previous_secret_box: Buffer | null;
  created_at: Date;
  spent: boolean;
  key_found: boolean;
  key_name: string | null;
  key_owner: string | null;
}

export interface ClaimOptions {
  /** How long a claimed delivery is the claimer's: it is due again after this long (database time). */
  leaseMs: number;
  limit: number;
  /** WEBHOOK_MAX_ATTEMPTS: a due delivery with this many attempts is settled as failed, not claimed. */
  maxAttempts: number;
  /** Sends the caller has in flight per org, which count against maxPerOrg. */
  inFlight?: ReadonlyMap<string, number>;
  /** Deliveries one org may have in flight at most, those claimed here included. */
  maxPerOrg?: number;
  /**
   * Of the `limit` free slots, those kept for orgs with nothing in flight: an org with sends in
   * flight (or claimed here) takes another only while this many stay free.
   */
  reserve?: number;
  /** True once the caller stopped: no org's claim starts after that (the one under way ends). */
  stopped?: () => boolean;
  /** The previous claim's `servedUpTo`: orgs after it are offered first, then the others in turn. */
  after?: string;
}

export interface Claim {
  deliveries: ClaimedDelivery[];
  /** Deliveries found due with every attempt used, settled as failed. */
  spent: number;
  /** The last org offered a share: the next claim's `after`, so every org with due deliveries gets its turn. */
  servedUpTo: string | undefined;
  /** Why an org's claim failed after others' had claimed: those are returned, to be sent, and the failure with them. */
  failure?: Error;
}

/**
 * Up to `limit` due deliveries, the orgs in turn, each org's oldest in one statement. Each org
 * takes its share of the limit first, then orgs with more due fill what the others left: the
 * oldest org took the whole limit, and one org's backlog (a receiver that never answers, and test
 * pings sent without pause) kept every other org's deliveries waiting.
 */
export async function claimDueDeliveries(db: Db, options: ClaimOptions): Promise<Claim> {
  const inFlight = options.inFlight ?? new Map<string, number>();
  const room = (orgId: string) => (options.maxPerOrg ?? Infinity) - (inFlight.get(orgId) ?? 0);
  // Orgs at their cap are read too and passed over, so as many others as the limit are found.
  const due = await db.raw<{ rows: Array<{ org_id: string }> }>(DUE_ORGS, { limit: options.limit + inFlight.size, after: options.after ?? BEFORE_EVERY_ORG });
  const orgs = due.rows.map((row) => row.org_id).filter((orgId) => room(orgId) > 0);
  const claim: Claim = { deliveries: [], spent: 0, servedUpTo: options.after };
  const taken = new Map<string, number>();
  // Orgs that had fewer due than they were offered: a second claim would find none.
  const drained = new Set<string>();
  for (const [pass, share] of [Math.ceil(options.limit / Math.max(1, orgs.length)), options.limit].entries()) {
    for (const orgId of orgs) {
      if (options.stopped?.()) return claim;
      const own = taken.get(orgId) ?? 0;
      const left = options.limit - claim.deliveries.length;
      // An org's first send may take a reserved slot: it is what the reserve is kept for.
      const firstSend = (inFlight.get(orgId) ?? 0) + own === 0 ? 1 : 0;
      const limit = Math.min(share - own, room(orgId) - own, left, Math.max(firstSend, left - (options.reserve ?? 0)));
      if (limit <= 0 || drained.has(orgId)) continue;
      if (pass === 0) claim.servedUpTo = orgId;
      let rows: ClaimRow[];
      try {
        ({ rows } = await db.raw<{ rows: ClaimRow[] }>(CLAIM, { orgId, limit, leaseMs: options.leaseMs, maxAttempts: options.maxAttempts }));
      } catch (error) {
        // Each org's claim commits on its own: thrown away, the deliveries already claimed had an
        // attempt counted and no send, and waited a lease (with their last attempt, failed unsent),
        // and those already settled as failed went uncounted.
        if (claim.deliveries.length === 0 && claim.spent === 0) throw error;
        return { ...claim, failure: error as Error };
      }
      const claimed = rows.filter((row) => !row.spent);
      claim.deliveries.push(...claimed.map(toClaimedDelivery));
      claim.spent += rows.length - claimed.length;
      taken.set(orgId, own + claimed.length);
      if (rows.length < limit) drained.add(orgId);
    }
  }
  return claim;
}

/** The outbox's pending deliveries are counted up to this many: a count of millions is no scrape's cost. */
export const BACKLOG_COUNT_CAP = 100_000;

// The count reads the pending deliveries' index, and stops at the cap. The oldest due one is each
// org's first in webhook_deliveries_org_due_idx, one probe per org with a webhook, as DUE_ORGS:
// since the index leads with org_id, a plain min() would read every pending delivery.
const PENDING_COUNT = `select count(*)::int as pending from (select 1 from ${TABLE.webhookDeliveries} where status = 'pending' limit :cap) capped`;
const OLDEST_DUE = `
select coalesce(extract(epoch from now() - min(due.next_attempt_at)), 0)::float8 as seconds
  from (select org_id from ${TABLE.webhooks} group by org_id) w
  cross join lateral (select d.next_attempt_at from ${TABLE.webhookDeliveries} d
                       where d.org_id = w.org_id and d.status = 'pending' and d.next_attempt_at <= now()
                       order by d.next_attempt_at
                       limit 1) due`;

export interface Backlog {
  /** Pending deliveries, BACKLOG_COUNT_CAP at most. */
  pendingDeliveries: number;
  /** How long the delivery due the longest has been due, unclaimed (database time); 0 when none is. */
  oldestDueSeconds: number;
}

export async function readBacklog(db: Db): Promise<Backlog> {
  const count = await db.raw<{ rows: Array<{ pending: number }> }>(PENDING_COUNT, { cap: BACKLOG_COUNT_CAP });
  const oldest = await db.raw<{ rows: Array<{ seconds: number }> }>(OLDEST_DUE);
  return { pendingDeliveries: count.rows[0].pending, oldestDueSeconds: oldest.rows[0].seconds };
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
  previousSecretBox: row.previous_secret_box,
  createdAt: row.created_at.getTime(),
  key: row.key_found ? { name: row.key_name!, owner: row.key_owner } : null,
});

export interface AttemptOutcome {
  startedAt: Date;
  durationMs: number;
  statusCode: number | null;
  error: string | null;
  succeeded: boolean;
  /** How long from the record (database time) to try again; undefined when this attempt settles the delivery. */
  retryInMs: number | undefined;
}

/**
 * `superseded`: the claim's lease had ended and another worker had claimed the delivery again; its state is that worker's.
 * `deleted`: the delivery went with its webhook (DELETE …/webhooks/:id) before the attempt was recorded; nothing is.
 */
export type DeliveryState = 'succeeded' | 'failed' | 'pending' | 'superseded' | 'deleted';

function attemptRow(delivery: ClaimedDelivery, outcome: Omit<AttemptOutcome, 'retryInMs'>) {
  return {
    org_id: delivery.orgId,
    delivery_id: delivery.id,
    attempt: delivery.attempt,
    started_at: outcome.startedAt,
    // Down, not to the nearest: the start is the wall clock's whole millisecond and the duration
    // the steady clock's, and rounded up the two passed the attempt's end by up to half a
    // millisecond, ending it after the retry's wait had begun (a flaky test in CI).
    duration_ms: Math.floor(outcome.durationMs),
    status_code: outcome.statusCode,
    error: outcome.error,
    succeeded: outcome.succeeded,
  };
}

// The attempt row and the delivery's new state commit together. The update only applies while
// the delivery still carries this claim's attempt number: a claim whose lease ran out and was
// taken over by another worker records its attempt but does not overwrite the newer state.
// The delivery is read FOR KEY SHARE first: one whose webhook is being deleted is waited for, then
// found gone. Inserted without it, the attempt's foreign key check waited the same way and then
// failed (23503). A statement of its own: Citus refuses a row lock in an INSERT … SELECT.
export async function recordAttempt(db: Db, delivery: ClaimedDelivery, outcome: AttemptOutcome): Promise<DeliveryState> {
  const state: DeliveryState = outcome.succeeded ? 'succeeded' : outcome.retryInMs !== undefined ? 'pending' : 'failed';
  const completedAt = new Date(outcome.startedAt.getTime() + outcome.durationMs);
  return db.transaction(async (trx): Promise<DeliveryState> => {
    const exists = await trx(TABLE.webhookDeliveries).where({ org_id: delivery.orgId, id: delivery.id }).forKeyShare().first('id');
    if (!exists) return 'deleted';
    await trx(TABLE.webhookDeliveryAttempts).insert(attemptRow(delivery, outcome));
    const changed: number = await trx(TABLE.webhookDeliveries)
      .where({ id: delivery.id, attempts: delivery.attempt, status: 'pending' })
      .update({
        status: state,
        next_attempt_at: outcome.retryInMs === undefined ? outcome.startedAt : trx.raw(`now() + ? * interval '1 millisecond'`, [outcome.retryInMs]),
        completed_at: state === 'pending' ? null : completedAt,
      });
    return changed === 0 ? 'superseded' : state;
  });
}

/**
 * Gives a claim back unsent: the attempt counted at claim time is taken off again and the
 * delivery is due in `retryInMs`. False when the claim was no longer this one's (its lease ended
 * and another worker claimed it, or the delivery went with its webhook): nothing changes then.
 */
export async function releaseClaim(db: Db, delivery: ClaimedDelivery, retryInMs: number): Promise<boolean> {
  const changed: number = await db(TABLE.webhookDeliveries)
    .where({ org_id: delivery.orgId, id: delivery.id, attempts: delivery.attempt, status: 'pending' })
    .update({ attempts: delivery.attempt - 1, next_attempt_at: db.raw(`now() + ? * interval '1 millisecond'`, [retryInMs]) });
  return changed > 0;
}

/**
 * Fails a claim for good, unsent, with one attempt saying why. False when the claim was no longer
 * this one's (as releaseClaim): nothing is recorded then. Unlike recordAttempt's, the attempt is
 * written only once the delivery is settled: nothing was sent, so a claim that lost the delivery to
 * another collector has nothing to add, and two collectors would each have recorded the failure.
 */
export async function failUnsent(db: Db, delivery: ClaimedDelivery, failedAt: Date, error: string): Promise<boolean> {
  return db.transaction(async (trx) => {
    const changed: number = await trx(TABLE.webhookDeliveries)
      .where({ org_id: delivery.orgId, id: delivery.id, attempts: delivery.attempt, status: 'pending' })
      .update({ status: 'failed', next_attempt_at: failedAt, completed_at: failedAt });
    if (changed === 0) return false;
    await trx(TABLE.webhookDeliveryAttempts).insert(attemptRow(delivery, { startedAt: failedAt, durationMs: 0, statusCode: null, error, succeeded: false }));
    return true;
  });
}

// One statement: the deliveries failed and their attempts commit together, and no collector's
// claim comes between them. The attempt counts as one (nothing was sent, as failUnsent's). A
// delivery claimed and being sent (its lease not ended, no attempt recorded for its claim) is left
// to its send: failed under it, a send that succeeded was logged as failed and its success as
// superseded (a review). A later run fails it if its send failed again, or its worker died. The times are
// the caller's: Citus refuses now() in RETURNING, and retention runs on the collector's clock.
const FAIL_EXPIRED = `
with expired as (
  update ${TABLE.webhookDeliveries}
     set status = 'failed', attempts = attempts + 1, next_attempt_at = :failedAt, completed_at = :failedAt
   where status = 'pending' and created_at < :madeBefore
     and not (attempts > 0 and next_attempt_at > :failedAt and not exists (select 1 from ${TABLE.webhookDeliveryAttempts} a
                                                          where a.org_id = ${TABLE.webhookDeliveries}.org_id
                                                            and a.delivery_id = ${TABLE.webhookDeliveries}.id
                                                            and a.attempt = ${TABLE.webhookDeliveries}.attempts))
  returning org_id, id, attempts
)
insert into ${TABLE.webhookDeliveryAttempts} (org_id, delivery_id, attempt, started_at, duration_ms, error, succeeded)
select org_id, id, attempts, cast(:failedAt as timestamptz), 0, cast(:error as text), false from expired`;

/** Fails every delivery still pending that was made before `madeBefore`, unsent, with one attempt saying why; returns how many. */
export async function failExpiredDeliveries(db: Db, madeBefore: Date, failedAt: Date, error: string): Promise<number> {
  const result = await db.raw<{ rowCount: number }>(FAIL_EXPIRED, { madeBefore, failedAt, error });
  return result.rowCount;
}
