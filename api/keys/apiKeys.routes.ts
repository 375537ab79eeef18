import { isIP } from 'node:net';
import { Router, type RequestHandler, type Response } from 'express';
import { z } from 'zod';
import { MANAGE_AND_READ_ORG, MANAGE_ORG, READ_ORG, REVOKE_KEY, type Requirement } from '../auth/authorize';
import type { RouteContract } from '../openapi/contract';
import { displayName, jsonBody, noBody, noQuery, withinSupportedTimes, pagination, parseInput, uuid } from '../validation';
import { idempotencyHeaders, idempotentRequest } from '../idempotency/idempotency';
import { sendReplay } from '../idempotency/idempotentChange';
import {
  MAX_REVOKE_KEY_IDS,
  RESTORABLE_DAYS_DEFAULT,
  apiKeyList,
  apiKeyView,
  revealedApiKey,
  revealedOrReplayedApiKey,
  revokeDormantResult,
  type ApiKeysService,
  type ReplayedKey,
  type RevealedKey,
} from './apiKeys.service';
import { SCOPES } from './scopes';

const keyParams = z.object({ id: uuid, keyId: uuid });
const orgParams = z.object({ id: uuid });

// An IPv4 or IPv6 address with an optional prefix length; PostgreSQL stores its network. Node's
// isIP takes a zone id (fe80::1%eth0), which inet does not: refused here, not by the database.
const cidr = z.string().refine((value) => {
  const [address, bits, ...rest] = value.split('/');
  const family = isIP(address);
  if (family === 0 || rest.length > 0 || address.includes('%')) return false;
  return bits === undefined || (/^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128));
}, 'must be an IPv4 or IPv6 CIDR such as 203.0.113.0/24');
const expectedNetworks = z.array(cidr).max(100, 'must list at most 100 networks').nullable();
// When a key stops working (null: never). In the future, checked by the service once the org's turn has come.
const expiresAt = z.iso
  .datetime({ offset: true, error: 'must be an ISO 8601 date-time' })
  .refine(...withinSupportedTimes)
  .nullish();
// A renewal or a shortening; only an active key's (an expired key's secret made valid again would
// make a leaked old copy of it valid too). Bounded as a create's is (assertExpiryWithinActor).
const newExpiresAt = expiresAt.meta({
  description:
    'A new expiry for an active key (null: never expires): in the future, and, for a calling key that expires, no later than its own. An expired or revoked key is a 409: create a new key',
});

// Who answers for the key: checked as a name is (no control characters, at most 200).
const owner = displayName.nullable().meta({
  description: 'Who answers for the key: a person, team or address to ask before it is changed or cleaned up (at most 200 characters); null: nobody named',
});

const createBody = z
  .object({
    name: displayName,
    owner: owner.optional(),
    scopes: z
      .array(z.enum(SCOPES, { error: `must be one of ${SCOPES.join(', ')}` }))
      .min(1, 'must list at least one scope')
      .transform((scopes) => [...new Set(scopes)]),
    expiresAt,
    expectedNetworks: expectedNetworks.optional(),
  })
  .strict();

// At least one field; a field left out is left as it is.
const patchBody = z
  .object({ name: displayName.optional(), owner: owner.optional(), expectedNetworks: expectedNetworks.optional(), expiresAt: newExpiresAt })
  .strict()
  .refine((body) => Object.values(body).some((value) => value !== undefined), 'must set at least one of name, owner, expectedNetworks, expiresAt')
  .meta({ minProperties: 1 });

const revokeDormantBody = z
  .object({
    dormantDays: z.number().int('must be a whole number').min(1).max(3650),
    dryRun: z.boolean().default(true),
    keyIds: z.array(uuid).max(MAX_REVOKE_KEY_IDS, `must list at most ${MAX_REVOKE_KEY_IDS} ids`).optional(),
    restorableForDays: z
      .number()
      .int('must be a whole number')
      .min(0)
      .max(365)
      .default(RESTORABLE_DAYS_DEFAULT)
      .meta({ description: `How many days the keys an apply revokes can be restored (POST …/api-keys/:keyId/restore); 0: revoked for good` }),
  })
  .strict();

