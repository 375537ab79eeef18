import dgram from 'node:dgram';
import { performance } from 'node:perf_hooks';
import { serveIpc } from './lib/procs';
import { buildDatagrams, type IngestKey, type IngestMode } from './lib/usageLines';

// The ingest load generator, in its own process: sends a fixed number of usage lines to
// 127.0.0.1:<port> at a paced rate, either packed the way hot-shots and our recorder pack them
// (≤ 1432-byte datagrams) or one line per datagram. The datagrams are built once, before the clock
// starts, and reused round-robin; each ~1 ms tick sends what the schedule says is due.

let datagrams: Buffer[] = [];
let lineCounts: number[] = [];

const MAX_IN_FLIGHT = 2048;
const DEADLINE_FACTOR = 1.1;

function send(port: number, rate: number, durationSec: number) {
  const totalLines = Math.round(rate * durationSec);
  const socket = dgram.createSocket('udp4');
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => {
      const cpuBefore = process.cpuUsage();
      const started = performance.now();
      let queuedLines = 0;
      let sentLines = 0;
      let sentDatagrams = 0;
      let failedLines = 0;
      let inFlight = 0;
      let next = 0;
      let finished = false;
      const finish = () => {
        if (finished) return;
        finished = true;
        const elapsedMs = performance.now() - started;
        const cpu = process.cpuUsage(cpuBefore);
        socket.close(() =>
          resolve({
            sentLines,
            sentDatagrams,
            failedLines,
            elapsedMs,
            achievedLinesPerSec: sentLines / (elapsedMs / 1000),
            senderCpuSec: (cpu.user + cpu.system) / 1e6,
          }),
        );
      };
      // Bounded in time as well as count: a sender that cannot keep up stops at the deadline and
      // reports the rate it did achieve.
      const deadline = started + durationSec * 1000 * DEADLINE_FACTOR;
      let stopped = false;
      const pump = () => {
        // Lines due by now; the sender never runs ahead of the schedule.
        const now = performance.now();
        if (now >= deadline) stopped = true;
        const due = Math.min(totalLines, (rate * (now - started)) / 1000);
        while (!stopped && queuedLines < due && inFlight < MAX_IN_FLIGHT) {
          const index = next;
          next = (next + 1) % datagrams.length;
          const lines = lineCounts[index];
          queuedLines += lines;
          inFlight++;
          socket.send(datagrams[index], port, '127.0.0.1', (error) => {
            inFlight--;
            if (error) failedLines += lines;
            else {
              sentLines += lines;
              sentDatagrams++;
            }
            if ((queuedLines >= totalLines || stopped) && inFlight === 0) finish();
          });
        }
        if (stopped && inFlight === 0) finish();
        // A timer, not setImmediate: a spinning sender would take a core away from the receiver
        // it is measuring. What is due goes out in ~1 ms bursts (an API drain is a burst too).
        else if (queuedLines < totalLines && !stopped) setTimeout(pump, 1);
      };
      pump();
    });
  });
}

serveIpc((message) => {
  switch (message.cmd) {
    case 'prepare': {
      const built = buildDatagrams(message.keys as IngestKey[], message.mode as IngestMode);
      datagrams = built.datagrams;
      lineCounts = built.lineCounts;
      return { datagrams: datagrams.length, lines: built.lines, bytes: built.bytes };
    }
    case 'send':
      return send(Number(message.port), Number(message.rate), Number(message.durationSec));
    default:
      throw new Error(`unknown command ${message.cmd}`);
  }
});
process.send?.({ ready: true });
