import { randomUUID } from 'node:crypto';
import { Aggregator } from '../../collector/aggregator';
import { createPgUsageStore, type WriteResult } from '../../collector/usageStore';
import { loadConfig } from '../../shared/config';
import type { Db } from '../../shared/db';
import type { Outcome } from '../../shared/usageWire';

/**
 * One use of each key (`outcome`, at `at`: now unless given), written as the collector's flush
 * writes them: one transaction for every org, events raised (a key's first use…).
 */
export function flushUses(
  db: Db,
  keys: ReadonlyArray<{ orgId: string; keyId: string }>,
  { outcome = 'ok', at = Date.now() }: { outcome?: Outcome; at?: number } = {},
): Promise<WriteResult> {
  const aggregator = new Aggregator({ maxKeys: 100, now: () => at });
  for (const [i, key] of keys.entries()) aggregator.add({ ...key, ip: `192.0.2.${i + 1}`, outcome, count: 1 });
  const events = loadConfig({ NODE_ENV: 'development' }).collector.events;
  return createPgUsageStore(db, { events }).write([{ id: randomUUID(), batch: aggregator.drain() }]);
}
