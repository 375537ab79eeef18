import type { RequestHandler } from 'express';
import { z } from 'zod';
import { ERROR_STATUS, errorBody, type ErrorCode } from '../errors';
import type { MountedRoutes, RouteContract } from './contract';
import { API_ROUTES } from './routes';

// The OpenAPI 3.1 document, built from the route contracts and the zod schemas the routes parse
// with and the services shape their answers by. `npm run openapi` writes it to docs/openapi.json;
// GET /openapi.json serves it.

/** The API's version in the document; test/openapi.test.ts holds it equal to package.json's. */
export const API_VERSION = '0.2.0';

type JsonSchema = Record<string, unknown>;

const SCHEMAS = '#/components/schemas/';
const ref = (id: string) => ({ $ref: SCHEMAS + id });
const SECURITY = [{ bearerKey: [] }, { apiKeyHeader: [] }];

const ERROR_MEANING: Record<ErrorCode, string> = {
  invalid_request: 'a parameter, the query or the body is invalid (the message names each field and why), or the body is not JSON',
  unauthorized: 'no key, or a key that is malformed, unknown, wrong, revoked or expired (one message for all)',
  forbidden: 'the key lacks the scope, or asks for more than it holds',
  stale_secret: "the key's previous secret, still valid during a rotation's grace period, cannot manage keys or webhooks",
  not_found: "no such org, key or webhook (another org's is not found either)",
  conflict: 'the resource is not in a state that allows the change',
  idempotency_key_reused:
    'the Idempotency-Key was sent, within IDEMPOTENCY_KEY_TTL_SECONDS, with another request (another route, key or body): nothing was changed; use a new key for a new request',
  payload_too_large: 'the body is over 16 kB (512 kB for revoke-dormant)',
  unsupported_media_type: 'the body is not application/json (UTF-8)',
  too_many_requests:
    "too many failed authentication attempts from this address or for this key, or (on an org's routes) too many of the org's requests already waiting for their turn (4 × API_MAX_CONCURRENT_PER_ORG), or (on a change other than a revocation) the org's changes of the last minute reached API_WRITES_PER_ORG_MINUTE; retry after Retry-After seconds",
  internal_error: 'an unexpected error (logged with the requestId)',
  service_unavailable: 'the database does not answer, or the request took it longer than API_STATEMENT_TIMEOUT_MS; retry after Retry-After seconds',
};

// zod writes an ISO date-time as `format: date-time` plus a 500-character pattern that says the
// same; the format is what OpenAPI tools read.
const JSON_SCHEMA_OPTIONS = {
  target: 'draft-2020-12',
  unrepresentable: 'throw',
  override: ({ jsonSchema }) => {
    if (jsonSchema.format === 'date-time') delete jsonSchema.pattern;
  },
} as const satisfies Parameters<typeof z.toJSONSchema>[1];

const RETRY_AFTER = { 'Retry-After': { description: 'Seconds to wait before retrying', schema: { type: 'integer', minimum: 0 } } };

// The request schemas describe what a client sends (io: 'input'): a query's `limit` is a number
// with a default, an id a string, before the route's coercions and transforms.
function inputSchema(schema: z.ZodType): JsonSchema {
  const { $schema: _dialect, ...json } = z.toJSONSchema(schema, { ...JSON_SCHEMA_OPTIONS, io: 'input' }) as JsonSchema;
  if ('$defs' in json) throw new Error('A request schema must not contain a named (.meta({ id })) schema');
  return json;
}

function parameters(route: RouteContract): JsonSchema[] {
  const located = [
    ['path', route.params],
    ['query', route.query],
    ['header', route.headers],
  ] as const;
  return located.flatMap(([where, schema]) => {
    if (!schema) return [];
    const json = inputSchema(schema) as { properties: Record<string, JsonSchema>; required?: string[] };
    return Object.entries(json.properties).map(([name, property]) => ({
      name,
      in: where,
      required: where === 'path' || (json.required ?? []).includes(name),
      schema: property,
    }));
  });
}

function requestBody(body: z.ZodObject) {
  const schema = inputSchema(body);
  // A body whose every field is optional may be left out, unless it must hold one of them (minProperties).
  const required = (Array.isArray(schema.required) && schema.required.length > 0) || (typeof schema.minProperties === 'number' && schema.minProperties > 0);
  return { required, content: { 'application/json': { schema } } };
}

/** The refusals a route's requirement and inputs imply, plus its own. */
export function errorCodes(route: RouteContract): ErrorCode[] {
  const codes = new Set<ErrorCode>(route.errors);
  const { auth } = route;
  // A keyed route refuses a query parameter it does not read (validation.ts, noQuery).
  if (auth || route.params || route.query || route.headers || route.body) codes.add('invalid_request');
  if (route.body) ['payload_too_large', 'unsupported_media_type'].forEach((code) => codes.add(code as ErrorCode));
  if (auth) {
    ['unauthorized', 'too_many_requests', 'internal_error', 'service_unavailable'].forEach((code) => codes.add(code as ErrorCode));
    if (auth.scopes?.length) codes.add('forbidden');
    if (auth.currentSecret) codes.add('stale_secret');
  }
  if (auth?.orgParam || Object.keys(route.params?.shape ?? {}).length > 0) codes.add('not_found');
  return (Object.keys(ERROR_STATUS) as ErrorCode[]).filter((code) => codes.has(code));
}

// One response component per set of codes a status carries (403 is forbidden, stale_secret or
// either), so each is written once and every route refers to it.
const responseName = (codes: ErrorCode[]) => codes.map((code) => code.replace(/(^|_)(\w)/g, (_m, _sep, c: string) => c.toUpperCase())).join('Or');

