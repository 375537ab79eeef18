import { randomUUID } from 'node:crypto';
import { steadyNow } from '../shared/steadyClock';
import express, { type Request, type RequestHandler, type Response } from 'express';
import type { Config } from '../shared/config';
import type { Db } from '../shared/db';
import { truncateIp } from '../shared/ipTruncation';
import type { Logger } from '../shared/logger';
import { rateLimitedWarn } from '../shared/rateLimitedLog';
import { auditRouter } from './audit/audit.routes';
import { createAuditService } from './audit/audit.service';
import { authorizer, type PendingUses, type RecordUse } from './auth/authorize';
import { clientAddressResolver } from './auth/clientAddress';
import { createAuthThrottle } from './auth/failureThrottle';
import { orgConcurrency } from './auth/orgConcurrency';
import { orgWriteBudget } from './auth/orgWriteBudget';
import { createKeyVerifier } from './auth/keyVerifier';
import { whoami } from './auth/whoami';
import { errorMiddleware, quotedPath, routeNotFound } from './errors';
import { noQuery } from './validation';
import { healthHandler } from './health';
import { serveOpenApiDocument } from './openapi/document';
import { privateApiResponses, securityHeaders } from './securityHeaders';
import { dashboardRouter } from './ui/dashboard.routes';
import type { RequestObservation } from './metrics';
import { orgEventsRouter } from './events/events.routes';
import { createEventsService } from './events/events.service';
import { apiKeysRouter } from './keys/apiKeys.routes';
import { createApiKeysService } from './keys/apiKeys.service';
import { orgSeriesRouter, orgUsageRouter } from './usage/usage.routes';
import { createUsageService } from './usage/usage.service';
import { webhooksRouter } from './webhooks/webhooks.routes';
import { createWebhooksService } from './webhooks/webhooks.service';
import { lookupSlots } from '../shared/lookupSlots';
import type { Lookup } from '../shared/webhookTarget';
import { CLIENT_CLOSED } from './csvResponse';

export interface AppDeps {
  db: Db;
  /** The pool /healthz asks (api/main.ts): its own, so a full `db` is not a database down. `db` unless given. */
  healthDb?: Db;
  logger: Logger;
  config: Config['api'];
  webhooks: Pick<Config['webhooks'], 'allowPrivateTargets' | 'timeoutMs' | 'maxPerOrg'> & { lookup?: Lookup };
  /** IP_TRUNCATE also applies to the addresses the audit log keeps; off when not given. */
  privacy?: Pick<Config['privacy'], 'truncateIps'>;
  recordUse: RecordUse;
  /** Told of authorizations whose use is still to be recorded, so a stop can wait for them. */
  pendingUses?: PendingUses;
  /** Whether recordUse records (USAGE_TRACKING); true unless given. */
  usageTracking?: boolean;
  /** Each finished request, for the metrics (api/metrics.ts). */
  onRequest?: (request: RequestObservation) => void;
  now?: () => number;
  /**
   * The clock of the key cache's TTL, the throttle's windows, the health answer's cache and the
   * rate-limited warnings: steady unless given (shared/steadyClock.ts). On the wall clock a step
   * back kept every cached key fresh for the step: a key revoked on another instance went on
   * working for as long (an hour for an hour's step), and a throttled address waited as long.
   * Tests that move `now` to age the cache or the windows pass the same clock here.
   */
  elapsed?: () => number;
}

// A lockout is worth a log line; a distributed attack locking thousands of addresses is worth one per interval.
const THROTTLE_LOG_INTERVAL_MS = 10_000;

const REQUEST_ID = /^[A-Za-z0-9._-]{1,64}$/;

// A router mounted on a pattern sees its own URL as req.baseUrl (`/api/orgs/<uuid>/api-keys`);
// the label must be the pattern, or every org would be a series of its own.
const routePrefix =
  (pattern: string): RequestHandler =>
  (_req, res, next) => {
    res.locals.routePrefix = pattern;
    next();
  };

function routeLabel(req: Request, res: Response): string {
  if (!req.route) return 'unmatched';
  const prefix: string = res.locals.routePrefix ?? '';
  return req.route.path === '/' && prefix ? prefix : prefix + req.route.path;
}

function requestContext(logger: Logger, onRequest: AppDeps['onRequest']): RequestHandler {
  return (req, res, next) => {
    const incoming = req.headers['x-request-id'];
    const requestId = typeof incoming === 'string' && REQUEST_ID.test(incoming) ? incoming : randomUUID();
    res.locals.requestId = requestId;
    res.setHeader('X-Request-Id', requestId);
    const started = process.hrtime.bigint();
    // 'close', not 'finish': a response whose client left before it was written (a proxy's
    // timeout while the database stalled, or a probe that resets at once) never finishes, and was
    // missing from the log and the latency histogram; it is logged with 499 (client closed).
    res.on('close', () => {
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
      const status = res.locals.loggedStatus ?? (res.writableFinished ? res.statusCode : CLIENT_CLOSED);
      logger.info(
        {
          requestId,
          method: req.method,
          path: quotedPath(req.baseUrl + req.path),
          status,
          durationMs,
          keyId: res.locals.auth?.key.id,
        },
        'request',
      );
      onRequest?.({ method: req.method, route: routeLabel(req, res), status, seconds: durationMs / 1000 });
    });
    next();
  };
}

// IP_TRUNCATE applies to every address the API writes down: the audit log's, and the throttle's
// lockout warnings (a log is beyond IP_RETENTION_DAYS and erasure). The throttle itself counts
// full addresses, in memory, an IPv6 client by its /64 (2001:db8:1:2::/64), whose network is cut
// as an address's.
const writtenAddress = (deps: AppDeps) => (deps.privacy?.truncateIps ? (ip: string) => truncateIp(ip.replace(/\/64$/, '')) : (ip: string) => ip);

