import { noteServerTime } from './format.js';
import { sessionKey } from './session.js';

// Every call to the API: the key as a Bearer header, JSON both ways, and the API's own error
// (code and message) surfaced as an ApiError so the page can show it as is.
export class ApiError extends Error {
  // Private, so the key never shows among the error's properties (console, JSON) while still
  // telling which key an answer was for.
  #key;

  constructor(status, code, message, key) {
    super(message);
    this.status = status;
    this.code = code;
    this.#key = key;
  }

  // A 401 for a key the session has since let go of (rotated away, signed out) says nothing about
  // the key the session holds now.
  sentWith(key) {
    return this.#key === key;
  }
}

// A key is printable ASCII. Anything else (typographic quotes copied with it, a space inside) made
// fetch throw on the header, which read as "The API could not be reached".
const NOT_IN_A_KEY = /[^\x21-\x7e]/;
// A key's own part (shared/logger.ts KEY_LIKE): text holding it holds key material.
const KEY_MATERIAL = /ku_[0-9a-f]{32}_/;
export const holdsKeyMaterial = (text) => KEY_MATERIAL.test(text);
const REQUEST_TIMEOUT_MS = 30_000;
const NOT_JSON = Symbol('not JSON');

// Only a read is known to have changed nothing when its answer does not come: a write (rotate,
// revoke, clean-up, save) may have been made by the server all the same, its answer lost, and
// "did not answer" alone read as "nothing happened". Writes still time out: waiting without end, a
// connection lost for good would leave the action silent for ever.
export const NOT_ANSWERED = `The API did not answer within ${REQUEST_TIMEOUT_MS / 1000} s`;
const timedOut = (method, key) =>
  method === 'GET'
    ? new ApiError(0, 'timeout', NOT_ANSWERED, key)
    : new ApiError(0, 'write_timeout', `${NOT_ANSWERED}: the change may have been made all the same; check before trying again`, key);

// Every answer of the API is JSON, its errors { error: { code, message } }: anything else came from
// something in front of it (a sign-in proxy's page, a gateway's 502 page), and said only "HTTP 502"
// or, for a 200, failed later reading a field of nothing.
function notFromTheApi(response, key) {
  const message = response.ok
    ? 'The server answered with something other than the API (a proxy or sign-in page in front of it?)'
    : `HTTP ${response.status} from a proxy or gateway in front of the API, not from the API itself`;
  return new ApiError(response.status, 'not_api', message, key);
}

export async function api(method, path, { body, key = sessionKey(), idempotencyKey } = {}) {
  if (key && NOT_IN_A_KEY.test(key)) {
    throw new ApiError(0, 'invalid_key', 'This is not an API key: it has characters no key has (quotes or spaces copied with it?)', key);
  }
  const headers = { accept: 'application/json' };
  if (key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (idempotencyKey) headers['idempotency-key'] = idempotencyKey;
  let response;
  const sentAt = Date.now();
  try {
    // A request that never ends (a connection lost while the laptop slept) held its view's
    // refreshes for good: the page skips a tick while its refresh runs.
    const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store', signal });
  } catch (error) {
    if (error?.name === 'TimeoutError') throw timedOut(method, key);
    throw new ApiError(0, 'network', 'The API could not be reached', key);
  }
  const payload = await response.json().catch(() => NOT_JSON);
  if (response.ok && payload === NOT_JSON) throw notFromTheApi(response, key);
  if (!response.ok) throw refusal(response, payload, key);
  // A usage answer says when the server read it: the page's clock is the server's (format.js).
  if (typeof payload?.generatedAt === 'string') noteServerTime(payload.generatedAt, sentAt);
  return payload;
}

// The API's error ({ error: { code, message } }) of an answer that is not ok.
function refusal(response, payload, key) {
  const apiError = payload?.error;
  if (typeof apiError?.message !== 'string') return notFromTheApi(response, key);
  return new ApiError(response.status, apiError.code ?? 'unknown', apiError.message, key);
}

// A report of 100,000 keys takes about 10 s to write (docs/benchmarks.md §5): a download is not
// held to a read's 30 s, only kept from waiting for ever.
const DOWNLOAD_TIMEOUT_MS = 10 * 60_000;

// A CSV the API writes as it reads it (…/usage.csv), as a Blob. An answer that stops before its
// end (the API closes it when a read fails midway) rejects: a short file would pass for whole.
export async function downloadCsv(path, { key = sessionKey() } = {}) {
  const headers = { accept: 'text/csv' };
  if (key) headers.authorization = `Bearer ${key}`;
  const failed = (error, message) =>
    error?.name === 'TimeoutError'
      ? new ApiError(0, 'timeout', `The report did not finish within ${DOWNLOAD_TIMEOUT_MS / 60_000} minutes`, key)
      : new ApiError(0, 'network', message, key);
  let response;
  try {
    response = await fetch(path, { headers, cache: 'no-store', signal: AbortSignal.timeout(DOWNLOAD_TIMEOUT_MS) });
  } catch (error) {
    throw failed(error, 'The API could not be reached');
  }
  if (!response.ok) throw refusal(response, await response.json().catch(() => NOT_JSON), key);
  if (!/^text\/csv/.test(response.headers.get('content-type') ?? '')) throw notFromTheApi(response, key);
  try {
    return await response.blob();
  } catch (error) {
    throw failed(error, 'The report stopped before its end: nothing was saved; try again');
  }
}

// Not crypto.randomUUID(): a page served over plain HTTP from another host than localhost is not a
// secure context, and has no randomUUID. 128 random bits in hex are as unique.
function newIdempotencyKey() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (byte) => byte.toString(16).padStart(2, '0')).join('');
}

// An answer that did not reach the page (the connection dropped, the time ran out, a gateway in
// front of the API gave up on it) says nothing of whether the change was made.
const LOST_STATUSES = new Set([502, 503, 504]);
const answerLost = (error) => error.code === 'network' || error.code === 'write_timeout' || LOST_STATUSES.has(error.status);
const RETRY_AFTER_MS = 1000;

// A change whose answer may be lost (a create or a rotate, whose secret is in that answer only):
// one Idempotency-Key for the person's one action, and one retry with it, so a change the server
// made is answered again (`replayed: true`, without its secret) instead of made twice. The retry
// is sent with the same key the first went with (the API remembers per calling key), and not at
// all once the person signed out or in with another key meanwhile. Every error after a lost answer
// (the retry's, whatever it is, or the first's when the retry is not sent) carries `answerLost`:
// the change may have been made, which the error's own message does not say.
export async function changeOnce(method, path, { body } = {}) {
  const key = sessionKey();
  const idempotencyKey = newIdempotencyKey();
  try {
    return await api(method, path, { body, key, idempotencyKey });
  } catch (error) {
    if (!answerLost(error)) throw error;
    await new Promise((resolve) => setTimeout(resolve, RETRY_AFTER_MS));
    if (sessionKey() !== key) throw afterLostAnswer(error);
    return api(method, path, { body, key, idempotencyKey }).catch((retryError) => {
      throw afterLostAnswer(retryError);
    });
  }
}

function afterLostAnswer(error) {
  error.answerLost = true;
  return error;
}

// An endpoint this server does not have yet (the router's 404), as opposed to a missing key.
export const routeMissing = (error) =>
  error instanceof ApiError && error.status === 404 && error.code === 'not_found' && error.message.startsWith('No route for');

export const orgPath = (who, rest) => `/api/orgs/${encodeURIComponent(who.orgId)}/api-keys${rest}`;