const rotateBody = z
  .object({
    gracePeriodSeconds: z.number().int('must be a whole number').min(0).max(604_800, 'must be at most 604800 (7 days)').optional(),
    expiresAt: newExpiresAt,
  })
  .strict();

// A field left out changes nothing; null: never expires.
const newExpiry = (value: string | null | undefined) => (value === undefined ? {} : { expiresAt: value === null ? null : new Date(value) });

const listQuery = z
  .object({
    ...pagination,
    createdByKeyId: uuid.optional().meta({ description: 'Only the keys this key created; a key of another org, or none, is a 404' }),
  })
  .strict();

export const apiKeysRoutes: RouteContract[] = [
  {
    method: 'post',
    path: '/',
    operationId: 'createApiKey',
    summary: 'Create an API key',
    description:
      'The plaintext key is in this response only (Cache-Control: no-store). A key cannot create a key with a scope it lacks or a longer life than its own (403). 409 when the org holds KEYS_MAX_PER_ORG keys (100,000 by default), revoked ones included. With an Idempotency-Key, a retry of the same request by the same key within IDEMPOTENCY_KEY_TTL_SECONDS creates nothing and answers 201 with the key as first answered, `replayed: true` and no plaintext (kept nowhere: rotate the key if it was lost).',
    auth: MANAGE_ORG,
    params: orgParams,
    headers: idempotencyHeaders,
    body: createBody,
    responses: {
      201: {
        description: 'The new key, with its plaintext; for a retry with the same Idempotency-Key, the key without it (replayed)',
        body: revealedOrReplayedApiKey,
      },
    },
    errors: ['conflict', 'idempotency_key_reused'],
  },
  {
    method: 'get',
    path: '/',
    operationId: 'listApiKeys',
    summary: "List the org's API keys, oldest first",
    auth: READ_ORG,
    params: orgParams,
    query: listQuery,
    responses: { 200: { description: 'A page of keys', body: apiKeyList } },
  },
  {
    method: 'post',
    path: '/revoke-dormant',
    operationId: 'revokeDormantApiKeys',
    summary: 'List (dryRun, the default) or revoke the keys unused for dormantDays',
    description:
      'The calling key is never among them (nor, for an expiring calling key, keys that outlive it), nor keys with uses the collector logged but has not folded yet; a use still on its way to the collector (the last second or so; up to 30 s while its usage log is behind; longer while it cannot write) is not seen, and a use sent while no collector listens is lost (UDP says nothing): a key whose only recent uses fell in a collector outage, of any length, looks dormant. Before applying, check that the collectors are up and their uses_persisted_total rises. keyIds (the ids a dry run listed) revokes only those still dormant. The keys an apply revokes can be restored for restorableForDays (30 by default; POST …/api-keys/:keyId/restore), and their idle time then counts from the restore. 409 for an apply on an API that records no uses (USAGE_TRACKING=false), and for an apply without keyIds when no key of the org has a recorded use within dormantDays (uses may not be recorded: every key would look unused); usesRecorded tells it in every answer, so a client applying the ids of a dry run that says false can warn first.',
    auth: MANAGE_AND_READ_ORG,
    params: orgParams,
    body: revokeDormantBody,
    responses: { 200: { description: 'The dormant keys, revoked unless dryRun', body: revokeDormantResult } },
    errors: ['conflict'],
  },
  {
    method: 'patch',
    path: '/:keyId',
    operationId: 'updateApiKey',
    summary: "Rename a key, name its owner, set the networks it is expected to be used from, or renew (or shorten) an active key's expiry",
    description:
      "name and owner can be changed on any key, revoked and expired ones included (owner null: nobody named). A use from outside expectedNetworks is not refused; it raises a key.outside_networks event. expiresAt renews a key before it expires (same id, usage history and networks; key.expiring is raised again for the new expiry): only an active key's (409 for an expired or revoked key: create a new key), in the future. A key can change only keys whose scopes it holds itself, and, if it expires, can set expiresAt only on keys that expire no later than it does, to no later than that (403). Other API instances may serve the old expiry for up to KEY_CACHE_TTL_MS.",
    auth: MANAGE_ORG,
    params: keyParams,
    body: patchBody,
    responses: { 200: { description: 'The key', body: apiKeyView } },
    errors: ['conflict'],
  },
  {
    method: 'get',
    path: '/:keyId',
    operationId: 'getApiKey',
    summary: 'Get an API key',
    auth: READ_ORG,
    params: keyParams,
    responses: { 200: { description: 'The key', body: apiKeyView } },
  },
  {
    method: 'post',
    path: '/:keyId/rotate',
    operationId: 'rotateApiKey',
    summary: 'Give a key a new secret; the previous one works until the grace period ends',
    description:
      'The plaintext key is in this response only (Cache-Control: no-store). A key can rotate only keys whose scopes it holds itself and, if it expires, that expire no later than it does, and give them an expiresAt no later than its own (403). Without expiresAt the key keeps its expiry. 409 when the key is revoked or expired, another rotation won, or (with a grace period) the previous secret of an earlier rotation still works: one previous secret is kept. With an Idempotency-Key, a retry of the same request by the same key within IDEMPOTENCY_KEY_TTL_SECONDS rotates nothing and answers 200 with the key as first answered, `replayed: true` and no plaintext (kept nowhere: rotate again, with a new Idempotency-Key, if it was lost).',
    auth: MANAGE_ORG,
    params: keyParams,
    headers: idempotencyHeaders,
    body: rotateBody,
    responses: {
      200: {
        description: 'The key, with its new plaintext; for a retry with the same Idempotency-Key, the key without it (replayed)',
        body: revealedOrReplayedApiKey,
      },
    },
    errors: ['conflict', 'idempotency_key_reused'],
  },
  {
    method: 'post',
    path: '/:keyId/revoke',
    operationId: 'revokeApiKey',
    summary: 'Revoke an API key, for good (revoking it again changes nothing)',
    description:
      "A key the dormant clean-up revoked, which could still be restored, is made final: revoke a key that may have leaked. A key can revoke only keys whose scopes it holds itself, and, if it expires, that expire no later than it does (403). Never refused for the org's changes of the last minute (API_WRITES_PER_ORG_MINUTE), nor counted among them: a key that spent them can still be revoked.",
    auth: REVOKE_KEY,
    params: keyParams,
    responses: { 200: { description: 'The revoked key', body: apiKeyView } },
  },
  {
    method: 'post',
    path: '/:keyId/restore',
    operationId: 'restoreApiKey',
    summary: 'Restore a key the dormant clean-up revoked, while restorableUntil lasts (restoring an active key changes nothing)',
    description:
      "The key works again as it was: same id, secret, scopes, expiry and usage history; its idle time counts from now, so the next clean-up does not revoke it again at once. A key that expired while revoked comes back expired (its secret still fails). 409 for a key revoked for good (a single revoke, which also makes a clean-up's revocation final: revoke a key that may have leaked) or past its restorableUntil: create a new key. Limited as a revoke (403 for a key with scopes the caller lacks, or, for an expiring caller, one that outlives it). Other API instances may refuse the key as revoked for up to KEY_CACHE_TTL_MS.",
    auth: MANAGE_ORG,
    params: keyParams,
    responses: { 200: { description: 'The restored key', body: apiKeyView } },
    errors: ['conflict'],
  },
];

