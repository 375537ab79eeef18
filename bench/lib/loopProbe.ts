import fs from 'node:fs';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { Client } from 'pg';

// Bench-only, preloaded into the collector (`--import tsx --import ./bench/lib/loopProbe.ts`) by
// bench/ingestStalls.ts: what the receive loop was doing while lines were lost. It records, on
// the epoch clock (so the bench can line them up with the kernel's drop counter):
//   stalls   every time the loop came back ≥ STALL_MS late to a 5 ms timer: how late, and how
//            long the main thread meanwhile waited for a CPU (from its /proc schedstat: near the
//            lateness, it was off the CPU; near 0, busy in JavaScript or GC),
//   gc       every GC pause (kind and duration, from V8 via perf_hooks),
//   busy     event-loop utilization per 100 ms window,
//   flushes  every BEGIN and COMMIT the collector sent PostgreSQL (a flush is one transaction).
// and writes them as JSON to LOOP_PROBE_FILE.<pid> when the process exits (one file per process:
// with COLLECTOR_RECEIVERS > 1 every receiver has its own loop).

const TICK_MS = 5;
const STALL_MS = 10;
const BUSY_WINDOW_MS = 100;

const epoch = () => performance.timeOrigin + performance.now();
const record = { stalls: [] as number[][], gc: [] as Array<[number, number, number]>, busy: [] as number[][], flushes: [] as Array<[number, string]> };

// The main thread's time runnable but waiting for a CPU, in ms (the second field of schedstat).
const SCHEDSTAT = `/proc/self/task/${process.pid}/schedstat`;
const waitedMs = () => Number(fs.readFileSync(SCHEDSTAT, 'utf8').split(' ')[1]) / 1e6;

let last = performance.now();
let lastWaited = waitedMs();
setInterval(() => {
  const now = performance.now();
  const waited = waitedMs();
  const late = now - last - TICK_MS;
  if (late >= STALL_MS) record.stalls.push([epoch() - late, late, waited - lastWaited]);
  last = now;
  lastWaited = waited;
}, TICK_MS).unref();

let lastElu = performance.eventLoopUtilization();
setInterval(() => {
  const elu = performance.eventLoopUtilization();
  record.busy.push([epoch(), performance.eventLoopUtilization(elu, lastElu).utilization]);
  lastElu = elu;
}, BUSY_WINDOW_MS).unref();

new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    const kind = (entry as { detail?: { kind?: number } }).detail?.kind ?? 0;
    record.gc.push([performance.timeOrigin + entry.startTime, entry.duration, kind]);
  }
}).observe({ entryTypes: ['gc'] });

// knex sends its transaction statements through pg's Client#query.
const query = Client.prototype.query as unknown as (this: Client, ...args: unknown[]) => unknown; // eslint-disable-line @typescript-eslint/unbound-method -- re-bound below
Client.prototype.query = function (this: Client, ...args: unknown[]) {
  const text = typeof args[0] === 'string' ? args[0] : ((args[0] as { text?: string } | undefined)?.text ?? '');
  const mark = /^\s*(begin|commit)/i.exec(text);
  if (mark) record.flushes.push([epoch(), mark[1].toLowerCase()]);
  return query.apply(this, args);
} as typeof Client.prototype.query;

process.on('exit', () => {
  if (process.env.LOOP_PROBE_FILE) fs.writeFileSync(`${process.env.LOOP_PROBE_FILE}.${process.pid}`, JSON.stringify(record));
});
