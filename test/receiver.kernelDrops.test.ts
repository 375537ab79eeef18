import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import t from 'tap';
import { dropsAt, parseUdpTable } from '../collector/kernelDrops';
import { startReceiver } from '../collector/receiver';
import { createLogger } from '../shared/logger';
import { freshDatabase } from './helpers/database';
import { startTestCollector } from './helpers/collector';

// A flood to the collector's port made the kernel drop genuine datagrams before the collector
// read them, and no collector metric showed it (forged lines even raised uses_received_total).
// The socket's own drop count, from /proc/net/udp(6), is now a metric.

const NO_TABLE = !fs.existsSync('/proc/net/udp') && 'no /proc/net/udp (not Linux)';

// Lines as Linux 6.x prints them (a little-endian host), trailing spaces included.
const UDP4 = [
  '   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            ',
  ' 7772: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 97914 2 000000001b55dce7 17         ',
  ' 7773: 00000000:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 97915 2 000000001b55dce8 5         ',
  ' 7774: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 97916 2 000000001b55dce9 3         ',
  ' 7775: 0100007F:1FBE 0100007F:1FBD 01 00000000:00000000 00:00000000 00000000     0        0 97917 2 000000001b55dcea 100         ',
].join('\n');
const UDP6 = [
  '  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops',
  ' 1156: 00000000000000000000000001000000:D1D0 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 97915 2 00000000e1b073c7 9',
  ' 1157: 00000000000000000000000000000000:D1D0 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 97916 2 00000000e1b073c8 4',
  ' 1158: B80D0120000000000000000001000000:D1D0 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 97917 2 00000000e1b073c9 2',
  ' 1159: 0000000000000000FFFF00000100007F:D1D0 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 97918 2 00000000e1b073ca 1',
].join('\n');

t.test('the /proc/net/udp table: address, port and drops of each socket (IPv4)', async (t) => {
  const rows = parseUdpTable(UDP4, true);
  t.strictSame(
    rows.map((row) => [row.address, row.port, row.drops]),
    [
      ['127.0.0.1', 8125, 17],
      ['0.0.0.0', 8125, 5],
      ['127.0.0.1', 8125, 3],
      ['127.0.0.1', 8126, 100],
    ],
    'the header skipped, words in the host byte order',
  );
  t.equal(dropsAt(rows, '127.0.0.1', 8125), 20, 'summed over the sockets bound to the address and port, and no other');
  t.equal(dropsAt(rows, '10.0.0.5', 8125), 0, 'an address no socket is bound to');
  t.strictSame(
    parseUdpTable(' 1: 7F000001:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0 6', false),
    [{ address: '127.0.0.1', port: 8125, drops: 6 }],
    'a big-endian host prints the address as it is on the wire',
  );
});

t.test('the /proc/net/udp6 table: address, port and drops of each socket (IPv6)', async (t) => {
  const rows = parseUdpTable(UDP6, true);
  t.strictSame(
    rows.map((row) => [row.address, row.port, row.drops]),
    [
      ['::1', 53712, 9],
      ['::', 53712, 4],
      ['2001:db8::1', 53712, 2],
      ['127.0.0.1', 53712, 1],
    ],
    'in canonical form, an IPv4-mapped address as the IPv4 one',
  );
  t.equal(dropsAt(rows, '::1', 53712), 9);
  t.strictSame(
    parseUdpTable(' 1: 20010DB8000000000000000000000001:D1D0 00000000000000000000000000000000:0000 07 0:0 0:0 0 0 0 1 2 0 8', false),
    [{ address: '2001:db8::1', port: 53712, drops: 8 }],
    'big-endian',
  );
});

// The test's event loop is the one that reads the receiver: held by spawnSync while a child sends,
// nothing is read, and the tiny buffer overflows.
const SEND = 200;
const SENDER = `
const socket = require('node:dgram').createSocket('udp4');
const [port, count] = process.argv.slice(1).map(Number);
const payload = Buffer.alloc(1000, 'x');
let sent = 0;
const next = () => (sent++ < count ? socket.send(payload, port, '127.0.0.1', next) : socket.close());
next();
`;

function sendWhileNotReading(port: number): void {
  const child = spawnSync(process.execPath, ['-e', SENDER, String(port), String(SEND)], { timeout: 60_000 });
  if (child.status !== 0) throw new Error(`the sender failed: ${child.stderr.toString()}`);
}

t.test("a socket whose full buffer made the kernel drop datagrams reports the drops, from the kernel's table", { skip: NO_TABLE }, async (t) => {
  const receiver = await startReceiver({
    host: '127.0.0.1',
    port: 0,
    recvBufferBytes: 1, // the kernel grants its minimum: a few datagrams
    onPacket: () => {},
    logger: createLogger({ level: 'silent', name: 'test' }),
  });
  t.teardown(() => receiver.close());
  t.equal(receiver.kernelDrops?.(), 0, 'none before');
  sendWhileNotReading(receiver.port);
  const drops = receiver.kernelDrops?.() ?? NaN;
  t.ok(drops > 0 && drops <= SEND, `some of the ${SEND} sent dropped, counted for this socket only (${drops})`);
});

t.test("the collector's /metrics shows the datagrams the kernel dropped for its socket", { skip: NO_TABLE }, async (t) => {
  const { url } = await freshDatabase(t);
  const collector = await startTestCollector(t, url, { COLLECTOR_RECV_BUFFER_BYTES: '1' });
  const scrape = async () => {
    const text = await (await fetch(`http://127.0.0.1:${collector.metricsPort}/metrics`)).text();
    return Number(/^keyusage_collector_kernel_dropped_datagrams_total (\d+)$/m.exec(text)?.[1]);
  };
  t.equal(await scrape(), 0, 'a counter, 0 before any drop');
  sendWhileNotReading(collector.receiver.port);
  const dropped = await scrape();
  t.ok(dropped > 0 && dropped <= SEND, `the drops are in the metric (${dropped})`);
});
