import http from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import tls from 'node:tls';
import { steadyNow } from '../shared/steadyClock';
import { resolveTargetWithin, TargetRefusedError, type LookupFor, type ResolvedAddress, type Unresolved } from '../shared/webhookTarget';

// One POST to an untrusted receiver. The receiver chooses how long to take, what to answer and
// where to point its DNS, so: every resolved address is checked and the socket connects to a
// checked one; the whole exchange, the lookup included, has one deadline; at most
// MAX_RESPONSE_BYTES are read, after at most MAX_INTERIM_RESPONSES interim (1xx) ones; a
// redirect is not followed (node:http never follows one) and counts as a failure.

const MAX_RESPONSE_BYTES = 64 * 1024;
// Node reads 1xx responses (each up to its header limit) without end before the final one: a
// receiver writing `103 Early Hints` in a loop kept the loop busy parsing them until the deadline.
const MAX_INTERIM_RESPONSES = 10;

// The receiver picks the key exchange's parameters, and OpenSSL computes on the event loop (every
// org's usage datagrams too) during the handshake, before the certificate is checked: a finite-
// field group of up to 10,000 bits (DHE in TLS 1.2, ffdhe8192 in TLS 1.3) stalled it 0.5–1.7 s per
// attempt. Elliptic-curve exchanges only, on curves whose cost is small and fixed.
const RECEIVER_TLS = { ciphers: `${tls.DEFAULT_CIPHERS}:!kDHE`, ecdhCurve: 'X25519:prime256v1:secp384r1' };

export interface SendOptions {
  timeoutMs: number;
  allowPrivateTargets: boolean;
  /** The resolver (the system's unless given), the process's lookup slots and the org sending. */
  via: LookupFor;
}

export interface SendResult {
  ok: boolean;
  statusCode: number | null;
  /** Why the attempt failed, in words safe to show the webhook's owner; null when it succeeded. */
  error: string | null;
  /**
   * No lookup slot came free within the timeout, so the host was not tried: the attempt says
   * nothing of the receiver, and is not the delivery's to count (collector/webhookWorker.ts).
   */
  lookupsBusy?: true;
}

// Answers Node's DNS step with the addresses already checked, so a second DNS answer (a rebinding
// attack) is never used. Node asks for one address or, with autoSelectFamily, for all of them.
function pinnedLookup(addresses: ResolvedAddress[]): LookupFunction {
  return (_hostname, options, callback) => {
    if (options.all) (callback as (error: null, all: ResolvedAddress[]) => void)(null, addresses);
    else callback(null, addresses[0].address, addresses[0].family);
  };
}

function describe(statusCode: number): string | null {
  if (statusCode >= 200 && statusCode < 300) return null;
  if (statusCode >= 300 && statusCode < 400) return `redirect not followed (HTTP ${statusCode})`;
  return `HTTP ${statusCode}`;
}

// Node tries each address of a host with several; when all fail it reports an AggregateError whose
// own message is empty, and the delivery log showed a blank error. Its inner errors say why.
function errorText(error: Error & { code?: string; errors?: unknown[] }): string {
  if (error.message) return error.message;
  const inner = (error.errors ?? []).map((each) => (each instanceof Error ? each.message : '')).filter(Boolean);
  if (inner.length > 0) return inner.join('; ');
  return error.code ?? 'the connection failed';
}

// `leftMs` is what the lookup left of the attempt's timeout, `timeoutMs` the whole, as reported.
function exchange(
  url: URL,
  addresses: ResolvedAddress[],
  headers: Record<string, string>,
  body: string,
  time: { leftMs: number; timeoutMs: number },
): Promise<SendResult> {
  return new Promise((resolve) => {
    const common = { method: 'POST', headers, agent: false as const, lookup: pinnedLookup(addresses) };
    const request = url.protocol === 'https:' ? https.request(url, { ...common, ...RECEIVER_TLS }) : http.request(url, common);
    let statusCode: number | null = null;
    // The first outcome wins; destroying the request afterwards may emit more events, ignored.
    const finish = (result: SendResult) => {
      clearTimeout(deadline);
      request.destroy();
      resolve(result);
    };
    const answered = () => {
      const error = describe(statusCode ?? 0);
      finish({ ok: error === null, statusCode, error });
    };
    const deadline = setTimeout(() => finish({ ok: false, statusCode, error: `no complete response within ${time.timeoutMs} ms` }), time.leftMs);
    request.on('error', (error) => finish({ ok: false, statusCode, error: errorText(error) }));
    let interim = 0;
    request.on('information', () => {
      interim += 1;
      if (interim > MAX_INTERIM_RESPONSES) finish({ ok: false, statusCode, error: `more than ${MAX_INTERIM_RESPONSES} interim (1xx) responses` });
    });
    request.on('response', (response) => {
      statusCode = response.statusCode ?? 0;
      let received = 0;
      response.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received >= MAX_RESPONSE_BYTES) answered();
      });
      response.on('end', answered);
      response.on('error', (error) => finish({ ok: false, statusCode, error: errorText(error) }));
    });
    request.end(body);
  });
}

export async function postWebhook(url: string, headers: Record<string, string>, body: string, options: SendOptions): Promise<SendResult> {
  const target = new URL(url);
  // On the steady clock: a wall clock stepped back during the lookup stretched the attempt past
  // its claim's lease, and one stepped forward cut it short with a false timeout.
  const startedAt = steadyNow();
  let addresses: ResolvedAddress[] | Unresolved;
  try {
    // The lookup counts against the attempt's timeout: one past the claim's lease let another
    // worker claim and send the delivery too.
    addresses = await resolveTargetWithin(target, options.allowPrivateTargets, options.timeoutMs, options.via);
  } catch (error) {
    if (error instanceof TargetRefusedError) return { ok: false, statusCode: null, error: `refused: ${error.message}` };
    throw error;
  }
  if (addresses === 'lookups busy') {
    return { ok: false, statusCode: null, error: `no lookup could start within ${options.timeoutMs} ms: the server's lookups are busy`, lookupsBusy: true };
  }
  if (addresses === 'lookup timed out') return { ok: false, statusCode: null, error: `the host did not resolve within ${options.timeoutMs} ms` };
  return exchange(target, addresses, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...headers }, body, {
    leftMs: Math.max(1, options.timeoutMs - (steadyNow() - startedAt)),
    timeoutMs: options.timeoutMs,
  });
}
