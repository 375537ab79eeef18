import type { Config } from '../shared/config';
import type { Db } from '../shared/db';
import type { Logger } from '../shared/logger';
import { rateLimitedWarn } from '../shared/rateLimitedLog';
import { secretBox, WEBHOOK_SECRET_PURPOSE } from '../shared/secretBox';
import { SIGNATURE_HEADER, signatureHeader } from '../shared/webhookSignature';
import { retryDelayMs } from './webhookRetry';
import { postWebhook, type SendResult } from './webhookSender';
import { claimDueDeliveries, recordAttempt, type ClaimedDelivery } from './webhookStore';

// Delivers the outbox: every poll interval it claims due deliveries, POSTs each signed payload,
// and records the attempt with the delivery's next state (succeeded, retry at, or failed).

const CLAIM_BATCH = 10;

export interface WebhookWorkerStats {
  attempts: number;
  failedAttempts: number;
  delivered: number;
  gaveUp: number;
}

export interface WebhookWorkerOptions {
  db: Db;
  /** KEY_PEPPER first, then KEY_PEPPER_PREVIOUS: secrets sealed before a pepper rotation still open. */
  peppers: readonly string[];
  config: Config['webhooks'];
  logger: Logger;
  now?: () => number;
  random?: () => number;
}

// The fields and their order are the documented payload, whatever the stored jsonb's key order.
function payloadBody(payload: Record<string, unknown>): string {
  const { id, type, orgId, keyId, occurredAt, details } = payload;
  return JSON.stringify({ id, type, orgId, keyId, occurredAt, details });
}

export function createWebhookWorker(options: WebhookWorkerOptions) {
  const { db, config, logger } = options;
  const now = options.now ?? Date.now;
  const box = secretBox(options.peppers, WEBHOOK_SECRET_PURPOSE);
  const warn = rateLimitedWarn(logger, 10_000, now);
  // A claimed delivery is due again after this long: a send always ends within the timeout.
  const leaseMs = 2 * config.timeoutMs + 1000;
  const stats: WebhookWorkerStats = { attempts: 0, failedAttempts: 0, delivered: 0, gaveUp: 0 };
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;

  async function send(delivery: ClaimedDelivery): Promise<SendResult> {
    let secret: string;
    try {
      secret = box.open(delivery.secretBox, delivery.webhookId);
    } catch {
      return { ok: false, statusCode: null, error: 'the signing secret cannot be opened (was KEY_PEPPER changed?)' };
    }
    const body = payloadBody(delivery.payload);
    const headers = {
      'user-agent': 'keyusage-webhooks',
      [SIGNATURE_HEADER]: signatureHeader(secret, body, Math.floor(now() / 1000)),
      'keyusage-event-id': delivery.eventId,
      'keyusage-event-type': delivery.eventType,
      'idempotency-key': delivery.eventId,
    };
    return postWebhook(delivery.url, headers, body, { timeoutMs: config.timeoutMs, allowPrivateTargets: config.allowPrivateTargets });
  }

  async function deliver(delivery: ClaimedDelivery): Promise<void> {
    const startedAt = now();
    const result = await send(delivery);
    const durationMs = now() - startedAt;
    const delay = result.ok ? undefined : retryDelayMs(delivery.attempt, { maxAttempts: config.maxAttempts, baseDelayMs: config.retryBaseMs }, options.random);
    const retryAt = delay === undefined ? undefined : new Date(startedAt + durationMs + delay);
    const state = await recordAttempt(db, delivery, { startedAt: new Date(startedAt), durationMs, ...result, succeeded: result.ok, retryAt });
    stats.attempts += 1;
    const context = { webhookId: delivery.webhookId, deliveryId: delivery.id, eventId: delivery.eventId, attempt: delivery.attempt };
    if (state === 'succeeded') stats.delivered += 1;
    else stats.failedAttempts += 1;
    if (state === 'pending')
      warn(`webhook_${delivery.webhookId}`, { ...context, statusCode: result.statusCode, error: result.error }, 'webhook attempt failed; will retry');
    if (state === 'failed') {
      stats.gaveUp += 1;
      logger.error({ ...context, statusCode: result.statusCode, error: result.error }, 'webhook delivery failed after its last attempt');
    }
  }

  // Claims and delivers until nothing is due, so a backlog drains without waiting a poll each batch.
  async function drain(): Promise<void> {
    for (;;) {
      const at = now();
      const claimed = await claimDueDeliveries(db, { now: new Date(at), leaseUntil: new Date(at + leaseMs), limit: CLAIM_BATCH });
      await Promise.all(claimed.map(deliver));
      if (claimed.length < CLAIM_BATCH || timer === undefined) return;
    }
  }

  function poll(): Promise<void> {
    running ??= drain()
      .catch((error) => warn('webhook_poll', { err: { message: error.message } }, 'webhook delivery poll failed; retrying'))
      .finally(() => (running = undefined));
    return running;
  }

  return {
    stats,
    /** One poll now (tests and the first tick); concurrent callers share it. */
    poll,
    start(): void {
      timer ??= setInterval(() => void poll(), config.pollIntervalMs).unref();
    },
    /** Stops polling and waits for the sends in flight to be recorded. */
    async stop(): Promise<void> {
      clearInterval(timer);
      timer = undefined;
      await running;
    },
  };
}
