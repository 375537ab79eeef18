import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import t, { type Test } from 'tap';
import { postWebhook } from '../collector/webhookSender';
import { lookupSlots } from '../shared/lookupSlots';
import { within } from '../shared/within';

// Receivers that attack the collector's event loop (found by a review of hostile receivers): what
// they make postWebhook do, on real sockets on 127.0.0.1.

// A self-signed RSA certificate for CN=localhost, valid until 2126, made for these tests with
// `openssl req -x509 -newkey rsa:2048 -nodes -days 36500 -subj /CN=localhost`. The collector
// refuses it, after the handshake: what is tested here happens before.
const SELF_SIGNED = {
  key: fs.readFileSync(path.join(__dirname, 'fixtures', 'selfSignedReceiver.key.pem')),
  cert: fs.readFileSync(path.join(__dirname, 'fixtures', 'selfSignedReceiver.cert.pem')),
};

function send(url: string) {
  return postWebhook(url, {}, '{}', { timeoutMs: 3_000, allowPrivateTargets: true, via: { slots: lookupSlots(), owner: 'org' } });
}

function listenOnLoopback(t: Test, server: net.Server): Promise<number> {
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)));
}

// A TLS receiver with `options` over the self-signed certificate; `refusals` are the codes of the
// handshakes the server itself failed.
async function tlsReceiver(t: Test, options: tls.TlsOptions) {
  const server = tls.createServer({ ...SELF_SIGNED, ...options }, (socket) => {
    socket.on('error', () => undefined);
    socket.end('HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n');
  });
  const refusals: string[] = [];
  server.on('tlsClientError', (error: NodeJS.ErrnoException) => refusals.push(error.code ?? error.message));
  const port = await listenOnLoopback(t, server);
  return { url: `https://127.0.0.1:${port}/hook`, refusals };
}

// The receiver picks a finite-field group's prime (up to 10,000 bits in TLS 1.2, ffdhe8192 in
// TLS 1.3) and OpenSSL computes with it on the event loop, before the certificate is checked:
// 0.5–1.7 s per attempt with every org's datagrams waiting. The collector offers no such exchange,
// so these handshakes fail before any is computed; 2048-bit groups here keep the test quick.
const FINITE_FIELD_ONLY: Record<string, tls.TlsOptions & { refusedAs: string }> = {
  'TLS 1.2, DHE only': { maxVersion: 'TLSv1.2', ciphers: 'DHE-RSA-AES128-GCM-SHA256', dhparam: 'auto', refusedAs: 'ERR_SSL_NO_SHARED_CIPHER' },
  'TLS 1.3, ffdhe2048 only': { minVersion: 'TLSv1.3', ecdhCurve: 'ffdhe2048', refusedAs: 'ERR_SSL_NO_SUITABLE_KEY_SHARE' },
};

for (const [name, { refusedAs, ...options }] of Object.entries(FINITE_FIELD_ONLY)) {
  t.test(`a receiver offering a finite-field key exchange only (${name}) gets no handshake`, async (t) => {
    const receiver = await tlsReceiver(t, options);
    const result = await send(receiver.url);
    t.match(result, { ok: false, statusCode: null, error: /handshake failure/ }, 'the attempt fails in the handshake, not at the certificate');
    t.strictSame(receiver.refusals, [refusedAs], 'the receiver found no key exchange in common');
  });
}

// The handshake itself still works: it completes, and the certificate is what is refused.
for (const maxVersion of ['TLSv1.2', 'TLSv1.3'] as const) {
  t.test(`a receiver with the default (ECDHE) key exchange, ${maxVersion}: the handshake completes`, async (t) => {
    const receiver = await tlsReceiver(t, { maxVersion });
    const result = await send(receiver.url);
    t.same(result, { ok: false, statusCode: null, error: 'self-signed certificate' });
    t.strictSame(
      receiver.refusals.filter((code) => code !== 'ECONNRESET'),
      [],
      'no handshake failed on the receiver',
    );
  });
}

const EARLY_HINTS = Buffer.from('HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n');

// A raw HTTP receiver that answers each request with `answer(socket)`; `closed` resolves when the
// collector's side of the connection has gone.
async function rawReceiver(t: Test, answer: (socket: net.Socket) => void) {
  let gone!: () => void;
  const closed = new Promise<true>((resolve) => (gone = () => resolve(true)));
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    socket.on('close', gone);
    socket.once('data', () => answer(socket));
  });
  const port = await listenOnLoopback(t, server);
  return { url: `http://127.0.0.1:${port}/hook`, closed };
}

// Node parses 1xx responses without end before the final one, and only the final one's body
// counted toward the 64 KiB cap: a receiver writing 103s as fast as it could kept the event loop
// parsing them until the attempt's deadline (3.36 s of 3.4 s busy).
t.test('a receiver answering interim (1xx) responses without end: the attempt ends after 10', async (t) => {
  const receiver = await rawReceiver(t, (socket) => {
    const pump = () => {
      while (!socket.destroyed && socket.write(EARLY_HINTS));
    };
    socket.on('drain', pump);
    pump();
  });
  const result = await send(receiver.url);
  t.same(result, { ok: false, statusCode: null, error: 'more than 10 interim (1xx) responses' });
  t.equal(await within(receiver.closed, 5_000), true, 'the collector closed the connection');
});

t.test('a receiver sending 10 interim responses, then its answer: delivered', async (t) => {
  const receiver = await rawReceiver(t, (socket) => {
    socket.end(Buffer.concat([...Array(10).fill(EARLY_HINTS), Buffer.from('HTTP/1.1 204 No Content\r\n\r\n')]));
  });
  t.same(await send(receiver.url), { ok: true, statusCode: 204, error: null });
});
