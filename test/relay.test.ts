import dgram from 'node:dgram';
import { once } from 'node:events';
import t from 'tap';
import { LineBatcher, Relay, udpSink, type DatagramSink } from '../collector/relay';
import { waitFor } from '../harness/wait';
import { signDatagram } from '../shared/datagramSignature';
import { MAX_DATAGRAM_BYTES } from '../shared/usageWire';
import { sendDatagrams, startTestCollector } from './helpers/collector';
import { freshDatabase } from './helpers/database';
import { seedKeys } from './helpers/faults';

// A sink that records what it was given and answers each send when told to.
function fakeSink() {
  const sent: string[] = [];
  const pending: Array<(error: Error | null) => void> = [];
  let closed = false;
  const sink: DatagramSink = {
    send: (datagram, done) => {
      sent.push(datagram.toString('latin1'));
      pending.push(done);
    },
    close: async () => {
      closed = true;
    },
  };
  const answerAll = (error: Error | null = null) => pending.splice(0).forEach((done) => done(error));
  return { sink, sent, answerAll, isClosed: () => closed };
}

t.test('LineBatcher packs lines in order into datagrams of at most maxBytes', async (t) => {
  const table: Array<{ name: string; lines: string[]; maxBytes: number; expected: string[] }> = [
    { name: 'nothing', lines: [], maxBytes: 9, expected: [] },
    { name: 'exact fit', lines: ['aaaa', 'bbbb'], maxBytes: 9, expected: ['aaaa\nbbbb'] },
    { name: 'one byte over', lines: ['aaaa', 'bbbbb'], maxBytes: 9, expected: ['aaaa', 'bbbbb'] },
    { name: 'greedy', lines: ['aaaa', 'bbbb', 'cccc'], maxBytes: 9, expected: ['aaaa\nbbbb', 'cccc'] },
    { name: 'an oversize line goes alone', lines: ['a', 'x'.repeat(20), 'b', 'c'], maxBytes: 10, expected: ['a', 'x'.repeat(20), 'b\nc'] },
  ];
  for (const c of table) {
    const batcher = new LineBatcher(c.maxBytes);
    const out: Array<{ text: string; lines: number }> = [];
    for (const line of c.lines) {
      const closed = batcher.add(line);
      if (closed) out.push(closed);
    }
    const rest = batcher.take();
    if (rest) out.push(rest);
    t.strictSame(
      out.map((d) => d.text),
      c.expected,
      `${c.name}: datagrams`,
    );
    t.strictSame(
      out.map((d) => d.lines),
      c.expected.map((d) => d.split('\n').length),
      `${c.name}: line counts`,
    );
    t.equal(batcher.take(), undefined, `${c.name}: empty after take`);
  }
  t.throws(() => new LineBatcher(0), RangeError);
});

t.test('Relay sends full datagrams at once and a partial one on flush, counting lines', async (t) => {
  const { sink, sent, answerAll } = fakeSink();
  const relay = new Relay({ sink, maxBytes: 20 });
  relay.relay('a:1|c'); // 5
  relay.relay('b:2|c'); // 11
  relay.relay('c:3|g'); // 17
  t.strictSame(sent, [], 'nothing sent while the datagram has room');
  relay.relay('dd:4|c'); // 24 > 20: the first three leave
  t.strictSame(sent, ['a:1|c\nb:2|c\nc:3|g']);
  relay.flush();
  t.strictSame(sent, ['a:1|c\nb:2|c\nc:3|g', 'dd:4|c']);
  t.strictSame(relay.stats, { sentLines: 0, sentDatagrams: 0, droppedLines: 0 }, 'counted when the socket answers');
  answerAll();
  t.strictSame(relay.stats, { sentLines: 4, sentDatagrams: 2, droppedLines: 0 });
  relay.flush();
  t.equal(sent.length, 2, 'an empty flush sends nothing');
});

