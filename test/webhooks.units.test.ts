import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import t, { type Test } from 'tap';
import { retryDelayMs } from '../collector/webhookRetry';
import { postWebhook } from '../collector/webhookSender';
import { putBackDelayMs, rotatingSignatureHeader } from '../collector/webhookWorker';
import { within } from '../shared/within';
import { closeServer, listen } from '../shared/process';
import { httpStatus, sleep, waitFor } from '../harness/wait';
import { freeTcpPort } from '../scripts/lib/freePort';
import { secretBox } from '../shared/secretBox';
import { signatureHeader } from '../shared/webhookSignature';
import { lookupSlots } from '../shared/lookupSlots';
import { steadyNow } from '../shared/steadyClock';
import { isPrivateAddress, resolveTarget, resolveTargetWithin, TargetRefusedError, type Lookup } from '../shared/webhookTarget';

// The receiver example of docs/webhooks.md, loaded as a receiver would run it.
const EXAMPLE = path.join(__dirname, '..', 'docs', 'examples', 'webhook-receiver.js');
const { verifySignature } = require(EXAMPLE) as { verifySignature: (secret: string, header: unknown, body: string, nowSeconds?: number) => boolean };

t.test('retry schedule: exponential, jittered within [step/2, step], bounded', async (t) => {
  const policy = { maxAttempts: 8, baseDelayMs: 30_000 };
  const lowest = [1, 2, 3, 4, 5, 6, 7].map((attempt) => retryDelayMs(attempt, policy, () => 0));
  const highest = [1, 2, 3, 4, 5, 6, 7].map((attempt) => retryDelayMs(attempt, policy, () => 1));
  t.same(highest, [30_000, 60_000, 120_000, 240_000, 480_000, 960_000, 1_920_000], 'doubling from the base');
  t.same(
    lowest,
    highest.map((delay) => delay! / 2),
    'never less than half the step',
  );
  t.equal(
    retryDelayMs(3, policy, () => 0.5),
    90_000,
    'jitter in between',
  );
  t.equal(retryDelayMs(8, policy), undefined, 'the last attempt gets no retry');
  t.equal(retryDelayMs(1, { maxAttempts: 1, baseDelayMs: 10 }), undefined, 'one attempt: no retry');
  const window = highest.reduce((sum, delay) => sum! + delay!, 0)!;
  t.equal(window, 3_810_000, 'the default schedule gives up within 63.5 minutes of the first attempt (plus send times)');
});

// A delivery put back unsent (its secret unopened, the lookups busy) waits longer the older it is:
// a pepper dropped for good kept a growing backlog claimed every WEBHOOK_RETRY_BASE_MS (a review).
t.test("a put-back waits the retry base, or a quarter of the delivery's age, at most an hour", async (t) => {
  t.equal(putBackDelayMs(0, 30_000), 30_000, 'a new delivery: the retry base');
  t.equal(putBackDelayMs(400_000, 30_000), 100_000, 'a quarter of its age');
  t.equal(putBackDelayMs(2 * 86_400_000, 30_000), 3_600_000, 'two days old: an hour');
  t.equal(putBackDelayMs(2 * 86_400_000, 7_200_000), 7_200_000, 'never less than the retry base');
});

t.test('private, loopback and link-local addresses', async (t) => {
  const refused = [
    '127.0.0.1',
    '127.255.0.1',
    '10.1.2.3',
    '172.16.0.1',
    '172.31.255.255',
    '192.168.1.1',
    '169.254.169.254',
    '100.64.0.1',
    '0.0.0.0',
    '224.0.0.1',
    '255.255.255.255',
    '::1',
    '::',
    'fe80::1',
    'fc00::1',
    'fd12:3456::1',
    'ff02::1',
    '::ffff:127.0.0.1',
    '::ffff:10.0.0.1',
    // IPv4 inside IPv6 through a gateway (NAT64, 6to4, Teredo) or the deprecated compatible form.
    '64:ff9b::a00:5',
    '64:ff9b:1::a00:5',
    '::ffff:0:a00:5',
    'fec0::1',
    '2002:a00:5::1',
    '2001:0:4136:e378:8000:63bf:3fff:fdd2',
    '::a00:5',
    'not-an-ip',
  ];
  const allowed = ['8.8.8.8', '1.1.1.1', '172.32.0.1', '192.169.0.1', '203.0.113.10', '2606:4700::1111', '::ffff:8.8.8.8', '2001:4860:4860::8888'];
  for (const address of refused) t.ok(isPrivateAddress(address), `${address} refused`);
  for (const address of allowed) t.notOk(isPrivateAddress(address), `${address} allowed`);
});

