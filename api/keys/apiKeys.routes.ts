import express, { Router, type RequestHandler, type Response } from 'express';
import { z } from 'zod';
import type { Requirement } from '../auth/authorize';
import { displayName, pagination, parseInput, uuid } from '../validation';
import type { ApiKeysService } from './apiKeys.service';
import { SCOPES } from './scopes';

const keyParams = z.object({ id: uuid, keyId: uuid });
const orgParams = z.object({ id: uuid });

const createBody = z
  .object({
    name: displayName,
    scopes: z
      .array(z.enum(SCOPES, { error: `must be one of ${SCOPES.join(', ')}` }))
      .min(1, 'must list at least one scope')
      .transform((scopes) => [...new Set(scopes)]),
    expiresAt: z.iso.datetime({ offset: true, error: 'must be an ISO 8601 date-time' }).nullish(),
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
  const jsonBody = express.json({ limit: '16kb' });
  const router = Router({ mergeParams: true });

  router.post('/', writeKeys, jsonBody, async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const body = parseInput(createBody, req.body, 'body');
    const created = await service.create(
      id,
      { name: body.name, scopes: body.scopes, expiresAt: body.expiresAt ? new Date(body.expiresAt) : null },
      changeContext(res),
    );
    revealOnce(res).status(201).json({ ...created.key, key: created.plaintext });
  });

  router.get('/', readKeys, async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const page = parseInput(z.object(pagination).strict(), req.query, 'query');
    res.json(await service.list(id, page));
  });

  router.get('/:keyId', readKeys, async (req, res) => {
    const { id, keyId } = parseInput(keyParams, req.params, 'params');
    res.json(await service.get(id, keyId));
  });

  router.post('/:keyId/rotate', writeKeys, jsonBody, async (req, res) => {
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
