import http from 'node:http';
import { loadConfig, type Config } from '../shared/config';
import { createCheckedDb, createDb, warnIfServerAllowsFewer, type DbOptions } from '../shared/db';
import { createLogger, type Logger } from '../shared/logger';
import { metricsServer } from '../shared/metrics';
import { closeServer, listen, onShutdownSignal, setupOrExit, stopWhenSupervisorGone } from '../shared/process';
import { steadyNow } from '../shared/steadyClock';
import { STOP_BUDGET_MS } from '../shared/stopBudget';
import { within } from '../shared/within';
import { createApp } from './app';
import { HEALTH_MAX_RUNNING } from './health';
import { createApiMetrics } from './metrics';
import { createUsageRecorder } from './usage/createUsageRecorder';

// Node checks open connections against the headers and request timeouts every 30 s by default:
// a slow client kept its socket up to that much past them.
const TIMEOUT_CHECK_MS = 1_000;

// The API's HTTP server with the limits of API_REQUEST_TIMEOUT_MS, API_HEADERS_TIMEOUT_MS and
// API_KEEP_ALIVE_TIMEOUT_MS, not Node's (a client sending its headers a byte at a time held a
// socket for 60 s).
function apiServer(app: http.RequestListener, limits: Config['api']['server']): http.Server {
  const server = http.createServer(
    {
      requestTimeout: limits.requestTimeoutMs,
      headersTimeout: limits.headersTimeoutMs,
      connectionsCheckingInterval: Math.min(TIMEOUT_CHECK_MS, limits.headersTimeoutMs),
    },
    app,
  );
  server.keepAliveTimeout = limits.keepAliveTimeoutMs;
  // An Expect other than 100-continue was answered by Node itself, a bare 417 without request id,
  // log line or metric; RFC 9110 lets a server ignore it, so the request is served as any other.
  server.on('checkExpectation', app);
  return server;
}

export async function startApi(config: Config, logger: Logger, databaseUrl: string) {
  // Before the database: its settings refused (COLLECTOR_PORT=0) are said as such, not hidden
  // behind a database that is down, and leave no pool open.
  const recorder = config.usage.enabled ? createUsageRecorder(config.usage, logger) : undefined;
  const dbOptions: DbOptions = {
    poolMax: config.database.poolMax,
    connectTimeoutMs: config.database.connectTimeoutMs,
    replyTimeoutMs: config.database.replyTimeoutMs,
    idleInTransactionTimeoutMs: config.database.idleInTransactionTimeoutMs,
    statementTimeoutMs: config.api.statementTimeoutMs,
    applicationName: 'keyusage-api',
  };
  const db = await createCheckedDb(databaseUrl, dbOptions, logger);
  const healthDb = createDb(databaseUrl, { ...dbOptions, poolMax: HEALTH_MAX_RUNNING, applicationName: 'keyusage-api-health' });
  await warnIfServerAllowsFewer(
    db,
    {
      connections: config.database.poolMax + HEALTH_MAX_RUNNING,
      from: `DATABASE_POOL_MAX (${config.database.poolMax}) and /healthz's own ${HEALTH_MAX_RUNNING}`,
    },
    logger,
  );
  recorder?.start();
  const recordUse = recorder ? recorder.record.bind(recorder) : () => {};
  const apiMetrics = createApiMetrics();
  const { app, verifier, throttle, orgTurns, orgWrites } = createApp({
    db,
    healthDb,
    logger,
    config: config.api,
    webhooks: config.webhooks,
    privacy: config.privacy,
    recordUse,
    pendingUses: recorder,
    usageTracking: config.usage.enabled,
    onRequest: apiMetrics.observeRequest,
  });
  const server = apiServer(app, config.api.server);
  // On its own port, loopback by default: the public port never serves /metrics.
  const metrics = metricsServer({
    exposition: () =>
      apiMetrics.exposition({ recorder, keyCache: verifier.stats, throttle: throttle.stats, lookups: throttle.lookupStats, orgTurns, orgWrites }),
  });
  let port: number;
  let metricsPort: number;
  try {
    metricsPort = await listen(metrics, config.api.metricsHost, config.api.metricsPort, 'API_METRICS_PORT');
    port = await listen(server, config.api.host, config.api.port, 'PORT');
  } catch (error) {
    await Promise.all([closeServer(metrics), recorder?.stop(), db.destroy(), healthDb.destroy()]);
    throw error;
  }
  logger.info({ host: config.api.host, port, metrics: `${config.api.metricsHost}:${metricsPort}`, usageTracking: config.usage.enabled }, 'api listening');

  // Mirror of start: stop taking requests, send the uses they produced, close the metrics port,
  // then release the pools. The server's grace (5 s) and the recorder's wait (6 s at most) leave
  // the last two steps what is left of the stop's budget, under the launcher's SIGKILL
  // (shared/stopBudget.ts).
  const stop = async () => {
    const stopBy = steadyNow() + STOP_BUDGET_MS;
    await closeServer(server);
    await recorder?.stop();
    await closeServer(metrics, Math.max(0, stopBy - steadyNow()));
    // destroy() waits for every connection in use: the query of a request whose connection the
    // server's grace cut goes on, waiting on a lock up to API_STATEMENT_TIMEOUT_MS, for a client
    // that is gone. The process need not wait: PostgreSQL rolls back an open transaction once it
    // sees the connection closed.
    const closed = await within(
      Promise.all([db.destroy(), healthDb.destroy()]).then(() => true),
      Math.max(0, stopBy - steadyNow()),
    );
    if (closed === undefined) logger.warn('a database query is still running at stop; the process exits without it');
  };
  return { server, port, metricsPort, recorder, stop };
}

if (require.main === module) {
  const config = setupOrExit(() => loadConfig());
  const logger = createLogger({ level: config.logLevel, name: 'api' });
  if (!config.database.url) {
    logger.fatal('DATABASE_URL is not set: run `npm start` for the embedded database, or set DATABASE_URL');
    process.exit(1);
  }
  startApi(config, logger, config.database.url).then(
    (api) => stopWhenSupervisorGone(config.supervised, onShutdownSignal(logger, api.stop)),
    (error) => {
      logger.fatal(`api failed to start: ${error.message}`);
      process.exit(1);
    },
  );
}