// On an IPv6-only network with DNS64, every IPv4-only host resolves to 64:ff9b::<its IPv4
// address>: with the prefix refused whole, so was every webhook to such a host (found by a
// review; fails without the fix). The IPv4 address a gateway reaches is held to the IPv4 rules;
// the prefixes whose IPv4 address cannot be read that way stay refused.
t.test('an IPv4 address inside NAT64, 6to4 and IPv4-mapped addresses is held to the IPv4 rules', async (t) => {
  const allowed = ['64:ff9b::808:808', '64:ff9b::8.8.8.8', '2002:0808:0808::1', '::ffff:8.8.8.8'];
  const refused = [
    '64:ff9b::a00:5', // 10.0.0.5
    '64:ff9b::7f00:1', // 127.0.0.1
    '64:ff9b::a9fe:a9fe', // 169.254.169.254
    '2002:7f00:1::1',
    '2002:c0a8:101::1', // 192.168.1.1
    '::ffff:127.0.0.1',
    '64:ff9b:1::808:808', // NAT64 for local use: where the IPv4 address sits is the network's choice
    '2001:0:808:808::1', // Teredo
  ];
  for (const address of allowed) t.notOk(isPrivateAddress(address), `${address} allowed`);
  for (const address of refused) t.ok(isPrivateAddress(address), `${address} refused`);
  const dns64 = async () => [{ address: '64:ff9b::5db8:d70e', family: 6 }];
  t.same(
    await resolveTarget(new URL('https://ipv4-only.example/in'), false, dns64),
    [{ address: '64:ff9b::5db8:d70e', family: 6 }],
    "DNS64's answer for a public IPv4 host",
  );
});

t.test('resolveTarget checks every address a host resolves to', async (t) => {
  const answers =
    (...addresses: string[]) =>
    async () =>
      addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  const url = new URL('https://hooks.example.com/in');
  t.same(await resolveTarget(url, false, answers('8.8.8.8', '2606:4700::1111')), [
    { address: '8.8.8.8', family: 4 },
    { address: '2606:4700::1111', family: 6 },
  ]);
  const refusal = (lookup: Parameters<typeof resolveTarget>[2], allowPrivate = false) =>
    resolveTarget(url, allowPrivate, lookup).then(
      () => 'resolved',
      (error: Error) => error.message,
    );
  const NAME_REFUSED = 'host does not resolve, or resolves to a private, loopback or link-local address';
  t.equal(await refusal(answers('8.8.8.8', '10.0.0.7')), NAME_REFUSED, 'one private answer among public ones is enough to refuse, and is not named');
  t.same(await resolveTarget(url, true, answers('10.0.0.7')), [{ address: '10.0.0.7', family: 4 }], 'allowed by the setting');
  const notFound = async () => {
    throw new Error('ENOTFOUND');
  };
  t.equal(await refusal(notFound, true), NAME_REFUSED, 'a name that does not resolve: the same answer');
  t.equal(await refusal(answers(), true), NAME_REFUSED);
  await t.rejects(
    resolveTarget(new URL('http://[::1]:8080/'), false),
    /^::1 is a private, loopback or link-local address$/,
    'a bracketed IPv6 literal is checked, and named',
  );
  await t.rejects(
    resolveTarget(new URL('http://localhost/'), false),
    new RegExp(`^${NAME_REFUSED}$`),
    'localhost through the system resolver, its address not named',
  );
});

