import http from 'node:http';
import { loadConfig, type Config } from '../shared/config';
import { createDb } from '../shared/db';
import { createLogger, type Logger } from '../shared/logger';
import { closeServer, listen, onShutdownSignal } from '../shared/process';
import { createApp } from './app';
import { createUsageRecorder } from './usage/createUsageRecorder';

export async function startApi(config: Config, logger: Logger, databaseUrl: string) {
  const db = createDb(databaseUrl, { poolMax: config.database.poolMax, applicationName: 'keyusage-api' });
  const recorder = config.usage.enabled ? createUsageRecorder(config.usage, logger) : undefined;
  recorder?.start();
  const recordUse = recorder ? recorder.record.bind(recorder) : () => {};
  const { app } = createApp({ db, logger, config: config.api, privacy: config.privacy, recordUse });
  const server = http.createServer(app);
  let port: number;
  try {
    port = await listen(server, config.api.host, config.api.port, 'PORT');
  } catch (error) {
    await Promise.all([recorder?.stop(), db.destroy()]);
    throw error;
  }
  logger.info({ host: config.api.host, port, usageTracking: config.usage.enabled }, 'api listening');

  // Mirror of start: stop taking requests, send the uses they produced, then release the pool.
  const stop = async () => {
    await closeServer(server);
    await recorder?.stop();
    await db.destroy();
  };
  return { server, port, recorder, stop };
}

if (require.main === module) {
  const config = loadConfig();
  const logger = createLogger({ level: config.logLevel, name: 'api' });
  if (!config.database.url) {
    logger.fatal('DATABASE_URL is not set: run `npm start` for the embedded database, or set DATABASE_URL');
    process.exit(1);
  }
  startApi(config, logger, config.database.url).then(
    (api) => onShutdownSignal(logger, api.stop),
    (error) => {
      logger.fatal({ err: { message: error.message } }, 'api failed to start');
      process.exit(1);
    },
  );
}
