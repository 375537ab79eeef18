import { Router, type RequestHandler } from 'express';
import { z } from 'zod';
import { EVENT_TYPES } from '../../shared/keyEvents';
import type { Requirement } from '../auth/authorize';
import { pagination, parseInput, uuid } from '../validation';
import type { EventsService } from './events.service';

const listQuery = z
  .object({
    type: z.enum(EVENT_TYPES, { error: `must be one of ${EVENT_TYPES.join(', ')}` }).optional(),
    keyId: uuid.optional(),
    since: z.iso.datetime({ offset: true, error: 'must be an ISO 8601 date-time' }).transform((v) => new Date(v)).optional(),
    cursor: z.string().min(1).max(200).optional(),
    limit: pagination.limit,
  })
  .strict();

export function orgEventsRouter(deps: { service: EventsService; authorize: (requirement: Requirement) => RequestHandler }) {
  const router = Router({ mergeParams: true });
  router.get('/events', deps.authorize({ scope: 'keys:read', orgParam: 'id' }), async (req, res) => {
    const { id } = parseInput(z.object({ id: uuid }), req.params, 'params');
    const query = parseInput(listQuery, req.query, 'query');
    res.json(await deps.service.list(id, query));
  });
  return router;
}
