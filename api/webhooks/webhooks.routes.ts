import { Router, type RequestHandler, type Response } from 'express';
import { z } from 'zod';
import { EVENT_TYPES } from '../../shared/keyEvents';
import { redactKeyMaterial } from '../../shared/logger';
import { MANAGE_AND_READ_ORG, MANAGE_ORG, READ_ORG, type Requirement } from '../auth/authorize';
import { idempotencyHeaders, idempotentRequest } from '../idempotency/idempotency';
import { sendReplay } from '../idempotency/idempotentChange';
import type { RouteContract } from '../openapi/contract';
import { jsonBody, noBody, noQuery, pagination, parseInput, uuid } from '../validation';
import { DELIVERY_STATUSES } from './webhooks.repository';
import {
  createdOrReplayedWebhook,
  createdWebhook,
  DEFAULT_SECRET_GRACE_SECONDS,
  deliveryList,
  MAX_PENDING_PINGS,
  pingResult,
  webhookList,
  type ReplayedWebhook,
  type RevealedWebhook,
  type UrlView,
  type WebhooksService,
} from './webhooks.service';

const orgParams = z.object({ id: uuid });
const webhookParams = z.object({ id: uuid, webhookId: uuid });
const EVENT_CHOICES = ['*', ...EVENT_TYPES] as const;

// The URL is shown by GET and kept in the database: no credentials, no API key in it.
function urlProblem(value: string): string | undefined {
  // URL parsing would percent-encode them, but the string stored is the one given.
  if (/\p{Cc}/u.test(value)) return 'must not contain control characters';
  if (!URL.canParse(value)) return 'must be an absolute URL';
  const parsed = new URL(value);
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') return 'must be an http or https URL';
  if (parsed.username !== '' || parsed.password !== '') return 'must not contain credentials';
  // No server listens on port 0, and Node's request sends to the scheme's default port instead.
  if (parsed.port === '0') return 'must not use port 0';
  // Percent-encoded too (redactKeyMaterial decodes each escape).
  if (redactKeyMaterial(value) !== value) return 'must not contain an API key';
  return undefined;
}

const url = z
  .string()
  .max(2048, 'must be at most 2048 characters')
  .superRefine((value, ctx) => {
    const problem = urlProblem(value);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  });

const createBody = z
  .object({
    url,
    events: z
      .array(z.enum(EVENT_CHOICES, { error: `must be one of ${EVENT_CHOICES.join(', ')}` }))
      .min(1, 'must list at least one event type')
      .transform((events) => (events.includes('*') ? ['*'] : [...new Set(events)])),
  })
  .strict();

const rotateBody = z
  .object({
    gracePeriodSeconds: z
      .number()
      .int('must be a whole number')
      .min(0)
      .max(604_800, 'must be at most 604800 (7 days)')
      .optional()
      .meta({ description: `How long the previous secret still signs (${DEFAULT_SECRET_GRACE_SECONDS} by default; 0: it stops at once)` }),
  })
  .strict();

const deliveriesQuery = z
  .object({
    status: z.enum(DELIVERY_STATUSES, { error: 'must be pending, succeeded or failed' }).optional(),
    cursor: z.string().min(1).max(200).optional().meta({ description: "The previous page's page.nextCursor" }),
    limit: pagination.limit,
  })
  .strict();

const listQuery = z
  .object({
    ...pagination,
    createdByKeyId: uuid.optional().meta({ description: 'Only the webhooks this key created; a key of another org, or none, is a 404' }),
  })
  .strict();

export const webhooksRoutes: RouteContract[] = [
  {
    method: 'post',
    path: '/',
    operationId: 'createWebhook',
    summary: "Send the org's key events to a URL, signed (docs/webhooks.md)",
    description:
      'The signing secret is in this response only (Cache-Control: no-store). A URL that resolves to a private address is refused (400) unless the deployment allows it. 409 when the org has WEBHOOKS_MAX_PER_ORG webhooks (20 by default). With an Idempotency-Key, a retry of the same request by the same key within IDEMPOTENCY_KEY_TTL_SECONDS creates nothing and answers 201 with the webhook as first answered, `replayed: true` and no secret (rotate the secret if it was lost).',
    auth: MANAGE_AND_READ_ORG,
    params: orgParams,
    headers: idempotencyHeaders,
    body: createBody,
    responses: {
      201: {
        description: 'The webhook, with its signing secret; for a retry with the same Idempotency-Key, the webhook without it (replayed)',
        body: createdOrReplayedWebhook,
      },
    },
    errors: ['conflict', 'idempotency_key_reused'],
  },
  {
    method: 'get',
    path: '/',
    operationId: 'listWebhooks',
    summary: "The org's webhooks, each with its latest delivery",
    description:
      'A key without keys:write sees each URL reduced to its origin, with "/…" in place of a path or query: those may carry the receiver\'s own token.',
    auth: READ_ORG,
    params: orgParams,
    query: listQuery,
    responses: { 200: { description: 'A page of webhooks', body: webhookList } },
  },
  {
    method: 'delete',
    path: '/:webhookId',
    operationId: 'deleteWebhook',
    summary: 'Delete a webhook and its delivery log',
    auth: MANAGE_AND_READ_ORG,
    params: webhookParams,
    responses: { 204: { description: 'Deleted' } },
  },
  {
    method: 'post',
    path: '/:webhookId/rotate-secret',
    operationId: 'rotateWebhookSecret',
    summary: 'Give a webhook a new signing secret; the previous one also signs until the grace period ends',
    description:
      'The new secret is in this response only (Cache-Control: no-store). Through the grace period each delivery carries a v1 signature per secret. Deliveries pending on the webhook are kept. 409 when (with a grace period) the previous secret of an earlier rotation still signs: one previous secret is kept. With an Idempotency-Key, a retry of the same request by the same key within IDEMPOTENCY_KEY_TTL_SECONDS rotates nothing and answers 200 with the webhook as first answered, `replayed: true` and no secret (rotate again, with a new Idempotency-Key, if it was lost).',
    auth: MANAGE_AND_READ_ORG,
    params: webhookParams,
    headers: idempotencyHeaders,
    body: rotateBody,
    responses: {
      200: {
        description: 'The webhook, with its new signing secret; for a retry with the same Idempotency-Key, the webhook without it (replayed)',
        body: createdOrReplayedWebhook,
      },
    },
    errors: ['conflict', 'idempotency_key_reused'],
  },
  {
    method: 'get',
    path: '/:webhookId/deliveries',
    operationId: 'listWebhookDeliveries',
    summary: "A webhook's deliveries, newest first, each with every attempt",
    auth: READ_ORG,
    params: webhookParams,
    query: deliveriesQuery,
    responses: { 200: { description: 'A page of deliveries', body: deliveryList } },
  },
  {
    method: 'post',
    path: '/:webhookId/test',
    operationId: 'pingWebhook',
    summary: 'Queue a webhook.ping delivery to the webhook',
    description: `409 while ${MAX_PENDING_PINGS} test deliveries to the webhook are still pending.`,
    auth: MANAGE_ORG,
    params: webhookParams,
    responses: { 202: { description: 'The delivery is queued', body: pingResult } },
    errors: ['conflict'],
  },
];

