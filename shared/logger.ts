import pino, { type DestinationStream, type Logger } from 'pino';

export type { Logger };

// Key material can only reach a log line through these fields; pino removes them before
// serialising, so even a careless `log.info({ req })` cannot leak a key.
export const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'headers.authorization',
  'headers["x-api-key"]',
  'plaintext',
  '*.plaintext',
  'secret',
  '*.secret',
  'secretHash',
  '*.secretHash',
  // PostgreSQL's detail of a failed write may quote the row ("Failing row contains (…)"), hash included.
  'err.detail',
];

export function createLogger(options: { level: string; name: string; destination?: DestinationStream }): Logger {
  return pino(
    {
      name: options.name,
      level: options.level,
      redact: { paths: REDACTED_PATHS, remove: true },
      base: { pid: process.pid },
    },
    options.destination,
  );
}

const KEY_LIKE = /ku_[0-9a-f]{32}_[A-Za-z0-9_-]*/g;
const REDACTED = 'ku_[redacted]';

// Each %XX on its own (a key is ASCII): decoding the whole text fails on any malformed escape.
const decodeEachEscape = (text: string) => text.replace(/%([0-9a-f]{2})/gi, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));

// For text we do not control (a malformed datagram quoted in a warning, a request's path, a
// webhook URL): a key-shaped token is replaced before it can reach a log line or an answer. A key
// percent-encoded (`/api/%6Bu_…`) passed as it was, into the request log and a 404's message:
// text holding one is returned with its escapes decoded and the key replaced.
export function redactKeyMaterial(text: string): string {
  const plain = text.replace(KEY_LIKE, REDACTED);
  if (!plain.includes('%')) return plain;
  const decoded = decodeEachEscape(plain);
  const redacted = decoded.replace(KEY_LIKE, REDACTED);
  return redacted === decoded ? plain : redacted;
}
