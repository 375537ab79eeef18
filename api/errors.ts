import type { ErrorRequestHandler, RequestHandler } from 'express';
import { z } from 'zod';
import { databaseUnavailable } from '../shared/db';
import { redactKeyMaterial, type Logger } from '../shared/logger';
import type { Outcome } from '../shared/usageWire';
import { abandon } from './csvResponse';

// The closed list of error codes a client can receive, each with its one HTTP status.
export const ERROR_STATUS = {
  invalid_request: 400,
  unauthorized: 401,
  forbidden: 403,
  stale_secret: 403,
  not_found: 404,
  conflict: 409,
  idempotency_key_reused: 422,
  payload_too_large: 413,
  unsupported_media_type: 415,
  too_many_requests: 429,
  internal_error: 500,
  service_unavailable: 503,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

/** The one body of every error response. */
export const errorBody = z
  .object({
    error: z.object({
      code: z.enum(Object.keys(ERROR_STATUS) as [ErrorCode, ...ErrorCode[]]),
      message: z.string(),
      requestId: z.string().meta({ description: 'The X-Request-Id response header' }),
    }),
  })
  .meta({ id: 'Error' });

export class AppError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'AppError';
  }

  get status(): number {
    return ERROR_STATUS[this.code];
  }
}

/**
 * A refusal whose use has an outcome of its own: a change whose key was revoked, expired or
 * rotated while it waited is answered 401, and its use is recorded revoked, expired or forbidden
 * (a stale secret), not ok (api/auth/authorize.ts reads it from res.locals.useOutcome).
 */
export class RefusedUseError extends AppError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly outcome: Outcome,
  ) {
    super(code, message);
    this.name = 'RefusedUseError';
  }
}

/**
 * A service's refusal of the input it was given (`field: why`). Services know fields, not requests:
 * the HTTP layer says where the input came from (query of a GET, else body); the CLI prints it as is.
 */
export class InvalidInputError extends AppError {
  constructor(problem: string) {
    super('invalid_request', problem);
    this.name = 'InvalidInputError';
  }
}

// What a client reads for an error: an input refused by a service is named as the request's part.
// Messages quote what the caller sent (a path, a field's name or value): a key pasted into the
// wrong place would come back in a response body, which carries a key only once, at create or rotate.
const clientMessage = (error: AppError, method: string) =>
  redactKeyMaterial(error instanceof InvalidInputError ? `Invalid ${method === 'GET' ? 'query' : 'body'}: ${error.message}` : error.message);

// One message for every authentication failure, so a caller cannot tell a wrong secret from a
// revoked or expired key.
export const UNAUTHORIZED_MESSAGE = 'A valid API key is required (Authorization: Bearer <key> or X-API-Key: <key>)';

export const notFound = (what: string) => new AppError('not_found', `${what} not found`);

// body-parser's strict mode refuses JSON whose top level is not an object or array (null, "x", 1)
// as a parse failure: told "not valid JSON", a client looked for a syntax error it had not made.
// body-parser gives the text it read as `body`.
const parsesAsJson = (body: unknown) => {
  if (typeof body !== 'string') return false;
  try {
    JSON.parse(body);
    return true;
  } catch {
    return false;
  }
};

// body-parser marks its errors with `type` and an HTTP status; they are client errors.
function fromBodyParser(error: { type?: string; status?: number; body?: unknown }): AppError | undefined {
  switch (error.type) {
    case 'entity.parse.failed':
      return new AppError('invalid_request', parsesAsJson(error.body) ? 'Request body must be a JSON object' : 'Request body is not valid JSON');
    case 'entity.not.utf8':
      return new AppError('invalid_request', 'Request body is not valid UTF-8');
    case 'entity.too.large':
      return new AppError('payload_too_large', 'Request body is too large');
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return new AppError('unsupported_media_type', 'Request body encoding is not supported');
    default:
      return undefined;
  }
}