export function apiKeysRouter(deps: {
  service: ApiKeysService;
  authorize: (requirement: Requirement, body?: RequestHandler) => RequestHandler;
  auditIp: (ip: string) => string;
}) {
  const { service, authorize } = deps;
  // The acting key and the client address, for the key-hands-out-no-more rule and the audit log.
  const changeContext = (res: Response) => ({ actor: res.locals.auth!.key, ip: deps.auditIp(res.locals.auth!.ip) });
  // A key made now answers with its plaintext; a retry with the same Idempotency-Key, with the
  // first answer's view, flagged, and never the plaintext (kept nowhere).
  const answer = (res: Response, outcome: RevealedKey | ReplayedKey) => {
    if (outcome.replayed) return sendReplay(res, outcome);
    res.status(outcome.status).json({ ...outcome.key, key: outcome.plaintext } satisfies z.output<typeof revealedApiKey>);
  };
  const readKeys = authorize(READ_ORG);
  // Bodies are read by authorize, after authentication and before the org's turn: an anonymous
  // caller gets 401 without its body being read, a key that sends bad JSON is still counted as a
  // use, and a body on its way holds no turn (api/auth/authorize.ts, readBody).
  const writeKeys = authorize(MANAGE_ORG, jsonBody('16kb'));
  const revokeKey = authorize(REVOKE_KEY, noBody);
  // Within the write budget, unlike a revoke: a restore is no answer to a leak.
  const restoreKey = authorize(MANAGE_ORG, noBody);
  // Up to 10,000 key ids (about 390 kB) from a dry run.
  const cleanUp = authorize(MANAGE_AND_READ_ORG, jsonBody('512kb'));
  const router = Router({ mergeParams: true });

  router.post('/', writeKeys, noQuery, async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const body = parseInput(createBody, req.body, 'body');
    const request = idempotentRequest(req, { pattern: 'POST /api/orgs/:id/api-keys', params: {} });
    const created = await service.createIdempotent(
      id,
      {
        name: body.name,
        owner: body.owner,
        scopes: body.scopes,
        expiresAt: body.expiresAt ? new Date(body.expiresAt) : null,
        expectedNetworks: body.expectedNetworks,
      },
      changeContext(res),
      request,
    );
    answer(res, created);
  });

  router.get('/', readKeys, async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const page = parseInput(listQuery, req.query, 'query');
    res.json(await service.list(id, page));
  });

  router.post('/revoke-dormant', cleanUp, noQuery, async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const body = parseInput(revokeDormantBody, req.body, 'body');
    res.json(await service.revokeDormant(id, body, changeContext(res)));
  });

  router.patch('/:keyId', writeKeys, noQuery, async (req, res) => {
    const { id, keyId } = parseInput(keyParams, req.params, 'params');
    const body = parseInput(patchBody, req.body, 'body');
    const { name, owner, expectedNetworks } = body;
    res.json(await service.update(id, keyId, { name, owner, expectedNetworks, ...newExpiry(body.expiresAt) }, changeContext(res)));
  });

  router.get('/:keyId', readKeys, noQuery, async (req, res) => {
    const { id, keyId } = parseInput(keyParams, req.params, 'params');
    res.json(await service.get(id, keyId));
  });

  router.post('/:keyId/rotate', writeKeys, noQuery, async (req, res) => {
    const { id, keyId } = parseInput(keyParams, req.params, 'params');
    const body = parseInput(rotateBody, req.body, 'body');
    const request = idempotentRequest(req, { pattern: 'POST /api/orgs/:id/api-keys/:keyId/rotate', params: { keyId } });
    answer(
      res,
      await service.rotateIdempotent(id, keyId, { ...changeContext(res), graceSeconds: body.gracePeriodSeconds, ...newExpiry(body.expiresAt) }, request),
    );
  });

  router.post('/:keyId/revoke', revokeKey, noQuery, async (req, res) => {
    const { id, keyId } = parseInput(keyParams, req.params, 'params');
    res.json(await service.revoke(id, keyId, changeContext(res)));
  });

  router.post('/:keyId/restore', restoreKey, noQuery, async (req, res) => {
    const { id, keyId } = parseInput(keyParams, req.params, 'params');
    res.json(await service.restore(id, keyId, changeContext(res)));
  });

  return router;
}
