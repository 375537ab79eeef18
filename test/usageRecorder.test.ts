import t from 'tap';
import { startApi } from '../api/main';
import { createUsageRecorder } from '../api/usage/createUsageRecorder';
import { UsageRecorder, type DatagramSink } from '../api/usage/usageRecorder';
import { loadConfig } from '../shared/config';
import { createLogger } from '../shared/logger';
import { MAX_LINE_COUNT, parsePacket, type UsageSample } from '../shared/usageWire';
import net from 'node:net';
import { Writable } from 'node:stream';

const KEY = '0b7c6a39-2f11-4c55-9d7e-2f0c8e7a1b01';
const ORG = '5d1f0f5e-8a47-4b53-8a0e-9c1d2e3f4a5b';

function fakeSink(behaviour: (datagram: string) => Error | null = () => null) {
  const sent: string[] = [];
  const pending: Array<() => void> = [];
  let closed = false;
  const sink: DatagramSink = {
    send(datagram, done) {
      sent.push(datagram);
      pending.push(() => done(behaviour(datagram)));
    },
    async close() {
      closed = true;
    },
  };
  return { sink, sent, complete: () => pending.splice(0).forEach((f) => f()), isClosed: () => closed };
}

function capturedLogger() {
  const lines: string[] = [];
  const logger = createLogger({
    level: 'info',
    name: 'test',
    destination: new Writable({ write: (chunk, _e, cb) => (lines.push(chunk.toString()), cb()) }),
  });
  return { logger, lines };
}

const samplesOf = (datagrams: string[]) => {
  const samples: UsageSample[] = [];
  for (const d of datagrams) parsePacket(d, (s) => samples.push(s));
  return samples;
};

t.test('uses coalesce per key, ip and outcome; the sum of sent counts equals the uses', async (t) => {
  const { sink, sent, complete } = fakeSink();
  const recorder = new UsageRecorder({ sink, maxEntries: 10_000, drainIntervalMs: 1000, logger: capturedLogger().logger });
  for (let i = 0; i < 5000; i += 1) recorder.record(KEY, ORG, `10.0.${i % 50}.1`, i % 3 === 0 ? 'forbidden' : 'ok');
  recorder.drain();
  complete();
  const samples = samplesOf(sent);
  t.equal(samples.length, 100, '50 ips × 2 outcomes');
  t.equal(
    samples.reduce((sum, s) => sum + s.count, 0),
    5000,
  );
  t.ok(
    sent.every((d) => Buffer.byteLength(d) <= 1432),
    'datagrams fit 1432 bytes',
  );
  const longestLine = Math.max(...sent.flatMap((d) => d.split('\n')).map((l) => l.length));
  t.ok(
    sent.slice(0, -1).every((d) => d.length > 1432 - longestLine - 1),
    'datagrams are packed full',
  );
  t.same(recorder.stats, { recordedUses: 5000, sentUses: 5000, failedUses: 0, datagrams: sent.length, failedDatagrams: 0, earlyDrains: 0 });
  const before = sent.length;
  recorder.drain();
  t.equal(sent.length, before, 'an empty drain sends nothing');
});

t.test('send failures are counted and logged once per interval, never thrown', async (t) => {
  const { logger, lines } = capturedLogger();
  const { sink, complete } = fakeSink(() => Object.assign(new Error('send ECONNREFUSED'), { code: 'ECONNREFUSED' }));
  const recorder = new UsageRecorder({ sink, maxEntries: 10_000, drainIntervalMs: 1000, logger });
  for (let round = 0; round < 3; round += 1) {
    recorder.record(KEY, ORG, '192.0.2.1', 'ok');
    recorder.drain();
  }
  complete();
  t.equal(recorder.stats.failedUses, 3);
  t.equal(recorder.stats.failedDatagrams, 3);
  t.equal(recorder.stats.sentUses, 0);
  t.equal(lines.filter((l) => l.includes('could not send usage datagram')).length, 1, 'rate-limited to one line');

  const throwing = new UsageRecorder({
    sink: {
      send: () => {
        throw new Error('socket closed');
      },
      close: async () => {},
    },
    maxEntries: 10,
    drainIntervalMs: 1000,
    logger,
  });
  throwing.record(KEY, ORG, '192.0.2.1', 'ok');
  t.doesNotThrow(() => throwing.drain(), 'a throwing sink cannot escape');
  t.equal(throwing.stats.failedUses, 1);
});

