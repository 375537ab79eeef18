import type { z } from 'zod';
import type { Requirement } from '../auth/authorize';
import type { ErrorCode } from '../errors';

/**
 * One route as the OpenAPI document describes it (api/openapi/document.ts). The router that
 * registers the route authorizes with the same `auth` and parses with the same schemas, so the
 * document cannot promise what the route does not check; test/openapi.test.ts checks that every
 * route the app registers has a contract and that real responses match it.
 */
export interface RouteContract {
  method: 'get' | 'post' | 'patch' | 'delete';
  /** Express syntax, relative to where the router is mounted. */
  path: string;
  operationId: string;
  summary: string;
  description?: string;
  /** What the route's authorize() requires; absent: a public route, no key. */
  auth?: Requirement;
  params?: z.ZodObject;
  query?: z.ZodObject;
  /** Request headers the route reads beyond authentication (Idempotency-Key), by their names. */
  headers?: z.ZodObject;
  body?: z.ZodObject;
  /**
   * Success responses by status. A body is a named schema (`.meta({ id })`); none: an empty body.
   * JSON unless `mediaType` says. `headers`: the response headers a client reads, by name, with
   * what they hold.
   */
  responses: Readonly<Record<number, { description: string; body?: z.ZodType; mediaType?: 'text/csv'; headers?: Readonly<Record<string, string>> }>>;
  /** Refusals of this route beyond those its auth, params, query and body imply. */
  errors?: readonly ErrorCode[];
}

/** The routes of one router and where the app mounts it. */
export interface MountedRoutes {
  mount: string;
  tag: string;
  routes: readonly RouteContract[];
}
