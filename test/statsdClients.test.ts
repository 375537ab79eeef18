// The collector as a drop-in StatsD sidecar: what real clients send reaches PostgreSQL exactly,
// over real UDP on 127.0.0.1 into the real collector — hot-shots (DogStatsD and Telegraf modes),
// a second, independent client library (statsd-client), and raw lines as Telegraf and DogStatsD
// write them (packed values, upper-case ids, |T timestamps) — and every line that is not a usage
// line is relayed, exactly once and whole, to the COLLECTOR_RELAY_TO upstream.
import dgram from 'node:dgram';
import { StatsD } from 'hot-shots';
import { cachedIpv4Lookup, COLLECTOR_ADDRESS_TTL_MS, createStatsdSink } from '../api/usage/statsdSink';
import StatsdClient from 'statsd-client';
import t, { type Test } from 'tap';
import { sendDatagrams, startTestCollector } from './helpers/collector';
import { waitFor } from '../harness/wait';
import { freshDatabase, hourRows } from './helpers/database';
import { seedKeys } from './helpers/faults';
import { HOUR_MS } from '../shared/timeUnits';
import { packDatagrams } from '../shared/usageWire';

async function loopbackUpstream(t: Test) {
  const socket = dgram.createSocket('udp4');
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  const lines: string[] = [];
  socket.on('message', (message) => lines.push(...message.toString('latin1').split('\n')));
  t.teardown(() => new Promise<void>((resolve) => socket.close(() => resolve())));
  return { port: socket.address().port, lines };
}

t.test('usage lines from real clients are persisted exactly; every other line is relayed', async (t) => {
  const { db, url } = await freshDatabase(t);
  const { orgId, keys } = await seedKeys(db, 'clients', 6);
  const [hotShots, telegrafMode, secondClient, telegrafRaw, dogstatsdRaw, outOfWindow] = keys.map((k) => k.id);
  const upstream = await loopbackUpstream(t);
  const collector = await startTestCollector(t, url, { COLLECTOR_RELAY_TO: `127.0.0.1:${upstream.port}` });
  const port = collector.receiver.port;
  const tags = (key: string, outcome = 'ok', ip = '10.1.0.1') => ({ key, org: orgId, ip, outcome });

  // hot-shots, the client the API itself uses, through its public API this time.
  const dog = new StatsD({ host: '127.0.0.1', port, protocol: 'udp', maxBufferSize: 0, errorHandler: (error) => t.fail(error.message) });
  dog.increment('apikey.used', 3, tags(hotShots));
  dog.increment('apikey.used', 1, tags(hotShots, 'forbidden'));
  dog.increment('http.requests', 1, { route: '/v1/things' });
  const influx = new StatsD({ host: '127.0.0.1', port, protocol: 'udp', maxBufferSize: 0, telegraf: true, errorHandler: (error) => t.fail(error.message) });
  influx.increment('apikey.used', 2, tags(telegrafMode, 'expired'));

  // statsd-client: another implementation, which batches lines into multi-line datagrams. Its
  // ids go upper case (UUIDs are case-insensitive).
  const sdc = new StatsdClient({ host: '127.0.0.1', port, socketTimeout: 50 });
  sdc.increment('apikey.used', 4, { ...tags(secondClient.toUpperCase(), 'ok', '2001:db8::7'), org: orgId.toUpperCase() });
  sdc.increment('apikey.used', 1, tags(secondClient, 'bad_secret', '198.51.100.9'));
  sdc.gauge('queue.depth', 7);
  sdc.timing('db.query', 12, { table: 'keys' });

  // Raw lines as Telegraf's statsd output and a DogStatsD v1.3 agent write them.
  const now = Date.now();
  const earlier = Math.floor((now - 30 * 60_000) / 1000) * 1000; // 30 min ago, whole seconds
  const farPast = Math.floor((now - 3 * HOUR_MS) / 1000) * 1000;
  await sendDatagrams(port, [
    `apikey.used,key=${telegrafRaw},org=${orgId},ip=10.1.0.5,outcome=revoked:5|c\ncpu,host=web-1,core=0:0.5|g`,
    `apikey.used:1:2:3|c|#key:${dogstatsdRaw},org:${orgId},ip:10.1.0.6,outcome:ok|T${earlier / 1000}|c:ci-1234\n` +
      `apikey.used:2|c|@0.5|#key:${outOfWindow},org:${orgId},ip:10.1.0.7,outcome:ok|T${farPast / 1000}\n` +
      'page.views:1:1|c|#env:prod\nnot a statsd line',
  ]);

  const expected = new Map([
    [hotShots, { uses: 4, ok: 3, forbidden: 1 }],
    [telegrafMode, { uses: 2, expired: 2 }],
    [secondClient, { uses: 4, ok: 4, bad_secret: 1 }],
    [telegrafRaw, { uses: 5, revoked: 5 }],
    [dogstatsdRaw, { uses: 6, ok: 6 }],
    [outOfWindow, { uses: 4, ok: 4 }],
  ]);
  const rows = await waitFor('every use persisted', async () => {
    const found = await db('api_key_usage').whereIn('key_id', [...expected.keys()]);
    const total = found.reduce((sum, row) => sum + Number(row.request_count), 0);
    return total === 25 ? found : undefined;
  });
  for (const row of rows) {
    const want = expected.get(row.key_id)!;
    t.equal(Number(row.request_count), want.uses, `${row.key_id}: uses`);
    for (const outcome of ['ok', 'forbidden', 'expired', 'revoked', 'bad_secret'] as const) {
      t.equal(Number(row[`${outcome}_count`]), want[outcome as keyof typeof want] ?? 0, `${row.key_id}: ${outcome}`);
    }
  }
  const byKey = new Map(rows.map((row) => [row.key_id, row]));
  t.equal(byKey.get(secondClient).last_used_ip, '2001:db8::7', 'upper-case ids reached the lower-case key');
  t.equal(byKey.get(secondClient).last_failed_ip, '198.51.100.9');
  t.equal(new Date(byKey.get(dogstatsdRaw).last_used_at).getTime(), earlier, '|T sets last_used_at');
  const hours = await hourRows(db, [dogstatsdRaw]);
  t.strictSame(
    hours.map((h) => new Date(h.hour).getTime()),
    [earlier - (earlier % HOUR_MS)],
    '|T picks the hour bucket',
  );
  const late = new Date(byKey.get(outOfWindow).last_used_at).getTime();
  t.ok(late >= now - 60_000, 'a |T beyond the window counts at receipt time');
  t.equal(collector.aggregator.outOfWindowSamples, 1);

  const otherLines = [
    'http.requests:1|c|#route:/v1/things',
    'queue.depth:7|g',
    'db.query:12|ms|#table:keys',
    'cpu,host=web-1,core=0:0.5|g',
    'page.views:1:1|c|#env:prod',
  ];
  await waitFor('the other lines relayed', () => (upstream.lines.length >= otherLines.length ? true : undefined));
  t.strictSame([...upstream.lines].sort(), [...otherLines].sort(), 'exactly the other lines, whole, once; no usage line, no bad line');
  const metrics = Object.fromEntries(collector.samples().map((s) => [s.name.replace('keyusage_collector_', ''), s.value]));
  t.match(metrics, {
    other_lines_total: 5,
    relay_sent_lines_total: 5,
    relay_dropped_lines_total: 0,
    bad_lines_total: 1,
    usage_lines_total: 8,
    out_of_window_timestamps_total: 1,
  });

  dog.close();
  influx.close();
  sdc.close();
});