// Reading webhooks and their delivery log needs keys:read (no secret is ever shown there);
// pinging needs keys:write; creating, rotating and deleting both: a webhook sends every key event
// out, and deleting it (or a rotation without grace, which its receiver refuses until it has the
// new secret) silences every alert, which a key that cannot read them must not do (a leaked
// write-only key deleted the admin's webhook).
export function webhooksRouter(deps: {
  service: WebhooksService;
  authorize: (requirement: Requirement, body?: RequestHandler) => RequestHandler;
  auditIp: (ip: string) => string;
}) {
  const { service } = deps;
  const changeContext = (res: Response) => ({ actor: res.locals.auth!.key, ip: deps.auditIp(res.locals.auth!.ip) });
  // Each route's requirement is its contract's, so the OpenAPI document cannot say another (it
  // said keys:write alone for a delete that took keys:read too). A leaked previous secret must
  // not be able to point the org's events at its own receiver: changes need the current one.
  // A change's body is read by authorize, before the org's turn (api/auth/authorize.ts, readBody).
  const authorize = (operationId: string, body?: RequestHandler) =>
    deps.authorize(webhooksRoutes.find((route) => route.operationId === operationId)!.auth!, body);
  const router = Router({ mergeParams: true });
  // A webhook made or rotated now answers with its secret; a retry with the same Idempotency-Key,
  // with the first answer's view, flagged, and never the secret.
  const answer = (res: Response, outcome: RevealedWebhook | ReplayedWebhook) => {
    if (outcome.replayed) return sendReplay(res, outcome);
    res.status(outcome.status).json({ ...outcome.webhook, secret: outcome.secret } satisfies z.output<typeof createdWebhook>);
  };

  router.post('/', authorize('createWebhook', jsonBody('16kb')), noQuery, async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const body = parseInput(createBody, req.body, 'body');
    const request = idempotentRequest(req, { pattern: 'POST /api/orgs/:id/webhooks', params: {} });
    answer(res, await service.createIdempotent(id, body, changeContext(res), request));
  });

  router.get('/', authorize('listWebhooks'), async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const page = parseInput(listQuery, req.query, 'query');
    const urlView: UrlView = res.locals.auth!.key.scopes.includes('keys:write') ? 'whole' : 'origin';
    res.json(await service.list(id, page, urlView));
  });

  router.delete('/:webhookId', authorize('deleteWebhook', noBody), noQuery, async (req, res) => {
    const { id, webhookId } = parseInput(webhookParams, req.params, 'params');
    await service.remove(id, webhookId, changeContext(res));
    res.status(204).end();
  });

  router.post('/:webhookId/rotate-secret', authorize('rotateWebhookSecret', jsonBody('16kb')), noQuery, async (req, res) => {
    const { id, webhookId } = parseInput(webhookParams, req.params, 'params');
    const body = parseInput(rotateBody, req.body, 'body');
    const request = idempotentRequest(req, { pattern: 'POST /api/orgs/:id/webhooks/:webhookId/rotate-secret', params: { webhookId } });
    answer(res, await service.rotateSecretIdempotent(id, webhookId, { graceSeconds: body.gracePeriodSeconds }, changeContext(res), request));
  });

  router.get('/:webhookId/deliveries', authorize('listWebhookDeliveries'), async (req, res) => {
    const { id, webhookId } = parseInput(webhookParams, req.params, 'params');
    const query = parseInput(deliveriesQuery, req.query, 'query');
    res.json(await service.deliveries(id, webhookId, query));
  });

  router.post('/:webhookId/test', authorize('pingWebhook', noBody), noQuery, async (req, res) => {
    const { id, webhookId } = parseInput(webhookParams, req.params, 'params');
    res.status(202).json(await service.ping(id, webhookId, changeContext(res)));
  });

  return router;
}