t.test('secretBox: sealed secrets open only with the same pepper and row id', async (t) => {
  const box = secretBox('p'.repeat(32), 'test');
  const sealed = box.seal('whsec_abc', 'row-1');
  t.notOk(sealed.includes(Buffer.from('whsec_abc')), 'the plaintext is not in the box');
  t.equal(box.open(sealed, 'row-1'), 'whsec_abc');
  t.not(box.seal('whsec_abc', 'row-1').toString('hex'), sealed.toString('hex'), 'a fresh IV every time');
  t.throws(() => box.open(sealed, 'row-2'), 'moved to another row: refused');
  t.throws(() => secretBox('q'.repeat(32), 'test').open(sealed, 'row-1'), 'another pepper: refused');
  t.throws(() => secretBox('p'.repeat(32), 'other').open(sealed, 'row-1'), 'another purpose: refused');
  const tampered = Buffer.from(sealed);
  tampered[tampered.length - 1] ^= 1;
  t.throws(() => box.open(tampered, 'row-1'), 'tampered: refused');
});

t.test('the signature header verifies with the docs example, and only as sent', async (t) => {
  const secret = 'whsec_test';
  const body = JSON.stringify({ id: 'e1', type: 'key.new_ip', details: { ip: '203.0.113.7' } });
  const header = signatureHeader(secret, body, 1_800_000_000);
  t.match(header, /^t=1800000000,v1=[0-9a-f]{64}$/);
  t.ok(verifySignature(secret, header, body, 1_800_000_000), 'valid');
  t.ok(verifySignature(secret, header, body, 1_800_000_300), 'valid at the edge of the 5-minute tolerance');
  t.notOk(verifySignature(secret, header, body, 1_800_000_301), 'too old: a replay');
  t.notOk(verifySignature(secret, header, body.replace('203', '204'), 1_800_000_000), 'body changed');
  t.notOk(verifySignature('whsec_other', header, body, 1_800_000_000), 'another secret');
  t.notOk(verifySignature(secret, header.replace('t=1800000000', 't=1800000001'), body, 1_800_000_000), 'timestamp changed');
  t.notOk(verifySignature(secret, 't=1800000000,v1=abcd', body, 1_800_000_000), 'truncated signature');
  t.notOk(verifySignature(secret, undefined, body, 1_800_000_000), 'no header');
  t.notOk(verifySignature(secret, 'garbage', body, 1_800_000_000), 'garbage header');
});

// Through a secret rotation's grace period the header carries a v1 per secret; the example took
// only the last one (Object.fromEntries), so a receiver still on the new secret refused every
// delivery signed for the rotation (fails without the fix).
t.test('a two-signature header, as sent through a rotation, verifies with either secret in the docs example', async (t) => {
  const body = JSON.stringify({ id: 'e1', type: 'key.new_ip', details: { ip: '203.0.113.7' } });
  const header = rotatingSignatureHeader(['whsec_new', 'whsec_old'], body, 1_800_000_000);
  t.match(header, /^t=1800000000,v1=[0-9a-f]{64},v1=[0-9a-f]{64}$/);
  t.equal(header.split(',v1=')[1], signatureHeader('whsec_new', body, 1_800_000_000).split(',v1=')[1], 'the new secret signs first');
  t.equal(rotatingSignatureHeader(['whsec_new'], body, 1_800_000_000), signatureHeader('whsec_new', body, 1_800_000_000), 'one secret: one v1');
  t.ok(verifySignature('whsec_new', header, body, 1_800_000_000), 'the new secret verifies');
  t.ok(verifySignature('whsec_old', header, body, 1_800_000_000), 'the previous secret verifies');
  t.notOk(verifySignature('whsec_other', header, body, 1_800_000_000), 'a third does not');
  t.notOk(verifySignature('whsec_old', header, body.replace('203', '204'), 1_800_000_000), 'nor either with the body changed');
  t.notOk(verifySignature('whsec_new', header, body, 1_800_000_301), 'nor a replay');
});

t.test('docs/webhooks.md shows the example file verbatim', async (t) => {
  const docs = fs.readFileSync(path.join(__dirname, '..', 'docs', 'webhooks.md'), 'utf8');
  const example = fs.readFileSync(EXAMPLE, 'utf8');
  t.ok(docs.includes('```js\n' + example + '```'), 'the example in the docs is the tested file');
  // 40 until the size cap, the refusal to start without a secret and the guarded parse were added.
  t.ok(example.split('\n').length <= 60, 'short enough to read whole: about 55 lines');
});

