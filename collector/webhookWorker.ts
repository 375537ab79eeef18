import type { Config } from '../shared/config';
import type { Db } from '../shared/db';
import type { Logger } from '../shared/logger';
import { lookupSlots, type LookupSlots } from '../shared/lookupSlots';
import { rateLimitedWarn } from '../shared/rateLimitedLog';
import { secretBox, WEBHOOK_SECRET_PURPOSE } from '../shared/secretBox';
import { steadyNow } from '../shared/steadyClock';
import { SIGNATURE_HEADER, signatureHeader } from '../shared/webhookSignature';
import type { Lookup } from '../shared/webhookTarget';
import { DAY_MS, HOUR_MS } from '../shared/timeUnits';
import { retryDelayMs } from './webhookRetry';
import { postWebhook, type SendResult } from './webhookSender';
import { claimDueDeliveries, failUnsent, readBacklog, recordAttempt, releaseClaim, type ClaimedDelivery } from './webhookStore';

// Delivers the outbox: a pool of sends, filled with due deliveries every poll interval and as
// each send ends; each POSTs a signed payload and records the attempt with the delivery's next
// state (succeeded, retry at, or failed).

// A claim's sends were awaited together, so one receiver that never answered held every org's
// deliveries for WEBHOOK_TIMEOUT_MS per claim. A free slot is now filled as soon as it frees, and
// one org holds half the pool (WEBHOOK_CONCURRENCY) at most. With that cap alone, two silent orgs
// held it all, and each slot freed at their timeouts went round to one of them again: other orgs'
// sends went out one per WEBHOOK_TIMEOUT_MS. A quarter of the pool is kept for orgs with nothing
// in flight: an org with sends in flight takes another only while the reserve stays free.
function sendPool(concurrency: number) {
  return { size: concurrency, maxPerOrg: Math.max(1, Math.floor(concurrency / 2)), reserve: Math.max(1, Math.floor(concurrency / 4)) };
}

// The backlog's gauges are read at most this often, at a poll: a scrape reads what was read last.
const BACKLOG_READ_MS = 15_000;

export interface WebhookWorkerStats {
  attempts: number;
  failedAttempts: number;
  delivered: number;
  gaveUp: number;
  /** Polls whose claim failed (the database refused or timed out): deliveries wait meanwhile. */
  failedPolls: number;
  /** Claims put back unsent, no attempt used, because the signing secret could not be opened: the delivery waits for a pepper. */
  secretsUnopened: number;
  /** Claims put back unsent, no attempt used, because other orgs' lookups held every slot. */
  lookupsBusy: number;
  /** The outbox's pending deliveries (BACKLOG_COUNT_CAP at most), as last read. */
  pendingDeliveries: number;
  /** How long the delivery due the longest had been due when last read (0: none due). */
  oldestDueSeconds: number;
}

export interface WebhookWorkerOptions {
  db: Db;
  /** KEY_PEPPER first, then KEY_PEPPER_PREVIOUS: secrets sealed before a pepper rotation still open. */
  peppers: readonly string[];
  config: Config['webhooks'];
  logger: Logger;
  /** The wall clock, for what is written down: an attempt's start and the signature's timestamp. Durations are on the steady clock. */
  now?: () => number;
  random?: () => number;
  /** The resolver of webhook hosts: the system's unless given. */
  lookup?: Lookup;
  /** The process's webhook lookup slots: the worker's own unless given. */
  lookupSlots?: LookupSlots;
}

// The fields and their order are the documented payload, whatever the stored jsonb's key order.
// `key` is the event's key as it is at the send (docs/webhooks.md).
function payloadBody({ payload, key }: Pick<ClaimedDelivery, 'payload' | 'key'>): string {
  const { id, type, orgId, keyId, occurredAt, details } = payload;
  return JSON.stringify({ id, type, orgId, keyId, key, occurredAt, details });
}

/**
 * `t=<ts>,v1=<new>` and, through a secret rotation's grace period, `,v1=<previous>` after it, as
 * Stripe signs with several secrets: a receiver accepts the delivery if any v1 matches its secret.
 */