function errorResponse(status: number, codes: ErrorCode[]): JsonSchema {
  return {
    description: codes.map((code) => `${code}: ${ERROR_MEANING[code]}`).join('; '),
    ...(status === 429 || status === 503 ? { headers: RETRY_AFTER } : {}),
    // The one error shape, with the codes this status can carry.
    content: { 'application/json': { schema: { allOf: [ref(namedId(errorBody)), { properties: { error: { properties: { code: { enum: codes } } } } }] } } },
  };
}

function errorResponses(route: RouteContract, components: Record<string, JsonSchema>): Record<number, JsonSchema> {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of errorCodes(route)) byStatus.set(ERROR_STATUS[code], [...(byStatus.get(ERROR_STATUS[code]) ?? []), code]);
  return Object.fromEntries(
    [...byStatus].map(([status, codes]) => {
      const name = responseName(codes);
      components[name] ??= errorResponse(status, codes);
      return [status, { $ref: `#/components/responses/${name}` }];
    }),
  );
}

function namedId(schema: z.ZodType): string {
  const id = z.globalRegistry.get(schema)?.id;
  if (typeof id !== 'string') throw new Error('A response body must be a named schema (.meta({ id }))');
  return id;
}

function successResponses(route: RouteContract): Record<number, JsonSchema> {
  return Object.fromEntries(
    Object.entries(route.responses).map(([status, { description, body, mediaType, headers }]) => [
      status,
      {
        description,
        ...(headers
          ? { headers: Object.fromEntries(Object.entries(headers).map(([name, meaning]) => [name, { description: meaning, schema: { type: 'string' } }])) }
          : {}),
        ...(body ? { content: { [mediaType ?? 'application/json']: { schema: ref(namedId(body)) } } } : {}),
      },
    ]),
  );
}

function operation(route: RouteContract, tag: string, responses: Record<string, JsonSchema>): JsonSchema {
  const scopes = route.auth?.scopes ?? [];
  const scope = scopes.length > 0 ? ` Requires a key with the ${scopes.join(' and ')} scope${scopes.length > 1 ? 's' : ''}.` : '';
  const description = `${route.description ?? ''}${scope}`.trim();
  const params = parameters(route);
  return {
    tags: [tag],
    operationId: route.operationId,
    summary: route.summary,
    ...(description ? { description } : {}),
    security: route.auth ? SECURITY : [],
    ...(params.length > 0 ? { parameters: params } : {}),
    ...(route.body ? { requestBody: requestBody(route.body) } : {}),
    responses: { ...successResponses(route), ...errorResponses(route, responses) },
  };
}

/** An Express path (`/api/orgs/:id/api-keys` + `/:keyId`) as an OpenAPI path (`/api/orgs/{id}/api-keys/{keyId}`). */
export function openApiPath(mount: string, path: string): string {
  const joined = path === '/' ? mount : mount + path;
  return joined.replace(/:(\w+)/g, '{$1}');
}

function paths(mounted: readonly MountedRoutes[], responses: Record<string, JsonSchema>): Record<string, Record<string, JsonSchema>> {
  const result: Record<string, Record<string, JsonSchema>> = {};
  for (const { mount, tag, routes } of mounted) {
    for (const route of routes) {
      const path = openApiPath(mount, route.path);
      if (result[path]?.[route.method]) throw new Error(`Two contracts for ${route.method.toUpperCase()} ${path}`);
      result[path] = { ...result[path], [route.method]: operation(route, tag, responses) };
    }
  }
  return result;
}

// Every named schema, each once; the others refer to it by $ref. Only response shapes are named
// (inputSchema refuses a named request schema), so all of them describe output. Sorted, so the
// file does not change with import order.
function componentSchemas(): Record<string, JsonSchema> {
  const { schemas } = z.toJSONSchema(z.globalRegistry, { ...JSON_SCHEMA_OPTIONS, io: 'output', uri: (id) => SCHEMAS + id });
  return Object.fromEntries(
    Object.keys(schemas)
      .sort()
      .map((id) => {
        const { $schema: _dialect, $id: _id, ...schema } = schemas[id] as JsonSchema;
        return [id, schema];
      }),
  );
}

export function buildOpenApiDocument() {
  const responses: Record<string, JsonSchema> = {};
  const builtPaths = paths(API_ROUTES, responses);
  return {
    openapi: '3.1.1',
    info: {
      title: 'keyusage API',
      version: API_VERSION,
      description:
        'API keys with exact, near-real-time per-key usage analytics. Every response carries an X-Request-Id header; every error the body {"error":{"code","message","requestId"}}. Generated from the zod schemas the routes validate with (`npm run openapi`).',
      license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
    },
    tags: [...new Set(API_ROUTES.map((mounted) => mounted.tag))].map((name) => ({ name })),
    paths: builtPaths,
    components: {
      schemas: componentSchemas(),
      responses: Object.fromEntries(
        Object.keys(responses)
          .sort()
          .map((name) => [name, responses[name]]),
      ),
      securitySchemes: {
        bearerKey: { type: 'http', scheme: 'bearer', description: 'Authorization: Bearer <key>' },
        apiKeyHeader: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
      },
    },
  };
}

export type OpenApiDocument = ReturnType<typeof buildOpenApiDocument>;

/** GET /openapi.json: built on the first request, then the same document for every other. */
export function serveOpenApiDocument(): RequestHandler {
  let document: OpenApiDocument | undefined;
  return (_req, res) => {
    document ??= buildOpenApiDocument();
    res.json(document);
  };
}

/** The document as docs/openapi.json holds it: two-space indent, a trailing newline. */
export const renderOpenApiDocument = () => `${JSON.stringify(buildOpenApiDocument(), null, 2)}\n`;
