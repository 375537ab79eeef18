import { z } from 'zod';
import { auditRoutes } from '../audit/audit.routes';
import { whoamiBody } from '../auth/whoami';
import { eventsRoutes } from '../events/events.routes';
import { healthBody } from '../health';
import { apiKeysRoutes } from '../keys/apiKeys.routes';
import { orgSeriesRoutes, usageRoutes } from '../usage/usage.routes';
import { webhooksRoutes } from '../webhooks/webhooks.routes';
import type { MountedRoutes, RouteContract } from './contract';

const openApiBody = z
  .looseObject({ openapi: z.string(), paths: z.record(z.string(), z.unknown()) })
  .meta({ id: 'OpenApiDocument', description: 'This document' });

// The routes app.ts registers itself.
const serviceRoutes: RouteContract[] = [
  {
    method: 'get',
    path: '/healthz',
    operationId: 'health',
    summary: 'Whether the API and its database answer (no key; one answer serves every probe for a second)',
    responses: { 200: { description: 'Up', body: healthBody }, 503: { description: 'The database does not answer', body: healthBody } },
  },
  {
    method: 'get',
    path: '/openapi.json',
    operationId: 'openApiDocument',
    summary: 'This OpenAPI 3.1 document (no key)',
    responses: { 200: { description: 'The document', body: openApiBody } },
  },
  {
    method: 'get',
    path: '/api/whoami',
    operationId: 'whoAmI',
    summary: 'The key the request is made with: a check that a key works',
    auth: {},
    responses: { 200: { description: 'The key', body: whoamiBody } },
  },
];

/**
 * Every route of the API, where app.ts mounts its router and the tag it is listed under. The
 * dashboard's page and static files are not part of the contract.
 */
export const API_ROUTES: readonly MountedRoutes[] = [
  { mount: '', tag: 'Service', routes: serviceRoutes },
  { mount: '/api/orgs/:id/api-keys', tag: 'API keys', routes: apiKeysRoutes },
  { mount: '/api/orgs/:id/api-keys', tag: 'Usage', routes: usageRoutes },
  { mount: '/api/orgs/:id/usage', tag: 'Usage', routes: orgSeriesRoutes },
  { mount: '/api/orgs/:id/api-keys', tag: 'Events', routes: eventsRoutes },
  { mount: '/api/orgs/:id/webhooks', tag: 'Webhooks', routes: webhooksRoutes },
  { mount: '/api/orgs/:id/audit-log', tag: 'Audit log', routes: auditRoutes },
];