export function rotatingSignatureHeader(secrets: readonly string[], body: string, timestampSeconds: number): string {
  const [first, ...more] = secrets.map((secret) => signatureHeader(secret, body, timestampSeconds));
  // Each of `more` is `t=<same ts>,v1=…`: its v1 part is appended.
  return [first, ...more.map((header) => header.slice(header.indexOf(',') + 1))].join(',');
}

// A put-back waits WEBHOOK_RETRY_BASE_MS, or a quarter of the delivery's age, up to an hour: a
// secret no collector can open (a pepper dropped) kept every delivery made since pending, and the
// whole growing backlog was claimed and released every WEBHOOK_RETRY_BASE_MS for as long as it
// lasted (a review). A cause that ends soon still costs a young delivery little.
export function putBackDelayMs(ageMs: number, retryBaseMs: number): number {
  return Math.max(retryBaseMs, Math.min(PUT_BACK_MAX_MS, Math.floor(ageMs / 4)));
}
const PUT_BACK_MAX_MS = 3_600_000;

const UNITS = [
  ['day', DAY_MS],
  ['hour', HOUR_MS],
  ['minute', 60_000],
  ['second', 1000],
] as const;

/** A duration as an operator reads it in a delivery's log: `3 days`, `90 minutes`. */
export function durationInWords(ms: number): string {
  const [unit, size] = UNITS.find(([, size]) => ms % size === 0) ?? ['millisecond', 1];
  const count = ms / size;
  return `${count} ${unit}${count === 1 ? '' : 's'}`;
}

