import http from 'node:http';
import net from 'node:net';
import t from 'tap';
import { startApi } from '../api/main';
import { ConfigError, loadConfig } from '../shared/config';
import { createLogger } from '../shared/logger';
import { within } from '../shared/within';
import { freshDatabase } from './helpers/database';

// The API's server kept Node's limits: a client sending its headers a byte at a time (slowloris)
// held a socket, a file descriptor, for 60 s, and one trickling its body for 300 s.

const TEST = { NODE_ENV: 'test' };

// Far past the 300 ms headers limit below (and its check, at most as often), far short of Node's
// own 60 s (checked every 30 s): the socket would still be open without the API's limits.
const CLOSED_WITHIN_MS = 10_000;

t.test('a client that stops mid-header is answered 408 and its socket closed after API_HEADERS_TIMEOUT_MS', async (t) => {
  const { url } = await freshDatabase(t);
  const config = loadConfig({
    ...TEST,
    PORT: '0',
    API_METRICS_PORT: '0',
    USAGE_TRACKING: 'false',
    API_HEADERS_TIMEOUT_MS: '300',
    API_KEEP_ALIVE_TIMEOUT_MS: '100',
    API_REQUEST_TIMEOUT_MS: '2000',
  });
  const api = await startApi(config, createLogger({ level: 'silent', name: 'test' }), url);
  t.teardown(() => api.stop());
  t.strictSame([api.server.requestTimeout, api.server.headersTimeout, api.server.keepAliveTimeout], [2000, 300, 100], "the server's limits, as configured");

  const socket = net.connect(api.port, '127.0.0.1');
  t.teardown(() => socket.destroy());
  let received = '';
  socket.setEncoding('utf8').on('data', (chunk: string) => (received += chunk));
  const closed = new Promise<true>((resolve) => socket.on('close', () => resolve(true)));
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a');

  t.equal(await within(closed, CLOSED_WITHIN_MS), true, 'the server closed the socket');
  t.match(received, /^HTTP\/1\.1 408 /, 'after answering 408 Request Timeout');
});

// Node answered an expectation other than 100-continue itself: a bare 417, no request id.
t.test('a request with an Expect header other than 100-continue is served by the API, its answer in the error shape', async (t) => {
  const { url } = await freshDatabase(t);
  const config = loadConfig({ ...TEST, PORT: '0', API_METRICS_PORT: '0', USAGE_TRACKING: 'false' });
  const api = await startApi(config, createLogger({ level: 'silent', name: 'test' }), url);
  t.teardown(() => api.stop());
  // Not fetch: undici refuses to send an Expect header.
  const answer = await new Promise<{ status: number | undefined; requestId: unknown; body: string }>((resolve, reject) => {
    const request = http.get({ host: '127.0.0.1', port: api.port, path: '/api/whoami', headers: { expect: '200-ok' } }, (response) => {
      let body = '';
      response.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode, requestId: response.headers['x-request-id'], body }));
    });
    request.on('error', reject);
  });
  t.equal(answer.status, 401, 'no key: refused by the API, not 417 by Node');
  const { error } = JSON.parse(answer.body) as { error: { code: string; requestId: string } };
  t.equal(error.code, 'unauthorized');
  t.equal(error.requestId, answer.requestId, 'with its request id');
});

t.test('the server limits by default: 30 s for a request, 10 s for its headers, 5 s of keep-alive', async (t) => {
  t.strictSame(loadConfig(TEST).api.server, { requestTimeoutMs: 30_000, headersTimeoutMs: 10_000, keepAliveTimeoutMs: 5_000 });
});

const refusal = (env: Record<string, string>) => {
  try {
    loadConfig({ ...TEST, ...env });
  } catch (error) {
    if (error instanceof ConfigError) return error.message;
    throw error;
  }
  return 'loaded';
};

t.test('server limits that Node refuses, or that cut a kept-alive request short, fail at load naming the variable', async (t) => {
  t.match(
    refusal({ API_HEADERS_TIMEOUT_MS: '40000' }),
    /\bAPI_HEADERS_TIMEOUT_MS: must be at most API_REQUEST_TIMEOUT_MS \(30000 ms\)/,
    'headers given longer than the whole request',
  );
  t.match(
    refusal({ API_HEADERS_TIMEOUT_MS: '5000' }),
    /\bAPI_HEADERS_TIMEOUT_MS: must be longer than API_KEEP_ALIVE_TIMEOUT_MS \(5000 ms\)/,
    'headers no longer than keep-alive',
  );
  t.match(refusal({ API_REQUEST_TIMEOUT_MS: '30s' }), /\bAPI_REQUEST_TIMEOUT_MS: must be a whole number/);
  t.match(refusal({ API_REQUEST_TIMEOUT_MS: '0' }), /\bAPI_REQUEST_TIMEOUT_MS: must be at least 100/, '0 (no limit) is not taken');
  t.match(refusal({ API_KEEP_ALIVE_TIMEOUT_MS: '0' }), /\bAPI_KEEP_ALIVE_TIMEOUT_MS: must be at least 1/, '0 (idle for ever) is not taken');
  t.equal(refusal({ API_REQUEST_TIMEOUT_MS: '10000', API_HEADERS_TIMEOUT_MS: '10000', API_KEEP_ALIVE_TIMEOUT_MS: '9999' }), 'loaded', 'at the bounds');
});
