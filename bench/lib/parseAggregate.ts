import { performance } from 'node:perf_hooks';
import { Aggregator, capHolding } from '../../collector/aggregator';
import type { KeyList } from '../../collector/keyList';
import { createDatagramParser } from '../../shared/usageDatagram';
import { parsePacket, type UsageSample } from '../../shared/usageWire';
import { buildDatagrams, type IngestKey, type IngestMode } from './usageLines';

export type ParseStage = 'parse + aggregate' | 'parse only';

// Benchmark 3b: the collector's per-datagram work alone, on pre-built datagrams: parseDatagram on the
// received bytes (what the collector does), or with `parser: 'text'` the path it replaced (the
// Buffer decoded to latin1, then parsePacket), and the same addSample the collector wires up (one
// clock read per datagram). Returns lines/s of each pass after a warm-up pass, over wall time
// and over the process's CPU time: on a machine shared with other work the CPU figure is the one
// that says what one core does (it includes V8's GC helper threads, so it errs low).
export interface ParseRates {
  wall: number[];
  cpu: number[];
}

export type Parser = 'bytes' | 'text';

export interface ParseShape {
  mode: IngestMode;
  /** Client addresses per key: the default 3, or enough that every line of a pass brings a new one. */
  ipsPerKey?: number;
  parser?: Parser;
  /** The aggregator's key list (COLLECTOR_KEY_LIST_REFRESH_MS): one lookup per new key per pass. */
  keyList?: KeyList;
  /**
   * Each pass's drained keys given back once the pass ends, as the flusher gives them back once
   * written (Aggregator.recycle): the default. False: every pass makes its keys anew.
   */
  recycle?: boolean;
}

export function measureParseAggregate(keys: readonly IngestKey[], shape: ParseShape, stage: ParseStage, lines: number, passes: number): ParseRates {
  const { datagrams } = buildDatagrams(keys, shape.mode, shape.ipsPerKey);
  // The collector's default cap, or one that holds every key: the parser's key table is sized by it, as the collector's is.
  const maxKeys = Math.max(100_000, capHolding(keys.length));
  const parse = shape.parser === 'text' ? parseText : createDatagramParser(maxKeys);
  const rates: ParseRates = { wall: [], cpu: [] };
  // One aggregator for every pass, as the collector keeps one from drain to drain.
  const aggregator = new Aggregator({ maxKeys, listedKeys: shape.keyList, now: Date.now });
  for (let pass = 0; pass < passes + 1; pass++) {
    let usesReceived = 0;
    let packetTime = Date.now();
    const addSample =
      stage === 'parse only'
        ? (sample: UsageSample) => {
            usesReceived += sample.count;
          }
        : (sample: UsageSample) => {
            usesReceived += sample.count;
            aggregator.add(sample, packetTime);
          };
    let done = 0;
    let i = 0;
    const started = performance.now();
    const cpuStarted = process.cpuUsage();
    while (done < lines) {
      packetTime = Date.now();
      done += parse(datagrams[i], addSample).lines;
      i = (i + 1) % datagrams.length;
    }
    // The flusher drains the aggregator at every flush: what a drain costs is part of the work.
    const { keys: drained } = aggregator.drain();
    if (shape.recycle !== false) aggregator.recycle(drained);
    const seconds = (performance.now() - started) / 1000;
    const cpu = process.cpuUsage(cpuStarted);
    if (usesReceived !== done) throw new Error(`parse benchmark lost uses: ${usesReceived} of ${done}`);
    if (pass === 0) continue; // the first pass warms the JIT up
    rates.wall.push(done / seconds);
    rates.cpu.push(done / ((cpu.user + cpu.system) / 1e6));
  }
  return rates;
}

function parseText(datagram: Buffer, onSample: (sample: UsageSample) => void) {
  return parsePacket(datagram.toString('latin1'), onSample);
}
