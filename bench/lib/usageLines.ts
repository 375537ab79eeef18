import { encodeUsageLine, packDatagrams, type UsageSample } from '../../shared/usageWire';

export interface IngestKey {
  keyId: string;
  orgId: string;
}

export type IngestMode = 'packed' | 'single';

export const IPS_PER_KEY = 3;

/**
 * One cycle of usage lines over the given keys: every key from `ipsPerKey` client addresses,
 * one use per line (as hot-shots sends them: no coalescing upstream), 2 % of them `forbidden`.
 * Packed: joined into ≤ 1432-byte datagrams by the same packDatagrams the API uses.
 */
export function buildDatagrams(keys: readonly IngestKey[], mode: IngestMode, ipsPerKey = IPS_PER_KEY) {
  const lines: string[] = [];
  for (let ip = 0; ip < ipsPerKey; ip++) {
    keys.forEach((key, k) => {
      const sample: UsageSample = {
        keyId: key.keyId,
        orgId: key.orgId,
        ip: `${10 + (ip >> 8)}.${ip & 255}.${(k >> 8) & 255}.${k & 255}`,
        outcome: (k + ip) % 50 === 0 ? 'forbidden' : 'ok',
        count: 1,
      };
      lines.push(encodeUsageLine(sample));
    });
  }
  const texts = mode === 'packed' ? packDatagrams(lines) : lines;
  const datagrams = texts.map((text) => Buffer.from(text, 'latin1'));
  const lineCounts = texts.map((text) => text.split('\n').length);
  return {
    datagrams,
    lineCounts,
    lines: lines.length,
    bytes: datagrams.reduce((sum, d) => sum + d.length, 0),
  };
}
