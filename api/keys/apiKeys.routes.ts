import { isIP } from 'node:net';
import { Router, type RequestHandler, type Response } from 'express';
import { z } from 'zod';
import type { Requirement } from '../auth/authorize';
import { displayName, jsonBody, pagination, parseInput, uuid } from '../validation';
import type { ApiKeysService } from './apiKeys.service';
import { SCOPES } from './scopes';

const keyParams = z.object({ id: uuid, keyId: uuid });
const orgParams = z.object({ id: uuid });

// An IPv4 or IPv6 address with an optional prefix length; PostgreSQL stores its network.
const cidr = z.string().refine((value) => {
  const [address, bits, ...rest] = value.split('/');
  const family = isIP(address);
  if (family === 0 || rest.length > 0) return false;
  return bits === undefined || (/^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128));
}, 'must be an IPv4 or IPv6 CIDR such as 203.0.113.0/24');
const expectedNetworks = z.array(cidr).max(100, 'must list at most 100 networks').nullable();

const createBody = z
  .object({
    name: displayName,
    scopes: z
      .array(z.enum(SCOPES, { error: `must be one of ${SCOPES.join(', ')}` }))
      .min(1, 'must list at least one scope')
      .transform((scopes) => [...new Set(scopes)]),
    expiresAt: z.iso.datetime({ offset: true, error: 'must be an ISO 8601 date-time' }).nullish(),
    expectedNetworks: expectedNetworks.optional(),
  })
  .strict();

const patchBody = z.object({ expectedNetworks }).strict();

const revokeDormantBody = z
  .object({
    dormantDays: z.number().int('must be a whole number').min(1).max(3650),
    dryRun: z.boolean().default(true),
  })
  .strict();

const rotateBody = z
  .object({
    gracePeriodSeconds: z.number().int('must be a whole number').min(0).max(604_800, 'must be at most 604800 (7 days)').optional(),
  })
  .strict();

// A response carrying a plaintext key must not be kept by a browser, proxy or CDN cache.
const revealOnce = (res: Response) => res.setHeader('Cache-Control', 'no-store');

export function apiKeysRouter(deps: { service: ApiKeysService; authorize: (requirement: Requirement) => RequestHandler; auditIp: (ip: string) => string }) {
  const { service, authorize } = deps;
  // The acting key and the client address, for the key-hands-out-no-more rule and the audit log.
  const changeContext = (res: Response) => ({ actor: res.locals.auth!.key, ip: deps.auditIp(res.locals.auth!.ip) });
  const readKeys = authorize({ scope: 'keys:read', orgParam: 'id' });
  const writeKeys = authorize({ scope: 'keys:write', orgParam: 'id', currentSecret: true });
  // Bodies are parsed after authentication: an anonymous caller gets 401 without its body being
  // read, and a key that sends bad JSON is still counted as a use.
  const readJson = jsonBody('16kb');
  const router = Router({ mergeParams: true });

  router.post('/', writeKeys, readJson, async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const body = parseInput(createBody, req.body, 'body');
    const created = await service.create(
      id,
      { name: body.name, scopes: body.scopes, expiresAt: body.expiresAt ? new Date(body.expiresAt) : null, expectedNetworks: body.expectedNetworks },
      changeContext(res),
    );
    revealOnce(res).status(201).json({ ...created.key, key: created.plaintext });
  });

  router.get('/', readKeys, async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const page = parseInput(z.object(pagination).strict(), req.query, 'query');
    res.json(await service.list(id, page));
  });

  router.post('/revoke-dormant', writeKeys, readJson, async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const body = parseInput(revokeDormantBody, req.body, 'body');
    res.json(await service.revokeDormant(id, body, changeContext(res)));
  });

  router.patch('/:keyId', writeKeys, readJson, async (req, res) => {
    const { id, keyId } = parseInput(keyParams, req.params, 'params');
    const body = parseInput(patchBody, req.body, 'body');
    res.json(await service.setExpectedNetworks(id, keyId, body.expectedNetworks, changeContext(res)));
  });

  router.get('/:keyId', readKeys, async (req, res) => {
    const { id, keyId } = parseInput(keyParams, req.params, 'params');
    res.json(await service.get(id, keyId));
  });

  router.post('/:keyId/rotate', writeKeys, readJson, async (req, res) => {
    const { id, keyId } = parseInput(keyParams, req.params, 'params');
    const body = parseInput(rotateBody, req.body, 'body');
    const rotated = await service.rotate(id, keyId, { ...changeContext(res), graceSeconds: body.gracePeriodSeconds });
    revealOnce(res).json({ ...rotated.key, key: rotated.plaintext });
  });

  router.post('/:keyId/revoke', writeKeys, async (req, res) => {
    const { id, keyId } = parseInput(keyParams, req.params, 'params');
    res.json(await service.revoke(id, keyId, changeContext(res)));
  });

  return router;
}