t.test('Relay drops and counts what fails to send or finds too many datagrams in flight', async (t) => {
  const { sink, sent, answerAll } = fakeSink();
  const errors: string[] = [];
  const relay = new Relay({ sink, maxBytes: 5, maxInFlight: 2, onError: (error) => errors.push(error.message) });
  for (const line of ['a:1|c', 'b:1|c', 'c:1|c', 'd:1|c']) relay.relay(line);
  relay.flush();
  t.equal(sent.length, 2, 'two in flight, the third and fourth dropped without waiting');
  t.equal(relay.stats.droppedLines, 2);
  answerAll(new Error('ECONNREFUSED'));
  t.strictSame(relay.stats, { sentLines: 0, sentDatagrams: 0, droppedLines: 4 });
  t.strictSame(errors, ['ECONNREFUSED', 'ECONNREFUSED']);

  const throwing: DatagramSink = {
    send: () => {
      throw new Error('socket closed');
    },
    close: async () => {},
  };
  const relay2 = new Relay({ sink: throwing });
  relay2.relay('a:1|c');
  relay2.flush();
  t.strictSame(relay2.stats, { sentLines: 0, sentDatagrams: 0, droppedLines: 1 }, 'a throwing socket never escapes');
});

t.test('stop mirrors start: sends what is held, waits for it, closes the sink', async (t) => {
  const { sink, sent, answerAll, isClosed } = fakeSink();
  const relay = new Relay({ sink, flushIntervalMs: 60_000 });
  relay.start();
  relay.relay('a:1|c');
  const stopped = relay.stop(5000);
  t.strictSame(sent, ['a:1|c'], 'held line sent on stop');
  t.notOk(isClosed(), 'waits for the send in flight');
  answerAll();
  await stopped;
  t.ok(isClosed());
  t.equal(relay.stats.sentLines, 1);
});

t.test('the interval flushes a partial datagram', async (t) => {
  const { sink, sent, answerAll } = fakeSink();
  const relay = new Relay({ sink, flushIntervalMs: 10 });
  relay.start();
  relay.relay('a:1|c');
  while (sent.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
  t.strictSame(sent, ['a:1|c']);
  answerAll();
  await relay.stop();
});

t.test('udpSink sends each datagram whole to a loopback upstream', async (t) => {
  const upstream = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => upstream.bind(0, '127.0.0.1', resolve));
  t.teardown(() => upstream.close());
  const relay = new Relay({ sink: await udpSink('127.0.0.1', upstream.address().port) });
  const lines = Array.from({ length: 200 }, (_, i) => `metric.${i}:${i}|c|#route:/v1/${i}`);
  const received: string[] = [];
  upstream.on('message', (message) => {
    t.ok(message.length <= MAX_DATAGRAM_BYTES, `${message.length} bytes`);
    received.push(...message.toString('latin1').split('\n'));
  });
  for (const line of lines) relay.relay(line);
  await relay.stop();
  while (received.length < lines.length) await once(upstream, 'message');
  t.strictSame(received, lines, 'every line, in order, exactly once');
  t.equal(relay.stats.sentLines, lines.length);
  t.equal(relay.stats.droppedLines, 0);
});

t.test('a signature line at a collector without the secret is counted, never relayed (fails without the fix)', async (t) => {
  const { db, url } = await freshDatabase(t);
  const { orgId, keys } = await seedKeys(db, 'signing', 1);
  const upstream = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => upstream.bind(0, '127.0.0.1', resolve));
  t.teardown(() => upstream.close());
  const relayed: string[] = [];
  upstream.on('message', (message) => relayed.push(...message.toString('latin1').split('\n')));
  // The API signs (USAGE_SIGNING_SECRET); this collector has no secret yet, as while signing is
  // being turned on.
  const collector = await startTestCollector(t, url, { COLLECTOR_RELAY_TO: `127.0.0.1:${upstream.address().port}` });
  const usage = `apikey.used:1|c|#key:${keys[0].id},org:${orgId},ip:10.1.0.1,outcome:ok`;
  const others = ['http.requests:1|c|#route:/v1', 'http.requests:2|c|#route:/v2'];
  await sendDatagrams(
    collector.receiver.port,
    others.map((other) => signDatagram(`${usage}\n${other}`, 's'.repeat(32), Date.now())),
  );
  const { ingest, relay } = collector;
  await waitFor('both datagrams read and their relayed lines sent', () =>
    ingest.packets === 2 && relay!.stats.sentLines === ingest.otherLines && relayed.length >= ingest.otherLines ? true : undefined,
  );
  t.strictSame(relayed, others, 'the other lines, without the signature lines');
  const metrics = Object.fromEntries(collector.samples().map((s) => [s.name.replace('keyusage_collector_', ''), s.value]));
  t.match(metrics, { lines_total: 6, usage_lines_total: 2, other_lines_total: 2, unchecked_signature_lines_total: 2, relay_sent_lines_total: 2 });
});
