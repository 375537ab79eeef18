import { Router, type RequestHandler } from 'express';
import { z } from 'zod';
import type { Requirement } from '../auth/authorize';
import { pagination, parseInput, uuid } from '../validation';
import { decodeCursor, type AuditService } from './audit.service';

const auditQuery = z
  .object({
    limit: pagination.limit,
    cursor: z
      .string()
      .transform((cursor, ctx) => decodeCursor(cursor) ?? (ctx.addIssue({ code: 'custom', message: 'must be a nextCursor from a previous page' }), z.NEVER))
      .optional(),
  })
  .strict();

export function auditRouter(deps: { service: AuditService; authorize: (requirement: Requirement) => RequestHandler }) {
  const router = Router({ mergeParams: true });

  router.get('/', deps.authorize({ scope: 'keys:read', orgParam: 'id' }), async (req, res) => {
    const { id } = parseInput(z.object({ id: uuid }), req.params, 'params');
    const query = parseInput(auditQuery, req.query, 'query');
    res.json(await deps.service.list(id, { limit: query.limit, beforeId: query.cursor ?? null }));
  });

  return router;
}
