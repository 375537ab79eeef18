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