// Other client errors raised before a route runs carry an HTTP status (http-errors): the router's
// for a path that is not valid percent-encoding, body-parser's for a body it could not read (a
// Content-Encoding whose data is not what it says, a body shorter than its Content-Length). Fixed
// messages: theirs quote the input, which may be key material.
function fromHttpError(error: { status?: unknown; code?: unknown; type?: unknown }): AppError | undefined {
  const status = error.status;
  if (typeof status !== 'number' || status < 400 || status > 499) return undefined;
  if (error instanceof URIError) return new AppError('invalid_request', 'The path is not valid percent-encoding (RFC 3986)');
  const inflating = typeof error.code === 'string' && error.code.startsWith('Z_');
  if (inflating || (typeof error.type === 'string' && error.type.startsWith('request.'))) {
    return new AppError('invalid_request', 'Request body could not be read: check its Content-Encoding and Content-Length');
  }
  return new AppError('invalid_request', 'Bad request');
}

// An outage the client can wait out, not a bug. Seconds, for Retry-After.
const DATABASE_RETRY_AFTER = '5';

// 57014: query_canceled, here API_STATEMENT_TIMEOUT_MS (or an operator's pg_cancel_backend).
const STATEMENT_CANCELLED = '57014';

function fromDatabase(error: unknown, method: string): AppError | undefined {
  if ((error as { code?: unknown } | undefined)?.code === STATEMENT_CANCELLED) {
    return new AppError(
      'service_unavailable',
      "A database statement of this request ran past its time limit (API_STATEMENT_TIMEOUT_MS, or the server's statement_timeout) and was cancelled; retry shortly, or ask for less",
    );
  }
  if (!databaseUnavailable(error)) return undefined;
  // A change whose connection failed may have committed all the same (the COMMIT's reply was what
  // got lost): told to retry, a client created a second key whose secret no one had.
  const change = method !== 'GET' && method !== 'HEAD';
  return new AppError(
    'service_unavailable',
    change
      ? 'The database became unavailable during this change, which may or may not have been made: look (GET) before you retry'
      : 'The database is unavailable; retry shortly',
  );
}

// Only Node's 16 KiB header limit bounded a quoted path: each request, unauthenticated, could write
// 16 KB to the log and be answered as much. The start names the request; the length says the rest was there.
const QUOTED_PATH_LENGTH = 256;

/**
 * A request's path as the API quotes it, in the request log line and a 404's message: key material
 * redacted, then cut. Redacted first: a key cut in half is no longer key-shaped, and its start would pass.
 */
export function quotedPath(path: string): string {
  const redacted = redactKeyMaterial(path);
  return redacted.length <= QUOTED_PATH_LENGTH ? redacted : `${redacted.slice(0, QUOTED_PATH_LENGTH)}…(${path.length} characters)`;
}

export const routeNotFound: RequestHandler = (req, _res, next) => {
  next(new AppError('not_found', `No route for ${req.method} ${quotedPath(req.path)}`));
};

export function errorMiddleware(logger: Logger): ErrorRequestHandler {
  return (error, req, res, _next) => {
    // An answer already under way (the CSV report): its status is sent, so the client learns of
    // the failure by the connection closing before the answer's end.
    if (res.headersSent) {
      logger.error(
        { err: { message: error.message, code: error.code }, requestId: res.locals.requestId, method: req.method, path: quotedPath(req.path) },
        'answer cut short',
      );
      // Logged as the server's failure, not as a client that left.
      abandon(res, 500);
      return;
    }
    const appError = error instanceof AppError ? error : (fromBodyParser(error) ?? fromHttpError(error) ?? fromDatabase(error, req.method));
    const requestId = res.locals.requestId;
    if (appError?.code === 'service_unavailable') {
      // Message and code only: a database error's other fields may quote a row, hash included.
      logger.warn({ err: { message: error.message, code: error.code }, requestId }, appError.message);
      res.setHeader('Retry-After', DATABASE_RETRY_AFTER);
    }
    if (error instanceof RefusedUseError) res.locals.useOutcome = error.outcome;
    if (appError) {
      res.status(appError.status).json({ error: { code: appError.code, message: clientMessage(appError, req.method), requestId } });
      return;
    }
    logger.error({ err: error, requestId, method: req.method, path: quotedPath(req.path) }, 'unhandled error');
    res.status(500).json({ error: { code: 'internal_error', message: 'Internal server error', requestId } });
  };
}
