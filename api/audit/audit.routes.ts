import { Router, type RequestHandler } from 'express';
import { z } from 'zod';
import { READ_ORG, type Requirement } from '../auth/authorize';
import type { RouteContract } from '../openapi/contract';
import { pagination, parseInput, uuid } from '../validation';
import type { UrlView } from '../webhooks/webhooks.service';
import { auditList, decodeCursor, type AuditService } from './audit.service';

const auditQuery = z
  .object({
    limit: pagination.limit,
    cursor: z
      .string()
      .transform((cursor, ctx) => decodeCursor(cursor) ?? (ctx.addIssue({ code: 'custom', message: 'must be a nextCursor from a previous page' }), z.NEVER))
      .optional(),
    actorKeyId: uuid.optional().meta({
      description: "Only the entries this key's requests wrote (the same cursor pages them); a key of another org, or none, is a 404",
    }),
  })
  .strict();

const orgParams = z.object({ id: uuid });

export const auditRoutes: RouteContract[] = [
  {
    method: 'get',
    path: '/',
    operationId: 'listAuditLog',
    summary: "The org's audit log: every change to its keys and webhooks, newest first",
    description:
      'A key without keys:write sees the URL of a webhook.create or webhook.delete entry reduced to its origin, with "/…" in place of a path or query, as the webhook list shows it.',
    auth: READ_ORG,
    params: orgParams,
    query: auditQuery,
    responses: { 200: { description: 'A page of entries', body: auditList } },
  },
];

export function auditRouter(deps: { service: AuditService; authorize: (requirement: Requirement) => RequestHandler }) {
  const router = Router({ mergeParams: true });

  router.get('/', deps.authorize(READ_ORG), async (req, res) => {
    const { id } = parseInput(orgParams, req.params, 'params');
    const query = parseInput(auditQuery, req.query, 'query');
    const urlView: UrlView = res.locals.auth!.key.scopes.includes('keys:write') ? 'whole' : 'origin';
    res.json(await deps.service.list(id, { limit: query.limit, beforeSeq: query.cursor ?? null, actorKeyId: query.actorKeyId }, urlView));
  });

  return router;
}