// Who is calling: the failed-authentication throttle, the key verifier (its cache told of every
// revocation by the keys service) and the per-route authorizer built on both.
function createAuthentication(deps: AppDeps, clocks: { now: () => number; elapsed: () => number }) {
  const { now, elapsed } = clocks;
  const warn = rateLimitedWarn(deps.logger, THROTTLE_LOG_INTERVAL_MS, elapsed);
  const written = writtenAddress(deps);
  const throttle = createAuthThrottle(deps.config.authThrottle, elapsed, (scope, subject) =>
    warn(
      `auth_throttle_${scope}`,
      { [scope === 'ip' ? 'ip' : 'keyId']: scope === 'ip' ? written(subject) : subject, stats: { ...throttle.stats } },
      'too many failed authentication attempts: throttled',
    ),
  );
  const verifier = createKeyVerifier({
    db: deps.db,
    peppers: [deps.config.keyPepper, ...deps.config.previousKeyPeppers],
    nextPepper: deps.config.nextKeyPepper,
    cacheTtlMs: deps.config.keyCacheTtlMs,
    now,
    elapsed,
    mayReload: (keyId) => !throttle.keyLocked(keyId),
    onRehashError: (error) =>
      warn('pepper_rehash', { err: { message: error.message } }, 'rehashing a key with the current KEY_PEPPER failed; retried on its next use'),
  });
  const orgTurns = orgConcurrency(deps.config.maxConcurrentPerOrg);
  const orgWrites = deps.config.writesPerOrgMinute > 0 ? orgWriteBudget(deps.config.writesPerOrgMinute, elapsed) : undefined;
  const authorize = authorizer({
    verifier,
    recordUse: deps.recordUse,
    pendingUses: deps.pendingUses,
    clientAddress: clientAddressResolver(deps.config.trustProxy),
    throttle,
    orgConcurrency: orgTurns,
    orgWrites,
  });
  return { throttle, verifier, authorize, orgTurns, orgWrites };
}

function createServices(deps: AppDeps, verifier: ReturnType<typeof createKeyVerifier>, now: () => number) {
  return {
    apiKeys: createApiKeysService({
      db: deps.db,
      pepper: deps.config.keyPepper,
      defaultGraceSeconds: deps.config.rotationGraceSeconds,
      maxKeysPerOrg: deps.config.maxKeysPerOrg,
      idempotencyTtlSeconds: deps.config.idempotencyTtlSeconds,
      verifier,
      usageTracking: deps.usageTracking,
      now,
    }),
    usage: createUsageService({ db: deps.db, now, delay: deps.config.usageDelay, eventSummaryDays: deps.config.eventSummaryDays }),
    events: createEventsService({ db: deps.db }),
    webhooks: createWebhooksService({
      db: deps.db,
      pepper: deps.config.keyPepper,
      allowPrivateTargets: deps.webhooks.allowPrivateTargets,
      timeoutMs: deps.webhooks.timeoutMs,
      maxPerOrg: deps.webhooks.maxPerOrg,
      lookup: deps.webhooks.lookup,
      lookupSlots: lookupSlots(),
      idempotencyTtlSeconds: deps.config.idempotencyTtlSeconds,
      now,
    }),
    audit: createAuditService({ db: deps.db }),
  };
}

export function createApp(deps: AppDeps) {
  const now = deps.now ?? Date.now;
  const elapsed = deps.elapsed ?? steadyNow;
  const { throttle, verifier, authorize, orgTurns, orgWrites } = createAuthentication(deps, { now, elapsed });
  const services = createServices(deps, verifier, now);
  const { apiKeys, usage, events, webhooks, audit } = services;

  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', deps.config.trustProxy);
  app.use(requestContext(deps.logger, deps.onRequest));
  app.use(securityHeaders);
  app.use('/api', privateApiResponses);
  // Express answers OPTIONS itself, with a text/plain list of methods and no key asked for: the
  // API serves no cross-origin requests, so it is a route it does not have, like any other method.
  app.use((req, res, next) => (req.method === 'OPTIONS' ? routeNotFound(req, res, next) : next()));
  app.use(dashboardRouter());

  app.get('/healthz', healthHandler(deps.healthDb ?? deps.db, elapsed));

  app.get('/openapi.json', serveOpenApiDocument());

  app.get('/api/whoami', authorize(), noQuery, whoami);

  const auditIp = writtenAddress(deps);
  const orgKeys = '/api/orgs/:id/api-keys';
  app.use(orgKeys, routePrefix(orgKeys));
  app.use(orgKeys, orgUsageRouter({ service: usage, authorize }));
  app.use(orgKeys, orgEventsRouter({ service: events, authorize }));
  app.use(orgKeys, apiKeysRouter({ service: apiKeys, authorize, auditIp }));
  const orgUsage = '/api/orgs/:id/usage';
  app.use(orgUsage, routePrefix(orgUsage));
  app.use(orgUsage, orgSeriesRouter({ service: usage, authorize }));
  const orgWebhooks = '/api/orgs/:id/webhooks';
  app.use(orgWebhooks, routePrefix(orgWebhooks));
  app.use(orgWebhooks, webhooksRouter({ service: webhooks, authorize, auditIp }));
  const orgAudit = '/api/orgs/:id/audit-log';
  app.use(orgAudit, routePrefix(orgAudit));
  app.use(orgAudit, auditRouter({ service: audit, authorize }));

  app.use(routeNotFound);
  app.use(errorMiddleware(deps.logger));

  return { app, services, verifier, throttle, orgTurns, orgWrites };
}
