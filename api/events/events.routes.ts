import { Router, type RequestHandler } from 'express';
import { z } from 'zod';
import { EVENT_TYPES } from '../../shared/keyEvents';
import { READ_ORG, type Requirement } from '../auth/authorize';
import type { RouteContract } from '../openapi/contract';
import { pagination, parseInput, rangeStartParam, uuid } from '../validation';
import { eventList, type EventsService } from './events.service';

const listQuery = z
  .object({
    type: z.enum(EVENT_TYPES, { error: `must be one of ${EVENT_TYPES.join(', ')}` }).optional(),
    keyId: uuid.optional(),
    since: rangeStartParam.optional(),
    cursor: z.string().min(1).max(200).optional(),
    limit: pagination.limit,
  })
  .strict();

const orgParams = z.object({ id: uuid });

export const eventsRoutes: RouteContract[] = [
  {
    method: 'get',
    path: '/events',
    operationId: 'listKeyEvents',
    summary: "The org's key events (docs/events.md), newest first",
    auth: READ_ORG,
    params: orgParams,
    query: listQuery,
    responses: { 200: { description: 'A page of events', body: eventList } },
  },
];

export function orgEventsRouter(deps: { service: EventsService; authorize: (requirement: Requirement) => RequestHandler }) {
  const router = Router({ mergeParams: true });
  router.get('/events', deps.authorize(READ_ORG), async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const query = parseInput(listQuery, req.query, 'query');
    res.json(await deps.service.list(id, query));
  });
  return router;
}
