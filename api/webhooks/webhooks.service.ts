import { randomBytes, randomUUID } from 'node:crypto';
import { z } from 'zod';
import { auditActor, beginAuditedChange, recordAudit, type ActingKey } from '../audit/audit.repository';
import type { Db } from '../../shared/db';
import { PING_EVENT_TYPE } from '../../shared/keyEvents';
import { secretBox, WEBHOOK_SECRET_PURPOSE } from '../../shared/secretBox';
import type { LookupSlots } from '../../shared/lookupSlots';
import { resolveTargetWithin, TargetRefusedError, type Lookup } from '../../shared/webhookTarget';
import { AppError, InvalidInputError, notFound } from '../errors';
import type { IdempotentRequest } from '../idempotency/idempotency';
import { idempotentChanges, madeNow, replayedFlag, type Replayed } from '../idempotency/idempotentChange';
import { requireKeyInOrg } from '../keys/requireKeyInOrg';
import { lockOrgFor } from '../orgs/orgs.repository';
import { cursorPage, idString, isoTime, listOf, offsetPage } from '../responses';
import {
  countPendingDeliveries,
  countWebhooksInOrg,
  databaseClock,
  deleteSomeDeliveries,
  deleteWebhookInOrg,
  DELIVERIES_PER_DELETE,
  findWebhookInOrg,
  insertDelivery,
  insertWebhook,
  listDeliveries,
  listWebhooksInOrg,
  replaceWebhookSecret,
  DELIVERY_STATUSES,
  type DeliveryPosition,
  type DeliveryRecord,
  type DeliveryStatus,
  type WebhookRecord,
} from './webhooks.repository';

// What a client may see of a webhook: never its signing secret.
const webhookView = z
  .object({
    id: idString,
    orgId: idString,
    url: z.string().meta({
      description:
        'Whole for a key with keys:write; for one without, its origin and "/…" in place of a path or query (they may carry the receiver\'s own token)',
    }),
    events: z.array(z.string()).meta({ description: 'Event types it receives; ["*"] for every type' }),
    createdAt: isoTime,
    createdByKeyId: idString.nullable().meta({
      description:
        'The key that created it (null: not known, made before creators were recorded). A revoked key does not take its webhooks with it: list them with ?createdByKeyId=',
    }),
    previousSecretExpiresAt: isoTime.nullable().meta({
      description: "While a secret rotation's grace period is open: when the previous secret stops signing deliveries (null: none open)",
    }),
  })
  .meta({ id: 'Webhook' });
export type WebhookView = z.output<typeof webhookView>;

// The one place a signing secret appears: the answer to create and to a rotation.
export const createdWebhook = webhookView
  .extend({ secret: z.string().meta({ description: 'The signing secret (whsec_…), shown this once' }) })
  .meta({ id: 'WebhookWithSecret' });
// What a retry of a create or secret rotation with the same Idempotency-Key answers: the webhook as
// the first answer showed it, without the secret, which is kept only sealed in the webhook's row
// (docs/webhooks.md, "Idempotent create and secret rotation").
export const replayedWebhook = webhookView
  .extend({
    replayed: replayedFlag(
      'webhook',
      'The signing secret was in that answer only and is never shown again; if it was lost, rotate the secret (with a new Idempotency-Key)',
    ),
  })
  .meta({ id: 'WebhookReplay' });
/** The answer of a create or secret rotation: the secret, or, for a retry with the same Idempotency-Key, the replay without it. */
export const createdOrReplayedWebhook = z.union([createdWebhook, replayedWebhook]).meta({ id: 'WebhookWithSecretOrReplay' });

/** A create or secret rotation made now: the webhook and its secret, with the answer's status. */
export interface RevealedWebhook {
  replayed: false;
  status: number;
  webhook: WebhookView;
  secret: string;
}

/** A create or secret rotation remembered for its Idempotency-Key: its first answer, without the secret. */
export type ReplayedWebhook = Replayed<WebhookView>;

/** A rotation's grace period unless the request names one: a day to deploy the receiver's new secret. */
export const DEFAULT_SECRET_GRACE_SECONDS = 86_400;

const newSecret = () => `whsec_${randomBytes(32).toString('base64url')}`;

/** How much of its webhooks' URLs a caller sees: whole with keys:write, else their origins. */
export type UrlView = 'whole' | 'origin';

// A path or query may carry the receiver's own token (which is why a URL is never logged): a
// keys:read key, which may not change the webhook, sees where events go, not how to post there.
// The audit log shows its entries' URLs the same way (api/audit/audit.service.ts).
export function originOnly(url: string): string {
  const parsed = new URL(url);
  const hidden = parsed.pathname !== '/' || parsed.search !== '' || parsed.hash !== '';
  return `${parsed.origin}/${hidden ? '…' : ''}`;
}