// Found by a review: each line's count was round(1 / rate), so hot-shots' `:1|c|@0.7` for every
// kept call counted 1 use for 1.43 (−30 %), and @0.4 counted 3 for 2.5 (+20 %).
t.test('sampled lines sum to calls / rate: 1,000 lines at @0.7 count about 1,429 uses, not 1,000', async (t) => {
  const { db, url } = await freshDatabase(t);
  const { orgId, keys } = await seedKeys(db, 'sampled', 1);
  const keyId = keys[0].id;
  const collector = await startTestCollector(t, url);
  const line = `apikey.used:1|c|@0.7|#key:${keyId},org:${orgId},ip:10.0.0.1,outcome:ok`;
  await sendDatagrams(collector.receiver.port, packDatagrams(Array.from({ length: 1000 }, () => line)));
  const received = await waitFor('every line received', () => (collector.ingest.usageLines === 1000 ? collector.ingest.usesReceived : undefined));
  const persisted = await waitFor('every use persisted', async () => {
    const row = await db('api_key_usage').where({ key_id: keyId }).first();
    return row && Number(row.request_count) === received ? received : undefined;
  });
  // Each line adds 1 or 2; the total is 1,000 + Binomial(1,000, 3/7): mean 1,428.6, sd 15.6.
  // These bounds lie more than 6 sd out, and 1,000 far below them.
  t.ok(persisted >= 1330 && persisted <= 1530, `${persisted} uses for 1,000 lines at @0.7 (1,000 / 0.7 = 1,428.6)`);
});