t.test('sends waiting on the sink are bounded: beyond maxInFlight a datagram fails at once, counted', async (t) => {
  const { logger, lines } = capturedLogger();
  const { sink, sent, complete } = fakeSink();
  const recorder = new UsageRecorder({ sink, maxEntries: 10_000, drainIntervalMs: 1000, logger, maxInFlight: 3 });
  for (let round = 0; round < 5; round += 1) {
    recorder.record(KEY, ORG, '192.0.2.1', 'ok');
    recorder.drain();
  }
  t.equal(sent.length, 3, 'three handed to the sink, whose sends hang');
  t.equal(recorder.datagramsInFlight, 3);
  t.match(recorder.stats, { datagrams: 5, failedDatagrams: 2, failedUses: 2, sentUses: 0 });
  t.match(lines.join(''), /"code":"USAGE_SEND_BACKLOG"/, 'logged with its own code');
  complete();
  t.equal(recorder.datagramsInFlight, 0);
  recorder.record(KEY, ORG, '192.0.2.1', 'ok');
  recorder.drain();
  complete();
  t.match(recorder.stats, { sentUses: 4, failedUses: 2 }, 'sends go again once the sink answers');
});

// Checked per datagram, one drain of more datagrams than maxInFlight (10,000 entries of IPv6
// clients, signed) failed its own tail with the collector reachable: the bound is on what earlier
// drains left unsent (found by a review; fails without the fix).
t.test('one drain is sent whole, however many datagrams; the next waits on what it left unsent', async (t) => {
  const { sink, sent, complete } = fakeSink();
  const recorder = new UsageRecorder({
    sink,
    maxEntries: 10_000,
    drainIntervalMs: 1000,
    logger: capturedLogger().logger,
    maxInFlight: 3,
    maxDatagramBytes: 120,
  });
  for (let i = 0; i < 10; i += 1) recorder.record(KEY, ORG, `2001:db8::${i}`, 'ok');
  recorder.drain();
  t.equal(sent.length, 10, 'a line a datagram, all ten handed to the sink');
  t.match(recorder.stats, { datagrams: 10, failedDatagrams: 0 });
  recorder.record(KEY, ORG, '192.0.2.1', 'ok');
  recorder.drain();
  t.match(recorder.stats, { datagrams: 11, failedDatagrams: 1, failedUses: 1 }, 'ten still unsent: the next drain fails at once');
  complete();
  t.match(recorder.stats, { sentUses: 10, failedUses: 1 });
});

// The request that filled the map encoded, signed and sent every line in its own turn (40–50 ms
// for 10,000 signed lines): it only sets the map aside now (found by a review; fails without the fix).
t.test('a full map is set aside by the request that fills it and sent on the next turn, or by stop', async (t) => {
  const { sink, sent, complete } = fakeSink();
  const recorder = new UsageRecorder({ sink, maxEntries: 3, drainIntervalMs: 1000, logger: capturedLogger().logger });
  for (let i = 0; i < 3; i += 1) recorder.record(KEY, ORG, `192.0.2.${i}`, 'ok');
  t.equal(sent.length, 0, 'nothing sent in the request');
  t.equal(recorder.pendingEntries, 3, 'the full map set aside, still waiting');
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(samplesOf(sent).length, 3, 'sent on the next turn');
  for (let i = 0; i < 3; i += 1) recorder.record(KEY, ORG, `198.51.100.${i}`, 'ok');
  const stopped = recorder.stop();
  complete();
  await stopped;
  complete();
  t.equal(samplesOf(sent).length, 6, 'a map set aside just before stop is sent by it');
  t.match(recorder.stats, { earlyDrains: 2, sentUses: 6, failedUses: 0 });
});

t.test('stop waits for sends that never complete only so long, says so, and closes the sink', async (t) => {
  const { logger, lines } = capturedLogger();
  const { sink, isClosed } = fakeSink();
  const recorder = new UsageRecorder({ sink, maxEntries: 10_000, drainIntervalMs: 1000, logger });
  recorder.record(KEY, ORG, '192.0.2.1', 'ok');
  await recorder.stop(50);
  t.ok(isClosed(), 'closed, though the send never answered');
  t.match(lines.join(''), /"datagrams":1,"uses":1,.*still waiting to be sent at stop: their uses are lost/);
  t.match(recorder.stats, { recordedUses: 1, sentUses: 0, failedUses: 1, datagrams: 1, failedDatagrams: 1 }, 'its use and its datagram counted as lost');
});

t.test('stop waits for a key read only until its deadline; the use it records later is lost, and said so', async (t) => {
  const { logger, lines } = capturedLogger();
  const { sink, sent, isClosed } = fakeSink();
  const recorder = new UsageRecorder({ sink, maxEntries: 10_000, drainIntervalMs: 1000, logger });
  recorder.begin();
  const stopping = recorder.stop(50);
  t.notOk(isClosed(), 'the sink stays open while the read is under way');
  await stopping;
  t.ok(isClosed(), 'and is closed at the deadline, the read still under way');
  recorder.record(KEY, ORG, '192.0.2.1', 'ok');
  recorder.end();
  t.equal(sent.length, 0, 'nothing sent after the stop');
  t.match(recorder.stats, { recordedUses: 1, sentUses: 0, failedUses: 1, datagrams: 0, failedDatagrams: 0 });
  const logged = lines.join('');
  t.match(logged, /"code":"USAGE_AFTER_STOP".*a use recorded after the recorder stopped/);
  t.notMatch(logged, /could not send usage datagram/, 'no send was tried');
  t.notMatch(logged, new RegExp(KEY), 'the line names no key');
});

