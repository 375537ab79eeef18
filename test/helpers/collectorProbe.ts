// Preloaded into a collector process by test/helpers/faults.ts (`--import`): counts what the UDP
// socket handed to the application and prints it when the process exits, so a test can compare
// "received" with "persisted" after a SIGTERM. It observes only; the collector runs unchanged.
import dgram from 'node:dgram';
import fs from 'node:fs';
import { parsePacket } from '../../shared/usageWire';

const counts = { packets: 0, usageLines: 0, uses: 0 };
const emit = dgram.Socket.prototype.emit;
dgram.Socket.prototype.emit = function (this: dgram.Socket, event: string | symbol, ...args: unknown[]): boolean {
  if (event === 'message' && Buffer.isBuffer(args[0])) {
    counts.packets += 1;
    parsePacket(args[0].toString('latin1'), (sample) => {
      counts.usageLines += 1;
      counts.uses += sample.count;
    });
  }
  return emit.apply(this, [event, ...args] as Parameters<typeof emit>);
} as typeof emit;

process.on('exit', (exitCode) => {
  fs.writeSync(2, `${JSON.stringify({ collectorProbe: { ...counts, exitCode } })}\n`);
});

// A collector left behind by a test process that was killed (so its teardown never ran) would
// run forever: once its parent is gone, it goes too.
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) process.kill(process.pid, 'SIGKILL');
}, 500).unref();
