import { randomUUID } from 'node:crypto';
import { Aggregator, capHolding } from '../collector/aggregator';
import { KeyList } from '../collector/keyList';
import { PendingKey, TimeBase } from '../collector/pendingKey';
import { createDatagramParser, type DatagramParser } from '../shared/usageDatagram';
import type { UsageSample } from '../shared/usageWire';
import { median } from './lib/stats';
import { buildDatagrams } from './lib/usageLines';

// Where a line's time goes when every line brings a key not pending yet (100,000 distinct keys,
// one line each per drain, a new address each: the whole system's shape at 100 k keys a second).
// The same datagrams go through the parser, and one of five things is done with each sample:
// nothing (the parser alone); the key list's lookup; a small object kept per line until the pass
// ends (as a drain ends a pending key's interval); a PendingKey kept; the aggregator. One step per
// process, so that no step pays for the garbage another left (run them in turn, several times).
// Lines per CPU second: the median pass and the worst. No database, no socket.
// Run: for step in parse lookup object pending aggregator; do npx tsx bench/newKeyCost.ts $step [keys] [passes]; done
const [stepName = 'aggregator', keyArg = '100000', passArg = '10'] = process.argv.slice(2);
const keyCount = Number(keyArg);
const passes = Number(passArg);
const orgId = randomUUID();
const keys = Array.from({ length: keyCount }, () => ({ keyId: randomUUID(), orgId }));
const keyList = new KeyList(1);
keyList.replace(keys.map((k) => keyList.hash(k.keyId, k.orgId)));
const { datagrams, lines } = buildDatagrams(keys, 'packed', 1);
const HOUR = 0;
const NOW = 1;

type Step = (kept: unknown[], aggregator: Aggregator, base: TimeBase) => (sample: UsageSample) => void;
const steps: Record<string, Step> = {
  parse: () => () => undefined,
  lookup: () => (sample) => {
    if (!keyList.admits(sample.keyId, sample.orgId)) throw new Error(`the key list lacks ${sample.keyId}`);
  },
  object: (kept) => (sample) => {
    kept.push({ keyId: sample.keyId, orgId: sample.orgId });
  },
  pending: (kept, _, base) => (sample) => {
    const key = new PendingKey(sample.keyId, sample.orgId, HOUR, base, keyList.generation);
    key.add(NOW, HOUR, sample.ip, sample.outcome, sample.count, 16);
    kept.push(key);
  },
  aggregator: (_, aggregator) => (sample) => {
    aggregator.add(sample, NOW);
  },
};

function pass(step: Step, parse: DatagramParser): number {
  const kept: unknown[] = [];
  const aggregator = new Aggregator({ maxKeys: capHolding(keyCount), listedKeys: keyList, now: () => NOW });
  const onSample = step(kept, aggregator, new TimeBase(HOUR));
  const cpuStarted = process.cpuUsage();
  let parsed = 0;
  for (const datagram of datagrams) parsed += parse(datagram, onSample).lines;
  aggregator.drain();
  const cpu = process.cpuUsage(cpuStarted);
  if (parsed !== lines) throw new Error(`parsed ${parsed} lines of ${lines}`);
  return lines / ((cpu.user + cpu.system) / 1e6);
}

const step = steps[stepName];
if (step === undefined) throw new Error(`unknown step ${stepName}: one of ${Object.keys(steps).join(', ')}`);
// One parser, kept from pass to pass as the collector keeps its own (its intern tables).
const parse = createDatagramParser();
const rates: number[] = [];
// The first pass warms the JIT up and is not counted.
for (let round = 0; round <= passes; round++) {
  const rate = pass(step, parse);
  if (round > 0) rates.push(rate);
}
console.log(JSON.stringify({ step: stepName, keys: keyCount, median: Math.round(median(rates)), worst: Math.round(Math.min(...rates)) }));