const lastDelivery = z.object({ status: z.enum(DELIVERY_STATUSES), eventType: z.string(), at: isoTime });
export const webhookList = listOf(webhookView.extend({ lastDelivery: lastDelivery.nullable() }), offsetPage).meta({ id: 'WebhookList' });

const deliveryView = z.object({
  id: idString,
  eventId: idString,
  eventType: z.string(),
  status: z.enum(DELIVERY_STATUSES),
  attemptCount: z.number().int(),
  nextAttemptAt: isoTime.nullable(),
  createdAt: isoTime,
  completedAt: isoTime.nullable(),
  attempts: z.array(
    z.object({
      attempt: z.number().int(),
      startedAt: isoTime,
      durationMs: z.number(),
      statusCode: z.number().int().nullable(),
      error: z.string().nullable(),
      succeeded: z.boolean(),
    }),
  ),
});
export const deliveryList = listOf(deliveryView, cursorPage).meta({ id: 'WebhookDeliveryList' });
export const pingResult = z.object({ deliveryId: idString, eventId: idString }).meta({ id: 'WebhookPing' });

// The cursor is opaque to clients: base64url of the last delivery's created_at, to the microsecond
// (deliveries of different flushes may share a millisecond), and id.
const encodeCursor = (position: DeliveryPosition) => Buffer.from(`${position.createdAt} ${position.id}`).toString('base64url');

const CURSOR = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.(\d{3})\d{3}Z) ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;

// A time that is no real one (month 13, February 30) or before 1970 is refused here: PostgreSQL
// would fail the query (a 500) or read another time.
function decodeCursor(cursor: string): DeliveryPosition {
  const match = CURSOR.exec(Buffer.from(cursor, 'base64url').toString());
  const time = match ? Date.parse(match[1]) : Number.NaN;
  if (!match || !(time >= 0) || new Date(time).toISOString() !== `${match[1].slice(0, 20)}${match[2]}Z`) {
    throw new InvalidInputError('cursor: is not a cursor this endpoint returned');
  }
  return { createdAt: match[1], id: match[3] };
}

const iso = (date: Date | null) => (date ? date.toISOString() : null);

const toView = (webhook: WebhookRecord, urlView: UrlView = 'whole'): WebhookView => ({
  id: webhook.id,
  orgId: webhook.orgId,
  url: urlView === 'whole' ? webhook.url : originOnly(webhook.url),
  events: webhook.eventTypes,
  createdAt: webhook.createdAt.toISOString(),
  createdByKeyId: webhook.createdByKeyId,
  previousSecretExpiresAt: iso(webhook.previousSecretExpiresAt),
});

const toDeliveryView = (delivery: DeliveryRecord): z.output<typeof deliveryView> => ({
  id: delivery.id,
  eventId: delivery.eventId,
  eventType: delivery.eventType,
  status: delivery.status,
  attemptCount: delivery.attemptCount,
  nextAttemptAt: delivery.status === 'pending' ? delivery.nextAttemptAt.toISOString() : null,
  createdAt: delivery.createdAt.toISOString(),
  completedAt: iso(delivery.completedAt),
  attempts: delivery.attempts.map((attempt) => ({ ...attempt, startedAt: attempt.startedAt.toISOString() })),
});

/** Who changes a webhook, for the audit log: the acting key (none: the CLI) and its address. */
export interface WebhookChangeContext {
  actor?: ActingKey & { displayPrefix: string };
  ip?: string;
}

const webhookAudit = (orgId: string, action: 'webhook.create' | 'webhook.delete', webhook: WebhookRecord, context: WebhookChangeContext) => ({
  orgId,
  action,
  targetKeyId: null,
  details: { webhookId: webhook.id, url: webhook.url, events: webhook.eventTypes },
  actor: auditActor(context.actor),
  ip: context.ip ?? null,
});

// Test deliveries one webhook may have pending: pings sent in a loop to a receiver that never
// answers grew the outbox without bound, each retried for an hour.
export const MAX_PENDING_PINGS = 10;

