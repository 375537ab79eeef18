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
const REQUEST_TIMEOUT_MS = 30_000;

export async function api(method, path, { body, key = sessionKey() } = {}) {
  if (key && NOT_IN_A_KEY.test(key)) {
    throw new ApiError(0, 'invalid_key', 'This is not an API key: it has characters no key has (quotes or spaces copied with it?)', key);
  }
  const headers = { accept: 'application/json' };
  if (key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response;
  try {
    // A request that never ends (a connection lost while the laptop slept) held its view's
    // refreshes for good: the page skips a tick while its refresh runs.
    const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store', signal });
  } catch (error) {
    if (error?.name === 'TimeoutError') throw new ApiError(0, 'timeout', `The API did not answer within ${REQUEST_TIMEOUT_MS / 1000} s`, key);
    throw new ApiError(0, 'network', 'The API could not be reached', key);
  }
  const payload = await response.json().catch(() => undefined);
  if (!response.ok) {
    throw new ApiError(response.status, payload?.error?.code ?? 'unknown', payload?.error?.message ?? `HTTP ${response.status}`, key);
  }
  return payload;
}

// An endpoint this server does not have yet (the router's 404), as opposed to a missing key.
export const routeMissing = (error) =>
  error instanceof ApiError && error.status === 404 && error.code === 'not_found' && error.message.startsWith('No route for');

export const orgPath = (who, rest) => `/api/orgs/${encodeURIComponent(who.orgId)}/api-keys${rest}`;
