import type { Test } from 'tap';
import type { CollectorOverrides } from '../../collector/main';
import { createStatsdSink } from '../../api/usage/statsdSink';
import { UsageRecorder } from '../../api/usage/usageRecorder';
import { createLogger } from '../../shared/logger';
import { seedOrg, startTestApi } from './api';
import { startTestCollector } from './collector';
import { freshDatabase } from './database';

// The whole path: auth middleware → UsageRecorder → hot-shots over real UDP → collector →
// PostgreSQL → usage endpoint.
export async function wiredSystem(t: Test, collectorEnv: Record<string, string> = {}, collectorOverrides: CollectorOverrides = {}) {
  const { db, url } = await freshDatabase(t);
  const collector = await startTestCollector(t, url, collectorEnv, collectorOverrides);
  const recorder = new UsageRecorder({
    sink: createStatsdSink({ host: '127.0.0.1', port: collector.receiver.port, onError: () => {} }),
    maxEntries: 10_000,
    drainIntervalMs: 50,
    logger: createLogger({ level: 'silent', name: 'test' }),
  });
  recorder.start();
  t.teardown(() => recorder.stop());
  const api = await startTestApi(t, db, { recordUse: recorder.record.bind(recorder) });
  const seeded = await seedOrg(api, db);
  return { db, url, collector, recorder, api, ...seeded };
}
