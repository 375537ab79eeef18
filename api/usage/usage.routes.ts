import { Router, type RequestHandler } from 'express';
import { z } from 'zod';
import type { Requirement } from '../auth/authorize';
import { displayName, pagination, parseInput, uuid } from '../validation';
import type { UsageService } from './usage.service';

const booleanParam = z.enum(['true', 'false'], { error: 'must be true or false' }).transform((v) => v === 'true');
// An unencoded "+" in a query string reads as a space: 2026-01-01T00:00:00+02:00 arrives as
// "2026-01-01T00:00:00 02:00".
const plusAsSpace = / \d{2}(:?\d{2})?$/;
const dateParam = z.iso
  .datetime({
    offset: true,
    error: (issue) =>
      typeof issue.input === 'string' && plusAsSpace.test(issue.input)
        ? 'must be an ISO 8601 date-time; its "+" arrived as a space: send it as %2B, or give the time in UTC with Z'
        : 'must be an ISO 8601 date-time',
  })
  .transform((v) => new Date(v));

const listQuery = z
  .object({
    // Absent: every key; true: only dormant keys; false: only keys that are not dormant.
    dormant: booleanParam.optional(),
    status: z.enum(['active', 'revoked', 'expired'], { error: 'must be active, revoked or expired' }).optional(),
    dormantDays: z.coerce.number().int('must be a whole number').min(1).max(3650).default(30),
    sort: z.enum(['createdAt', 'lastUsedAt', 'requestCount'], { error: 'must be createdAt, lastUsedAt or requestCount' }).default('createdAt'),
    order: z.enum(['asc', 'desc'], { error: 'must be asc or desc' }).default('desc'),
    keyId: uuid.optional(),
    q: displayName.optional(),
    ...pagination,
  })
  .strict();

const seriesQuery = z
  .object({
    from: dateParam.optional(),
    to: dateParam.optional(),
    granularity: z.enum(['hour', 'day'], { error: 'must be hour or day' }).default('hour'),
    byOutcome: booleanParam.default(false),
  })
  .strict();

export function orgUsageRouter(deps: { service: UsageService; authorize: (requirement: Requirement) => RequestHandler }) {
  const router = Router({ mergeParams: true });
  const readUsage = deps.authorize({ scope: 'keys:read', orgParam: 'id' });

  router.get('/usage', readUsage, async (req, res) => {
    const { id } = parseInput(z.object({ id: uuid }), req.params, 'params');
    const query = parseInput(listQuery, req.query, 'query');
    res.json(await deps.service.list(id, { ...query, nameContains: query.q }));
  });

  router.get('/:keyId/usage', readUsage, async (req, res) => {
    const { id, keyId } = parseInput(z.object({ id: uuid, keyId: uuid }), req.params, 'params');
    const query = parseInput(seriesQuery, req.query, 'query');
    res.json(await deps.service.timeSeries(id, keyId, query));
  });

  return router;
}