export function createWebhookWorker(options: WebhookWorkerOptions) {
  const { db, config, logger } = options;
  const now = options.now ?? Date.now;
  const box = secretBox(options.peppers, WEBHOOK_SECRET_PURPOSE);
  const warn = rateLimitedWarn(logger, 10_000);
  const lookups = options.lookupSlots ?? lookupSlots();
  // A claimed delivery is due again after this long: a send always ends within the timeout.
  const leaseMs = 2 * config.timeoutMs + 1000;
  const pool = sendPool(config.concurrency);
  const stats: WebhookWorkerStats = {
    attempts: 0,
    failedAttempts: 0,
    delivered: 0,
    gaveUp: 0,
    failedPolls: 0,
    secretsUnopened: 0,
    lookupsBusy: 0,
    pendingDeliveries: 0,
    oldestDueSeconds: 0,
  };
  let timer: NodeJS.Timeout | undefined;
  // Set by stop(): no claim starts after it. A worker polled without start() (tests) still claims.
  let stopping = false;
  const stopped = () => stopping;

  // The previous secret is a courtesy to a receiver not yet on the new one: one that cannot be
  // opened (a rotation made because the pepper that sealed it was dropped) leaves the new one alone
  // to sign, rather than failing every attempt through the grace period.
  function previousSecret(delivery: ClaimedDelivery): string[] {
    if (!delivery.previousSecretBox) return [];
    try {
      return [box.open(delivery.previousSecretBox, delivery.webhookId)];
    } catch {
      warn('webhook_previous_secret', { webhookId: delivery.webhookId }, "a webhook's previous signing secret cannot be opened; the new one alone signs");
      return [];
    }
  }

  function currentSecret(delivery: ClaimedDelivery): string | undefined {
    try {
      return box.open(delivery.secretBox, delivery.webhookId);
    } catch {
      return undefined;
    }
  }

  async function send(delivery: ClaimedDelivery, secret: string): Promise<SendResult> {
    const body = payloadBody(delivery);
    const headers = {
      'user-agent': 'keyusage-webhooks',
      [SIGNATURE_HEADER]: rotatingSignatureHeader([secret, ...previousSecret(delivery)], body, Math.floor(now() / 1000)),
      'keyusage-event-id': delivery.eventId,
      'keyusage-event-type': delivery.eventType,
      'idempotency-key': delivery.eventId,
    };
    return postWebhook(delivery.url, headers, body, {
      timeoutMs: config.timeoutMs,
      allowPrivateTargets: config.allowPrivateTargets,
      via: { lookup: options.lookup, slots: lookups, owner: delivery.orgId },
    });
  }

  // Gives the claim's attempt back, unsent: the delivery is claimed again after WEBHOOK_RETRY_BASE_MS or a
  // quarter of its age, whichever is longer (never a hot loop), and waits as long as the cause lasts,
  // its attempts kept for sends.
  // Counted: a delivery that waits shows no attempt in its log, so the metric is what says why.
  async function putBack(delivery: ClaimedDelivery, cause: 'secretsUnopened' | 'lookupsBusy', kind: string, fields: Record<string, unknown>, message: string) {
    if (!(await releaseClaim(db, delivery, putBackDelayMs(now() - delivery.createdAt, config.retryBaseMs)))) return;
    stats[cause] += 1;
    warn(kind, fields, message);
  }

  // A collector without the pepper that sealed the secret (a restore, a rotation that dropped it
  // too early) cannot sign. Counted as failed attempts, the deliveries were failed for good within
  // the retry window (~63 min), and never sent once the pepper was given back: they wait for it.
  // Waiting without end, a pepper lost for good left them pending forever, their logs empty, and a
  // webhook's pings piling up until …/test answered 409: past WEBHOOK_SECRET_WAIT_MAX_MS one is
  // failed, its one attempt saying why and what mends it.
  async function secretUnopened(delivery: ClaimedDelivery, context: Record<string, unknown>): Promise<void> {
    const failedAt = now();
    if (failedAt - delivery.createdAt < config.secretWaitMaxMs) {
      const message = "a webhook's signing secret cannot be opened (was KEY_PEPPER changed?); the delivery waits, its attempt not counted";
      return putBack(delivery, 'secretsUnopened', `webhook_secret_${delivery.webhookId}`, context, message);
    }
    const waited = durationInWords(config.secretWaitMaxMs);
    const error =
      `nothing was sent: the delivery is older than ${waited} and the collector that claimed it could not open the webhook's ` +
      "signing secret with its KEY_PEPPER settings (the pepper that sealed it is gone); rotate the webhook's secret (POST …/rotate-secret) so its deliveries are signed again";
    if (!(await failUnsent(db, delivery, new Date(failedAt), error))) return;
    stats.gaveUp += 1;
    logger.error({ ...context, error }, `webhook delivery failed: older than WEBHOOK_SECRET_WAIT_MAX_MS (${waited}), its signing secret could not be opened`);
  }

  async function deliver(delivery: ClaimedDelivery): Promise<void> {
    const context = { webhookId: delivery.webhookId, deliveryId: delivery.id, eventId: delivery.eventId, attempt: delivery.attempt };
    const secret = currentSecret(delivery);
    if (secret === undefined) return secretUnopened(delivery, context);
    // The wall clock for when it started, as recorded; the steady one for how long it took: a wall
    // clock stepped back mid-send recorded a negative duration, and an end before the start.
    const startedAt = now();
    const steadyStart = steadyNow();
    const { lookupsBusy, ...result } = await send(delivery, secret);
    // Other orgs' lookups (of name servers that do not answer) held every slot, so the host was
    // not tried (behind its own org's, it is an attempt that did not resolve). Counted as a failed attempt, two orgs with such name servers
    // failed every other org's deliveries within the retry window.
    if (lookupsBusy) {
      const message = 'no webhook lookup could start in time; the delivery waits, its attempt not counted';
      return putBack(delivery, 'lookupsBusy', 'webhook_lookups_busy', { ...context, error: result.error }, message);
    }
    const durationMs = steadyNow() - steadyStart;
    const delay = result.ok ? undefined : retryDelayMs(delivery.attempt, { maxAttempts: config.maxAttempts, baseDelayMs: config.retryBaseMs }, options.random);
    const state = await recordAttempt(db, delivery, { startedAt: new Date(startedAt), durationMs, ...result, succeeded: result.ok, retryInMs: delay });
    stats.attempts += 1;
    if (state === 'succeeded') stats.delivered += 1;
    else if (!result.ok) stats.failedAttempts += 1;
    // A `deleted` delivery went with its webhook while it was sent: its org removed it, nothing to say.
    if (state === 'superseded') warn('webhook_superseded', context, "a webhook attempt ended after its claim's lease; the delivery is another worker's now");
    if (state === 'pending')
      warn(`webhook_${delivery.webhookId}`, { ...context, statusCode: result.statusCode, error: result.error }, 'webhook attempt failed; will retry');
    if (state === 'failed') {
      stats.gaveUp += 1;
      logger.error({ ...context, statusCode: result.statusCode, error: result.error }, 'webhook delivery failed after its last attempt');
    }
  }

  const sending = new Set<Promise<void>>();
  const sendingPerOrg = new Map<string, number>();
  let filling: Promise<void> | undefined;
  // Where the last claim's turn of orgs ended: the next one starts after it.
  let servedUpTo: string | undefined;
  // A slot freed while a fill was claiming, after its last claim: fill again once it ends.
  let refill = false;

  // Claims for the free slots until nothing more is due or the pool is full.
  async function fill(): Promise<void> {
    for (let free = pool.size - sending.size; free > 0; free = pool.size - sending.size) {
      refill = false;
      const claimOptions = {
        leaseMs,
        limit: free,
        maxAttempts: config.maxAttempts,
        inFlight: sendingPerOrg,
        maxPerOrg: pool.maxPerOrg,
        reserve: pool.reserve,
        stopped,
        after: servedUpTo,
      };
      const { deliveries, spent, servedUpTo: turnEnd, failure } = await claimDueDeliveries(db, claimOptions);
      servedUpTo = turnEnd;
      deliveries.forEach(launch);
      if (spent > 0) {
        stats.gaveUp += spent;
        logger.error(
          { deliveries: spent, maxAttempts: config.maxAttempts },
          `webhook deliveries failed: they had reached WEBHOOK_MAX_ATTEMPTS (${config.maxAttempts}) when claimed: ` +
            'their last attempt was cut short or not recorded, or another collector allows more attempts',
        );
      }
      if (failure) throw failure;
      if ((deliveries.length < free && !refill) || timer === undefined) return;
    }
  }

  function launch(delivery: ClaimedDelivery): void {
    sendingPerOrg.set(delivery.orgId, (sendingPerOrg.get(delivery.orgId) ?? 0) + 1);
    const send: Promise<void> = deliver(delivery)
      .catch((error) =>
        warn('webhook_record', { err: { message: error.message } }, 'recording a webhook attempt failed; the delivery is sent again after its lease'),
      )
      .finally(() => {
        sending.delete(send);
        const left = (sendingPerOrg.get(delivery.orgId) ?? 1) - 1;
        if (left === 0) sendingPerOrg.delete(delivery.orgId);
        else sendingPerOrg.set(delivery.orgId, left);
        if (timer !== undefined) void poll();
      });
    sending.add(send);
  }

  let backlogReadAt: number | undefined;
  // Before the claim, so the first poll reads the outbox as the collector found it. A failed read
  // leaves the gauges as they were: the deliveries are not held up for it.
  async function readBacklogNow(): Promise<void> {
    if (backlogReadAt !== undefined && steadyNow() - backlogReadAt < BACKLOG_READ_MS) return;
    backlogReadAt = steadyNow();
    try {
      Object.assign(stats, await readBacklog(db));
    } catch (error) {
      warn('webhook_backlog', { err: { message: (error as Error).message } }, 'reading the webhook backlog failed; its gauges keep their last values');
    }
  }

  function poll(): Promise<void> {
    refill = true;
    filling ??= readBacklogNow()
      .then(fill)
      .catch((error) => {
        stats.failedPolls += 1;
        warn('webhook_poll', { err: { message: error.message } }, 'webhook delivery poll failed; retrying');
      })
      .finally(() => (filling = undefined));
    return filling;
  }

  return {
    stats,
    /** Fills the pool now (tests and the first tick); concurrent callers share it. */
    poll,
    start(): void {
      timer ??= setInterval(() => void poll(), config.pollIntervalMs).unref();
    },
    /** Stops polling and waits for the sends in flight to be recorded. */
    async stop(): Promise<void> {
      stopping = true;
      clearInterval(timer);
      timer = undefined;
      await filling;
      await Promise.all(sending);
    },
  };
}