export interface WebhooksServiceDeps {
  db: Db;
  pepper: string;
  allowPrivateTargets: boolean;
  /** How long the URL's host may take to resolve (WEBHOOK_TIMEOUT_MS, as for a send). */
  timeoutMs: number;
  /** WEBHOOKS_MAX_PER_ORG. */
  maxPerOrg: number;
  /** The system's resolver unless given. */
  lookup?: Lookup;
  /** The API process's webhook lookups, one org's at a time (shared/lookupSlots.ts). */
  lookupSlots: LookupSlots;
  /** How long a create or secret rotation sent with an Idempotency-Key is remembered (IDEMPOTENCY_KEY_TTL_SECONDS); 24 h unless given. */
  idempotencyTtlSeconds?: number;
  now: () => number;
}

export type WebhooksService = ReturnType<typeof createWebhooksService>;

// Thrown in a create's transaction to roll it back when its URL must be checked first.
class TargetNotChecked extends Error {}

export function createWebhooksService(deps: WebhooksServiceDeps) {
  const box = secretBox(deps.pepper, WEBHOOK_SECRET_PURPOSE);

  async function requireWebhook(orgId: string, webhookId: string): Promise<WebhookRecord> {
    const webhook = await findWebhookInOrg(deps.db, orgId, webhookId);
    if (!webhook) throw notFound('Webhook');
    return webhook;
  }

  // A webhook's deliveries go before it, a chunk per transaction. Left to the webhook's cascade, one
  // statement held its row until the last of them was gone (11 s for 300,000), and every flush
  // raising an event for its org waited on that row (the outbox trigger's FOR KEY SHARE) with every
  // other org's usage in the same transaction; with API_STATEMENT_TIMEOUT_MS the delete rolled
  // back and could be repeated at will. Each chunk is checked as the delete is (the acting key
  // still valid, the webhook still the org's): another org's webhook is a 404 with nothing deleted.
  // Interrupted, the chunks done stay done, and the next delete goes on from there. Until a chunk
  // finds none, not one short of the limit: the retention may delete some of a chunk's rows first.
  async function deleteDeliveriesAhead(orgId: string, webhookId: string, context: WebhookChangeContext): Promise<void> {
    let found: number;
    do {
      found = await deps.db.transaction(async (trx) => {
        await beginAuditedChange(trx, orgId, context.actor, deps.now);
        if (!(await findWebhookInOrg(trx, orgId, webhookId))) throw notFound('Webhook');
        return deleteSomeDeliveries(trx, orgId, webhookId, DELIVERIES_PER_DELETE);
      });
    } while (found > 0);
  }

  async function checkTarget(orgId: string, url: URL): Promise<void> {
    try {
      const addresses = await resolveTargetWithin(url, deps.allowPrivateTargets, deps.timeoutMs, {
        lookup: deps.lookup,
        slots: deps.lookupSlots,
        owner: orgId,
      });
      if (addresses === 'lookup timed out') throw new InvalidInputError(`url: host did not resolve within ${deps.timeoutMs} ms`);
      // Not the URL's fault: every lookup slot stayed held (by orgs whose name servers do not answer).
      if (addresses === 'lookups busy') {
        throw new AppError(
          'service_unavailable',
          `The server's webhook lookups are busy: none could start within ${deps.timeoutMs} ms to check the URL's host. Nothing was created; retry shortly`,
        );
      }
    } catch (error) {
      if (error instanceof TargetRefusedError) throw new InvalidInputError(`url: ${error.message}`);
      throw error;
    }
  }

  const idempotency = idempotentChanges({ resource: 'webhook', ttlSeconds: deps.idempotencyTtlSeconds, now: deps.now });

  async function createWebhook(
    orgId: string,
    input: { url: string; events: string[] },
    context: WebhookChangeContext,
    request: IdempotentRequest | undefined,
  ): Promise<RevealedWebhook | ReplayedWebhook> {
    // A retry's URL is not looked up again: a host that stopped resolving since would refuse the
    // retry of a webhook that exists. Only a look, before the org's lock: the retry is answered
    // (or refused, 422) under it, once the acting key is checked again.
    const retried = await idempotency.replayFor<WebhookView>(deps.db, orgId, context.actor, request).then(
      (replay) => replay !== undefined,
      (error: unknown) => {
        if (error instanceof AppError && error.code === 'idempotency_key_reused') return true;
        throw error;
      },
    );
    if (!retried) await checkTarget(orgId, new URL(input.url));
    try {
      return await createInTransaction(orgId, input, context, request, !retried);
    } catch (error) {
      // The remembered answer expired while the request waited for the org's lock: it is a new
      // request, and its URL is checked as any (a review: a 422 timed to the expiry created a
      // webhook whose URL nothing had checked).
      if (!(error instanceof TargetNotChecked)) throw error;
      await checkTarget(orgId, new URL(input.url));
      return createInTransaction(orgId, input, context, request, true);
    }
  }

  async function createInTransaction(
    orgId: string,
    input: { url: string; events: string[] },
    context: WebhookChangeContext,
    request: IdempotentRequest | undefined,
    targetChecked: boolean,
  ): Promise<RevealedWebhook | ReplayedWebhook> {
    const id = randomUUID();
    const secret = newSecret();
    // Where an org's events go is as sensitive as its keys: recorded in the same transaction.
    const outcome = await deps.db.transaction(async (trx) => {
      await beginAuditedChange(trx, orgId, context.actor, deps.now);
      // A concurrent retry waited for the org's lock above: it finds the first one's answer here.
      const replay = await idempotency.replayFor<WebhookView>(trx, orgId, context.actor, request);
      if (replay) return replay;
      if (!targetChecked) throw new TargetNotChecked();
      await lockOrgFor(trx, 'webhooks', orgId);
      if ((await countWebhooksInOrg(trx, orgId)) >= deps.maxPerOrg) {
        throw new AppError('conflict', `this org has ${deps.maxPerOrg} webhooks, the most it may have (WEBHOOKS_MAX_PER_ORG): delete one first`);
      }
      const inserted = await insertWebhook(trx, {
        id,
        orgId,
        url: input.url,
        eventTypes: input.events,
        secretBox: box.seal(secret, id),
        createdByKeyId: context.actor?.id ?? null,
      });
      await recordAudit(trx, webhookAudit(orgId, 'webhook.create', inserted, context));
      const view = toView(inserted);
      await idempotency.remember(trx, { orgId, actor: context.actor, request, status: 201, view });
      return { replayed: false as const, view };
    });
    if (outcome.replayed) return outcome;
    return { replayed: false, status: 201, webhook: outcome.view, secret };
  }

  // In place, so deliveries pending on the webhook are sent (signed with the new secret and,
  // through the grace period, the previous one too), none twice: the rotation it replaces (a new
  // webhook, the old one deleted) lost them with the old webhook's delivery log. A retry with the
  // same Idempotency-Key rotates nothing again: the first new secret stays the current one.
  async function rotateWebhookSecret(
    orgId: string,
    webhookId: string,
    input: { graceSeconds?: number },
    context: WebhookChangeContext,
    request: IdempotentRequest | undefined,
  ): Promise<RevealedWebhook | ReplayedWebhook> {
    const { graceSeconds = DEFAULT_SECRET_GRACE_SECONDS } = input;
    const secret = newSecret();
    const outcome = await deps.db.transaction(async (trx) => {
      // The org's audit lock serializes this with its other rotations: the check below holds.
      await beginAuditedChange(trx, orgId, context.actor, deps.now);
      const replay = await idempotency.replayFor<WebhookView>(trx, orgId, context.actor, request);
      if (replay) return replay;
      // Judged and its grace period started once its turn has come, not when it began waiting.
      const asOf = await databaseClock(trx);
      const current = await findWebhookInOrg(trx, orgId, webhookId, asOf);
      if (!current) throw notFound('Webhook');
      // One previous secret is kept: a grace period now would end the open one's early, which
      // its receiver was promised (as for API keys).
      if (graceSeconds > 0 && current.previousSecretExpiresAt !== null) {
        throw new AppError(
          'conflict',
          `This webhook's previous secret signs until ${iso(current.previousSecretExpiresAt)}: a rotation with a grace period would end it now. Rotate again after that, or with gracePeriodSeconds 0, which ends both the previous secret and the current one at once`,
        );
      }
      const rotated = await replaceWebhookSecret(trx, orgId, webhookId, { secretBox: box.seal(secret, webhookId), graceSeconds, asOf });
      if (!rotated) throw notFound('Webhook');
      await recordAudit(trx, {
        orgId,
        action: 'webhook.rotate_secret',
        targetKeyId: null,
        details: { webhookId, gracePeriodSeconds: graceSeconds, previousSecretExpiresAt: iso(rotated.previousSecretExpiresAt) },
        actor: auditActor(context.actor),
        ip: context.ip ?? null,
      });
      const view = toView(rotated);
      await idempotency.remember(trx, { orgId, actor: context.actor, request, status: 200, view });
      return { replayed: false as const, view };
    });
    if (outcome.replayed) return outcome;
    return { replayed: false, status: 200, webhook: outcome.view, secret };
  }

  return {
    async create(orgId: string, input: { url: string; events: string[] }, context: WebhookChangeContext = {}): Promise<RevealedWebhook> {
      return madeNow(await createWebhook(orgId, input, context, undefined));
    },

    /** create, remembered for its Idempotency-Key: a retry within the window makes no second webhook and answers the first outcome, without the secret. */
    createIdempotent(orgId: string, input: { url: string; events: string[] }, context: WebhookChangeContext, request: IdempotentRequest | undefined) {
      return createWebhook(orgId, input, context, request);
    },

    async list(
      orgId: string,
      query: { limit: number; offset: number; createdByKeyId?: string },
      urlView: UrlView = 'origin',
    ): Promise<z.output<typeof webhookList>> {
      // A key of another org (or none) is not_found, not an empty page, as for events and usage.
      if (query.createdByKeyId) await requireKeyInOrg(deps.db, orgId, query.createdByKeyId);
      const { webhooks, total } = await listWebhooksInOrg(deps.db, orgId, query);
      return {
        data: webhooks.map((webhook) => ({
          ...toView(webhook, urlView),
          lastDelivery: webhook.lastDelivery && { ...webhook.lastDelivery, at: webhook.lastDelivery.at.toISOString() },
        })),
        page: { limit: query.limit, offset: query.offset, total },
      };
    },

    async rotateSecret(orgId: string, webhookId: string, input: { graceSeconds?: number }, context: WebhookChangeContext = {}): Promise<RevealedWebhook> {
      return madeNow(await rotateWebhookSecret(orgId, webhookId, input, context, undefined));
    },

    /** rotateSecret, remembered for its Idempotency-Key: a retry within the window rotates nothing and answers the first outcome, without the secret. */
    rotateSecretIdempotent(
      orgId: string,
      webhookId: string,
      input: { graceSeconds?: number },
      context: WebhookChangeContext,
      request: IdempotentRequest | undefined,
    ) {
      return rotateWebhookSecret(orgId, webhookId, input, context, request);
    },

    async remove(orgId: string, webhookId: string, context: WebhookChangeContext = {}) {
      await deleteDeliveriesAhead(orgId, webhookId, context);
      await deps.db.transaction(async (trx) => {
        await beginAuditedChange(trx, orgId, context.actor, deps.now);
        const webhook = await findWebhookInOrg(trx, orgId, webhookId);
        if (!webhook || !(await deleteWebhookInOrg(trx, orgId, webhookId))) throw notFound('Webhook');
        await recordAudit(trx, webhookAudit(orgId, 'webhook.delete', webhook, context));
      });
    },

    async deliveries(
      orgId: string,
      webhookId: string,
      query: { limit: number; cursor?: string; status?: DeliveryStatus },
    ): Promise<z.output<typeof deliveryList>> {
      const after = query.cursor === undefined ? undefined : decodeCursor(query.cursor);
      await requireWebhook(orgId, webhookId);
      // One more than asked tells whether a next page exists without a count.
      const deliveries = await listDeliveries(deps.db, orgId, webhookId, { status: query.status, after, limit: query.limit + 1 });
      const page = deliveries.slice(0, query.limit);
      const nextCursor = deliveries.length > query.limit ? encodeCursor(page[page.length - 1].position) : null;
      return { data: page.map(toDeliveryView), page: { limit: query.limit, nextCursor } };
    },

    // A ping goes through the same outbox, worker, signature and retries as a key event.
    // Serialized with the org's audited changes: a delete committed meanwhile is a 404 here, not
    // the delivery's foreign key failing (500), and a key revoked meanwhile queues nothing.
    async ping(orgId: string, webhookId: string, context: WebhookChangeContext = {}): Promise<z.output<typeof pingResult>> {
      const eventId = randomUUID();
      const payload = {
        id: eventId,
        type: PING_EVENT_TYPE,
        orgId,
        keyId: null,
        occurredAt: new Date(deps.now()).toISOString(),
        details: { webhookId },
      };
      const deliveryId = await deps.db.transaction(async (trx) => {
        await beginAuditedChange(trx, orgId, context.actor, deps.now);
        await lockOrgFor(trx, 'webhooks', orgId);
        if (!(await findWebhookInOrg(trx, orgId, webhookId))) throw notFound('Webhook');
        if ((await countPendingDeliveries(trx, orgId, webhookId, PING_EVENT_TYPE, MAX_PENDING_PINGS)) >= MAX_PENDING_PINGS) {
          throw new AppError(
            'conflict',
            `${MAX_PENDING_PINGS} test deliveries to this webhook are still pending: wait for one to settle (GET …/deliveries?status=pending)`,
          );
        }
        return insertDelivery(trx, { webhookId, orgId, eventId, eventType: PING_EVENT_TYPE, payload });
      });
      return { deliveryId, eventId };
    },
  };
}