const EXAMPLE_SECRET = 'whsec_example';

// The example run as a receiver runs it, its own process; resolves once it answers.
async function startExample(t: Test) {
  const port = await freeTcpPort();
  const env = { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0', PORT: String(port), KEYUSAGE_WEBHOOK_SECRET: EXAMPLE_SECRET };
  const child = spawn(process.execPath, [EXAMPLE], { env });
  t.teardown(() => void child.kill());
  let stdout = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  const url = `http://127.0.0.1:${port}/`;
  await waitFor('the example to listen', () => httpStatus(url));
  return { port, url, stdout: () => stdout };
}

// The status the example answers a POST of `body` with, or the error that ended the request.
async function post(url: string, body: string, headers: Record<string, string> = {}): Promise<number | string> {
  try {
    const response = await fetch(url, { method: 'POST', body, headers });
    await response.arrayBuffer();
    return response.status;
  } catch (error) {
    return String((error as Error & { cause?: Error }).cause ?? error);
  }
}

async function postSigned(url: string, body: string) {
  return post(url, body, { 'Keyusage-Signature': signatureHeader(EXAMPLE_SECRET, body, Math.floor(Date.now() / 1000)) });
}

// The example still serves: a signed delivery is answered 204 and handled (logged, by its key).
async function assertServes(t: Test, example: Awaited<ReturnType<typeof startExample>>, keyId: string) {
  const body = JSON.stringify({ id: `event-of-${keyId}`, type: 'key.new_ip', keyId, details: { ip: '203.0.113.7' } });
  t.equal(await postSigned(example.url, body), 204, 'a signed delivery afterwards: 204');
  await waitFor('the example to log the event', () => (example.stdout().includes(`key.new_ip ${keyId}`) ? true : undefined));
}

// What a raw connection sending `bytes` of body after the headers gets back, until it closes.
function postRaw(port: number, bytes: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let answer = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (answer += chunk));
    socket.on('error', () => undefined); // the example closes the connection on the rest of the body
    socket.on('close', () => resolve(answer));
    socket.write(`POST / HTTP/1.1\r\nHost: example\r\nContent-Length: ${bytes}\r\n\r\n`);
    socket.end(Buffer.alloc(bytes, 'a'));
  });
}

// Found by a review: the example buffered any body whole and made it a string before any check,
// so an unsigned 540 MB POST killed it ("Cannot create a string longer than …") and smaller ones
// took what memory they liked (fails without the fix: a 400 once the whole MiB was read).
t.test('the docs example answers 413 to a body past 64 KiB, closes that connection, and still serves', async (t) => {
  const example = await startExample(t);
  t.match(await postRaw(example.port, 1024 * 1024), /^HTTP\/1\.1 413 /, 'an unsigned MiB: 413, the connection closed');
  t.equal(await post(example.url, 'a'.repeat(1024 * 1024)), 413, 'the same through fetch');
  await assertServes(t, example, 'after-a-large-body');
});

// Found by a review: a signed body that was not JSON (or JSON without an id, such as `null`) threw
// from the example's JSON.parse or its read of `id`, and ended the process (fails without the fix).
t.test('the docs example answers 400 to a signed body that is not an event, and still serves', async (t) => {
  const example = await startExample(t);
  for (const body of ['not json', 'null', '{"id":7}']) t.equal(await postSigned(example.url, body), 400, `signed ${body}: 400`);
  await assertServes(t, example, 'after-a-signed-non-event');
});