t.test('stop waits for a key read that ends in time, and sends its use', async (t) => {
  const { sink, sent, complete, isClosed } = fakeSink();
  const recorder = new UsageRecorder({ sink, maxEntries: 10_000, drainIntervalMs: 1000, logger: capturedLogger().logger });
  recorder.begin();
  // The deadline (5 s) is far off: each step below is a turn of the event loop.
  const stopping = recorder.stop();
  await new Promise((resolve) => setImmediate(resolve));
  t.notOk(isClosed(), 'the sink stays open while the read is under way');
  t.equal(sent.length, 0, 'nothing sent before the read ends');
  recorder.record(KEY, ORG, '192.0.2.1', 'ok');
  recorder.end();
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(sent.length, 1, 'the end of the read lets the stop drain at once, not at its deadline');
  t.notOk(isClosed(), 'the sink stays open while that send is in flight');
  complete();
  await stopping;
  t.ok(isClosed(), 'closed once the send completed');
  t.same(samplesOf(sent), [{ keyId: KEY, orgId: ORG, ip: '192.0.2.1', outcome: 'ok', count: 1 }]);
  t.match(recorder.stats, { sentUses: 1, failedUses: 0 });
});

t.test('stop drains, waits for sends in flight, then closes the sink', async (t) => {
  const { sink, sent, complete, isClosed } = fakeSink();
  const recorder = new UsageRecorder({ sink, maxEntries: 10_000, drainIntervalMs: 10, logger: capturedLogger().logger });
  recorder.start();
  recorder.record(KEY, ORG, '::1', 'revoked');
  const stopping = recorder.stop();
  await new Promise((resolve) => setTimeout(resolve, 20));
  t.notOk(isClosed(), 'the socket stays open while a send is in flight');
  complete();
  await stopping;
  t.ok(isClosed());
  t.same(samplesOf(sent), [{ keyId: KEY, orgId: ORG, ip: '::1', outcome: 'revoked', count: 1 }]);
});

t.test('the interval drains on its own', async (t) => {
  const { sink, sent, complete } = fakeSink();
  const recorder = new UsageRecorder({ sink, maxEntries: 10_000, drainIntervalMs: 5, logger: capturedLogger().logger });
  recorder.start();
  recorder.record(KEY, ORG, '192.0.2.9', 'ok');
  for (let i = 0; i < 100 && sent.length === 0; i += 1) await new Promise((resolve) => setTimeout(resolve, 5));
  complete();
  t.equal(sent.length, 1);
  await recorder.stop();
});

t.test('a line never carries more than the collector accepts: a busy entry drains early', async (t) => {
  const { sink, sent, complete } = fakeSink();
  const recorder = new UsageRecorder({ sink, maxEntries: 10_000, drainIntervalMs: 1000, logger: capturedLogger().logger });
  const uses = MAX_LINE_COUNT + 5;
  for (let i = 0; i < uses; i += 1) recorder.record(KEY, ORG, '10.0.0.1', 'ok');
  recorder.drain();
  complete();
  const results = sent.map((d) => parsePacket(d, () => {}));
  t.equal(
    results.reduce((sum, r) => sum + r.invalid, 0),
    0,
    'every line is within the per-line cap',
  );
  t.strictSame(
    samplesOf(sent).map((s) => s.count),
    [MAX_LINE_COUNT, 5],
  );
  t.equal(recorder.stats.earlyDrains, 1);
});

t.test('the API refuses COLLECTOR_PORT=0, naming it: its datagrams went to 8125', async (t) => {
  const { usage } = loadConfig({ NODE_ENV: 'test', COLLECTOR_PORT: '0' });
  t.throws(() => createUsageRecorder(usage, capturedLogger().logger), { name: 'ConfigError', message: /COLLECTOR_PORT: 0 is only for a collector/ });
  t.doesNotThrow(() => createUsageRecorder({ ...usage, collectorPort: 8125 }, capturedLogger().logger));
  // Checked before the database: the start connected first, and left that pool open behind the error.
  const connections: net.Socket[] = [];
  const server = net.createServer((socket) => connections.push(socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const socket of connections) socket.destroy();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const config = loadConfig({ NODE_ENV: 'test', COLLECTOR_PORT: '0', DATABASE_CONNECT_TIMEOUT_MS: '500' });
  const url = `postgres://keyusage@127.0.0.1:${(server.address() as net.AddressInfo).port}/none`;
  await t.rejects(startApi(config, capturedLogger().logger, url), { name: 'ConfigError', message: /COLLECTOR_PORT/ });
  t.equal(connections.length, 0, 'no connection to the database was made');
});