t.test('DogStatsD events and service checks are relayed whole, not counted as malformed', async (t) => {
  const { url } = await freshDatabase(t);
  const upstream = await loopbackUpstream(t);
  const collector = await startTestCollector(t, url, { COLLECTOR_RELAY_TO: `127.0.0.1:${upstream.port}` });
  const lines = ['_e{5,4}:hello|world|#env:prod', '_sc|api.up|0'];
  await sendDatagrams(collector.receiver.port, [lines.join('\n')]);
  await waitFor('both relayed', () => (upstream.lines.length >= lines.length ? true : undefined));
  t.strictSame(upstream.lines, lines, 'byte for byte, once');
  const metrics = Object.fromEntries(collector.samples().map((s) => [s.name.replace('keyusage_collector_', ''), s.value]));
  t.match(metrics, { other_lines_total: 2, bad_lines_total: 0, relay_sent_lines_total: 2 });
});

t.test('without COLLECTOR_RELAY_TO other lines are counted and dropped', async (t) => {
  const { url } = await freshDatabase(t);
  const collector = await startTestCollector(t, url);
  t.equal(collector.relay, undefined);
  await sendDatagrams(collector.receiver.port, ['requests:1|c\nqueue.depth:3|g']);
  await waitFor('the lines counted', () => (collector.ingest.otherLines === 2 ? true : undefined));
  const metrics = Object.fromEntries(collector.samples().map((s) => [s.name.replace('keyusage_collector_', ''), s.value]));
  t.match(metrics, { other_lines_total: 2, relay_sent_lines_total: 0, relay_dropped_lines_total: 0 });
});

t.test('a relay target whose name does not resolve stops the start, naming the variable', async (t) => {
  const { url } = await freshDatabase(t);
  await t.rejects(
    startTestCollector(t, url, { COLLECTOR_RELAY_TO: 'no-such-host.invalid:8125' }),
    /^COLLECTOR_RELAY_TO: cannot reach no-such-host\.invalid:8125/,
  );
});

t.test("the API's sink sends its datagrams and nothing else, whatever DD_* variables say", async (t) => {
  // Datadog's tooling sets these on every pod; they turned hot-shots' own telemetry on.
  const saved = { DD_ENV: process.env.DD_ENV, DD_SERVICE: process.env.DD_SERVICE };
  Object.assign(process.env, { DD_ENV: 'prod', DD_SERVICE: 'api' });
  t.teardown(() => {
    for (const [name, value] of Object.entries(saved))
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
  });
  const upstream = await loopbackUpstream(t);
  const sink = createStatsdSink({ host: '127.0.0.1', port: upstream.port, onError: () => {} });
  await new Promise<void>((resolve, reject) => sink.send('apikey.used:1|c', (error) => (error ? reject(error) : resolve())));
  await sink.close();
  await waitFor('the datagram', () => (upstream.lines.length > 0 ? true : undefined));
  await new Promise((resolve) => setTimeout(resolve, 200)); // room for anything sent at close
  t.strictSame(upstream.lines, ['apikey.used:1|c']);
});

// hot-shots' own cache looked a collector's host name up with no family for its udp4 socket: a
// name whose first address was IPv6 failed every send (EINVAL), and a refresh that failed lost
// the datagram though the address had not changed (found by a review; fails without the fix).
t.test("the API's sink sends to a host name's IPv4 address, and keeps the last one while a lookup fails", async (t) => {
  const upstream = await loopbackUpstream(t);
  const asked: Array<{ hostname: string; family: number }> = [];
  let resolverUp = true;
  const resolve = (hostname: string, options: { family: 4 }, callback: (error: Error | null, address: string) => void) => {
    asked.push({ hostname, family: options.family });
    if (resolverUp) callback(null, '127.0.0.1');
    else callback(Object.assign(new Error('getaddrinfo EAI_AGAIN'), { code: 'EAI_AGAIN' }), '');
  };
  const sink = createStatsdSink({ host: 'collector.internal', port: upstream.port, onError: () => {}, resolve });
  t.teardown(() => sink.close());
  const send = (line: string) => new Promise<void>((done, fail) => sink.send(line, (error) => (error ? fail(error) : done())));
  await send('apikey.used:1|c');
  t.strictSame(asked, [{ hostname: 'collector.internal', family: 4 }], 'looked up for IPv4, once');
  let clock = 0;
  const lookup = cachedIpv4Lookup(resolve, () => clock);
  await new Promise<void>((done) => lookup('collector.internal', {}, () => done()));
  clock = COLLECTOR_ADDRESS_TTL_MS;
  resolverUp = false;
  const failing = await new Promise((done) => lookup('collector.internal', {}, (error, address) => done([error, address])));
  t.strictSame(failing, [null, '127.0.0.1'], 'a lookup failing after one worked: the last address');
  const bound = await new Promise((done) => lookup('0.0.0.0', {}, (error, address, family) => done([error, address, family])));
  t.strictSame(bound, [null, '0.0.0.0', 4], "an address (the socket's bind) is itself, not looked up");
  await waitFor('the datagram', () => (upstream.lines.length > 0 ? true : undefined));
  t.strictSame(upstream.lines, ['apikey.used:1|c']);
});