// Found by a review: without its secret the example started, then died at the first request
// with a fresh timestamp (an HMAC keyed with undefined). It refuses to start, and says why (fails
// without the fix: it listened until the test's bound ended it).
t.test('the docs example refuses to start without KEYUSAGE_WEBHOOK_SECRET', async (t) => {
  const env = { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0', PORT: String(await freeTcpPort()), KEYUSAGE_WEBHOOK_SECRET: undefined };
  const run = spawnSync(process.execPath, [EXAMPLE], { env, encoding: 'utf8', timeout: 10_000 });
  t.equal(run.status, 1, 'exits 1');
  t.match(run.stderr, /KEYUSAGE_WEBHOOK_SECRET is not set/);
});

// A name server that stopped answering held the send past its claim's lease (another worker then
// sent the delivery too): the lookup is within the send's timeout.
t.test('a host whose lookup never answers ends the attempt within the timeout', async (t) => {
  const result = await within(
    postWebhook('https://receiver.example/hook', {}, '{}', {
      timeoutMs: 50,
      allowPrivateTargets: false,
      via: { lookup: () => new Promise(() => undefined), slots: lookupSlots(), owner: 'org' },
    }),
    5_000,
  );
  t.same(result, { ok: false, statusCode: null, error: 'the host did not resolve within 50 ms' });
});

// A receiver on 127.0.0.1 that takes requests and never answers; its port.
async function silentReceiver(t: Test): Promise<number> {
  const server = http.createServer(() => undefined);
  const port = await listen(server, '127.0.0.1', 0, 'receiver');
  t.teardown(() => {
    server.closeAllConnections();
    return closeServer(server);
  });
  return port;
}

// The message named what the lookup left of the timeout ("within 299 ms" for a 300 ms timeout):
// a webhook's owner reads the setting they know.
t.test('a receiver that never answers: the error names the whole timeout, the lookup included', async (t) => {
  const port = await silentReceiver(t);
  const slowLookup = () => sleep(40).then(() => [{ address: '127.0.0.1', family: 4 }]);
  const result = await postWebhook(`http://silent.example:${port}/hook`, {}, '{}', {
    timeoutMs: 200,
    allowPrivateTargets: true,
    via: { lookup: slowLookup, slots: lookupSlots(), owner: 'org' },
  });
  t.same(result, { ok: false, statusCode: null, error: 'no complete response within 200 ms' });
});

// Found by a review of time handling: the attempt's deadline was on the wall clock. Stepped back
// 5 s during the lookup, the attempt ran 5 s past its timeout (past its claim's lease too, and
// another worker sent the delivery again); stepped forward, it failed 1 ms after the lookup with
// a false timeout, an attempt used. On the steady clock it ends at its timeout either way (fails
// without the fix). The bounds are wide of the timeout: they tell the step's effect, not a speed;
// the low one allows for a timer's loop time a few milliseconds stale.
t.test('a wall clock stepped during the lookup neither stretches nor cuts short the attempt', async (t) => {
  const port = await silentReceiver(t);
  const realDateNow = Date.now;
  t.teardown(() => {
    Date.now = realDateNow;
  });
  const timeoutMs = 500;
  for (const stepMs of [-5_000, 5_000]) {
    const steppingLookup = async () => {
      Date.now = () => realDateNow() + stepMs;
      return [{ address: '127.0.0.1', family: 4 }];
    };
    const startedAt = steadyNow();
    const result = await postWebhook(`http://silent.example:${port}/hook`, {}, '{}', {
      timeoutMs,
      allowPrivateTargets: true,
      via: { lookup: steppingLookup, slots: lookupSlots(), owner: 'org' },
    });
    const elapsedMs = steadyNow() - startedAt;
    Date.now = realDateNow;
    t.same(result, { ok: false, statusCode: null, error: `no complete response within ${timeoutMs} ms` }, `stepped ${stepMs} ms: a timeout`);
    t.ok(
      elapsedMs >= timeoutMs - 50 && elapsedMs < 2 * timeoutMs + 500,
      `stepped ${stepMs} ms: the attempt ended after ${Math.round(elapsedMs)} ms, at its ${timeoutMs} ms timeout`,
    );
  }
});

// The same review, for the wait for a lookup slot: what the wait left of the timeout was read on
// the wall clock. Stepped forward while a send waited, a slot granted at once was taken as granted
// past the deadline ("lookups busy", the host not tried); stepped back, a silent name server held
// the send for the step past its timeout (fails without the fix).
t.test('a wall clock stepped during the wait for a lookup slot: the lookup gets what is left of the timeout', async (t) => {
  const realDateNow = Date.now;
  t.teardown(() => {
    Date.now = realDateNow;
  });
  const timeoutMs = 500;
  const resolveSteppedAfterWait = async (stepMs: number, lookup: Lookup) => {
    const slots = lookupSlots(1, 1);
    const held = (await slots.take('other-org', 10))!;
    const resolving = resolveTargetWithin(new URL('https://receiver.example/hook'), false, timeoutMs, { lookup, slots, owner: 'org' });
    Date.now = () => realDateNow() + stepMs;
    held();
    // Bounded: with the step added to the wait, it would end seconds past the timeout.
    const result = await within(resolving, 2 * timeoutMs + 500);
    Date.now = realDateNow;
    return result;
  };
  const answering: Lookup = async () => [{ address: '203.0.113.7', family: 4 }];
  const silent: Lookup = () => new Promise(() => undefined);
  t.strictSame(await resolveSteppedAfterWait(5_000, answering), [{ address: '203.0.113.7', family: 4 }], 'stepped forward: resolved');
  t.equal(await resolveSteppedAfterWait(-5_000, silent), 'lookup timed out', 'stepped back: timed out at its timeout');
});

// A host with several addresses is tried at each; when all refuse, Node reports an AggregateError
// whose own message is empty, and the delivery log showed a blank error.
t.test('a receiver refusing at every one of its addresses: the error names why', async (t) => {
  const server = http.createServer();
  const port = await listen(server, '127.0.0.1', 0, 'closed');
  await closeServer(server);
  const bothFamilies = async () => [
    { address: '127.0.0.1', family: 4 },
    { address: '::1', family: 6 },
  ];
  const result = await postWebhook(`http://closed.example:${port}/hook`, {}, '{}', {
    timeoutMs: 2_000,
    allowPrivateTargets: true,
    via: { lookup: bothFamilies, slots: lookupSlots(), owner: 'org' },
  });
  t.match(result, { ok: false, statusCode: null, error: /ECONNREFUSED/ });
});

// A lookup its caller gave up on held one of libuv's four threads until the name server answered:
// four silent name servers stalled every other lookup of the process, the database's included.
// Lookups hold a slot until they end, one an org at a time, and wait for one until their deadline
// (fails without the fix: the second lookup started at once).
t.test("a silent name server holds one slot of its org's until its lookup ends; other orgs' lookups go on", async (t) => {
  const slots = lookupSlots(2, 1);
  const started: string[] = [];
  let answerSilent: (addresses: Array<{ address: string; family: number }>) => void = () => undefined;
  const silent = (hostname: string) => {
    started.push(hostname);
    return new Promise<Array<{ address: string; family: number }>>((resolve) => (answerSilent = resolve));
  };
  const answering = async (hostname: string) => {
    started.push(hostname);
    return [{ address: '203.0.113.7', family: 4 }];
  };
  const resolve = (host: string, owner: string, lookup: typeof silent, timeoutMs = 50) =>
    resolveTargetWithin(new URL(`https://${host}/hook`), false, timeoutMs, { lookup, slots, owner });
  t.equal(await resolve('one.silent.example', 'a', silent), 'lookup timed out', 'the first gives up at its deadline');
  t.equal(slots.inUse, 1, 'its lookup still holds its slot');
  t.equal(await resolve('two.silent.example', 'a', silent), 'lookup timed out', 'the same org waits for its own slot, then gives up: its host did not resolve');
  t.strictSame(started, ['one.silent.example'], 'without starting a second lookup');
  t.strictSame(await resolve('receiver.example', 'b', answering), [{ address: '203.0.113.7', family: 4 }], 'another org resolves');
  const waiting = resolve('three.silent.example', 'a', answering, 5_000);
  answerSilent([{ address: '203.0.113.8', family: 4 }]);
  t.strictSame(await waiting, [{ address: '203.0.113.7', family: 4 }], 'once the silent lookup ends, the org resolves again');
  t.equal(slots.inUse, 0, 'every slot given back');
});

t.test('lookup slots: at most `total` at once, in arrival order past an owner at its share', async (t) => {
  const slots = lookupSlots(2, 1);
  const a = await slots.take('a', 10);
  const b = await slots.take('b', 10);
  t.ok(a && b);
  t.equal(await slots.take('e', 10), undefined, 'none free within the wait');
  const order: string[] = [];
  const c = slots.take('c', 1_000).then((release) => (order.push('c'), release));
  const a2 = slots.take('a', 1_000).then((release) => (order.push('a'), release));
  a!();
  a!();
  t.equal(slots.inUse, 2, 'a second release gives nothing more');
  (await c)!();
  b!();
  (await a2)!();
  t.strictSame(order, ['c', 'a'], 'c took the slot a freed; a came in next');
  t.equal(slots.inUse, 0);
});

// Found by a review of the slots: a slot granted at the caller's deadline started a lookup no one
// waited for, holding the slot and a thread; a lookup that threw instead of rejecting never gave
// its slot back, and its org never resolved again in the process (each fails without its fix).
t.test('a slot granted at the deadline starts no lookup; a lookup that throws gives its slot back', async (t) => {
  const slots = lookupSlots(1, 1);
  const started: string[] = [];
  const answering = async (hostname: string) => {
    started.push(hostname);
    return [{ address: '203.0.113.7', family: 4 }];
  };
  const via = { slots, owner: 'a' };
  const held = (await slots.take('b', 10))!;
  const late = resolveTargetWithin(new URL('https://late.example/hook'), false, 30, { ...via, lookup: answering });
  // Freed past the wait's end, before its timer could run (the event loop held): granted late.
  const until = Date.now() + 40;
  while (Date.now() < until);
  held();
  t.equal(await late, 'lookups busy');
  t.strictSame([started, slots.inUse], [[], 0], 'no lookup started, the slot free');
  const throwing = () => {
    throw new Error('not a promise');
  };
  await t.rejects(resolveTargetWithin(new URL('https://throws.example/hook'), false, 50, { ...via, lookup: throwing }), TargetRefusedError);
  t.equal(slots.inUse, 0, 'its slot given back');
  t.strictSame(await resolveTargetWithin(new URL('https://next.example/hook'), false, 50, { ...via, lookup: answering }), [
    { address: '203.0.113.7', family: 4 },
  ]);
});

// Found by a review: every send took a lookup slot, one to an address given as such too, and a
// send that found none free within its timeout failed as "did not resolve", an attempt counted
// against WEBHOOK_MAX_ATTEMPTS. Two orgs whose name servers never answer held the collector's two
// slots, and every other org's deliveries failed within the retry window. An address takes no
// slot now, and a name that waited for one in vain says so (each fails without its fix).
t.test("two orgs' silent name servers hold both lookup slots: a send to an address goes out; one to a name says the lookups are busy", async (t) => {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(204).end());
  });
  const port = await listen(server, '127.0.0.1', 0, 'receiver');
  t.teardown(() => closeServer(server));
  const slots = lookupSlots();
  const send = (url: string, owner: string, lookup: Lookup) =>
    postWebhook(url, {}, '{}', { timeoutMs: 100, allowPrivateTargets: true, via: { lookup, slots, owner } });
  const silent: Lookup = () => new Promise(() => undefined);
  const answering: Lookup = async () => [{ address: '127.0.0.1', family: 4 }];
  const lookupTimedOut = { ok: false, statusCode: null, error: 'the host did not resolve within 100 ms' };
  t.strictSame(await Promise.all([send('http://a.silent.example/', 'org-1', silent), send('http://b.silent.example/', 'org-2', silent)]), [
    lookupTimedOut,
    lookupTimedOut,
  ]);
  t.equal(slots.inUse, 2, 'their lookups hold both slots');
  t.strictSame(
    await send(`http://127.0.0.1:${port}/hook`, 'org-3', silent),
    { ok: true, statusCode: 204, error: null },
    'an address is not looked up, and waits for no slot',
  );
  t.strictSame(
    await send(`http://receiver.example:${port}/hook`, 'org-3', answering),
    { ok: false, statusCode: null, error: "no lookup could start within 100 ms: the server's lookups are busy", lookupsBusy: true },
    'a name waits for a slot in vain, and says so: the receiver was not tried',
  );
  t.equal(slots.inUse, 2);
  // Behind its own org's silent lookup it is its own host not resolving, counted as such (a
  // review: it was put back uncounted, for ever; fails without the fix).
  t.strictSame(await send('http://c.silent.example/', 'org-1', answering), lookupTimedOut, "behind its own org's lookup: not resolved");
});
