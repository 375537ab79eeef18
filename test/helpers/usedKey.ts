import type { Test } from 'tap';
import { waitFor } from '../../harness/wait';
import { encodeUsageLine, type Outcome } from '../../shared/usageWire';
import { seedOrg, startTestApi } from './api';
import { sendDatagrams, startTestCollector } from './collector';
import { freshDatabase } from './database';

/** A use of the key: its address, its outcome ('ok' unless given) and its |T second, if any. */
export type KeyUse = { ip: string; outcome?: Outcome; seconds?: number };

/**
 * An org's admin key used before (so no key.first_use, whose span, the flush interval, would hold
 * these flushes' networks), and a collector that flushes only when told: `flushUses` sends the
 * uses as datagram lines and flushes them.
 */
export async function usedKeyWithCollector(t: Test, env: Record<string, string> = {}) {
  const { db, url } = await freshDatabase(t);
  const api = await startTestApi(t, db);
  const { org, adminKeyId: keyId } = await seedOrg(api, db);
  const collector = await startTestCollector(t, url, { COLLECTOR_FLUSH_INTERVAL_MS: '600000', ...env });
  await db('api_key_usage').insert({ org_id: org.id, key_id: keyId, request_count: 1 });
  let lines = 0;
  const line = ({ ip, outcome = 'ok', seconds }: KeyUse) =>
    `${encodeUsageLine({ keyId, orgId: org.id, ip, outcome, count: 1 })}${seconds === undefined ? '' : `|T${seconds}`}`;
  const flushUses = async (uses: readonly KeyUse[]) => {
    await sendDatagrams(collector.receiver.port, uses.map(line));
    lines += uses.length;
    await waitFor('the lines', () => (collector.ingest.usageLines === lines ? true : undefined));
    await collector.flusher.flush();
  };
  return { db, org, keyId, flushUses };
}
