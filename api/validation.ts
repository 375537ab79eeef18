import { isUtf8 } from 'node:buffer';
import express, { type RequestHandler } from 'express';
import { z } from 'zod';
import { redactKeyMaterial } from '../shared/logger';
import { AppError } from './errors';

const NOT_READ = { body: 'is not a field this route takes', query: 'is not a parameter this route reads', params: 'is not a parameter' } as const;

// Turns a zod failure into one 400 whose message names each bad field and why.
export function parseInput<T extends z.ZodType>(schema: T, input: unknown, where: 'body' | 'query' | 'params'): z.output<T> {
  // The query parser turns a repeated parameter into an array, which no schema here expects.
  if (where === 'query') {
    const repeated = Object.entries(input ?? {}).filter(([, value]) => Array.isArray(value));
    if (repeated.length > 0) {
      throw new AppError('invalid_request', `Invalid query: ${repeated.map(([name]) => `${name}: given more than once`).join('; ')}`);
    }
  }
  const result = schema.safeParse(input ?? {});
  if (result.success) return result.data;
  const problems = result.error.issues.flatMap((issue) => {
    // zod names no path for a name the schema lacks: "query: Unrecognized key: …" named the query
    // twice and the parameter only in quotes.
    if (issue.code === 'unrecognized_keys') return issue.keys.map((name) => `${[...issue.path, name].join('.')}: ${NOT_READ[where]}`);
    const field = issue.path.length > 0 ? issue.path.join('.') : where;
    return [`${field}: ${issue.message}`];
  });
  throw new AppError('invalid_request', `Invalid ${where}: ${problems.join('; ')}`);
}

// No i flag: the pattern is also the OpenAPI document's, and JSON Schema patterns take no flags.
export const uuid = z
  .string()
  .regex(/^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/, 'must be a UUID')
  .transform((v) => v.toLowerCase());

// A name an operator gave (an org's, a key's). Control characters are refused: PostgreSQL cannot
// store NUL (a 500 before), and the others would reach terminals and log viewers as escapes.
// Bidirectional embeddings, overrides and isolates are refused too: a name is quoted inside
// sentences (the dashboard's revoke and clean-up confirmations), and one of them reorders the
// rest of the sentence, so a confirmation could read as something else.
// A name with no visible character (zero-width spaces, word joiners, the Braille blank, a
// combining mark alone) is empty as shown, and the line and paragraph separators break a line as
// a newline does (JavaScript, text layout, log viewers): both were taken (a review).
export const displayName = z
  .string()
  .trim()
  .min(1, 'must not be empty')
  .max(200, 'must be at most 200 characters')
  // A pattern, not a refine, so the OpenAPI document states it; an empty name is told by min() alone.
  .regex(/^$|(?![\p{Default_Ignorable_Code_Point}\u2800])[\p{L}\p{N}\p{P}\p{S}]/u, 'must not be empty (it holds no visible character)')
  .regex(/^\P{Cc}*$/u, 'must not contain control characters (such as NUL, tab, newline or ESC)')
  .regex(/^[^\u2028\u2029]*$/u, 'must not contain line or paragraph separators (U+2028, U+2029)')
  .regex(/^[^\u202A-\u202E\u2066-\u2069]*$/u, 'must not contain bidirectional control characters (U+202A to U+202E, U+2066 to U+2069)')
  // A lone surrogate ("\ud800" in JSON) was stored as U+FFFD: the name kept was not the one sent.
  .regex(/^\P{Cs}*$/u, 'must be valid Unicode (it holds a lone surrogate)')
  // A name is shown to every keys:read holder, and a search (`q`) travels in a URL that proxies
  // log: another key's plaintext pasted into either leaked it. Percent-encoded too, as webhook URLs.
  .refine((value) => redactKeyMaterial(value) === value, 'must not contain an API key');

const WHOLE_NUMBER = /^\d{1,16}$/;

/**
 * A whole number in a query string, in decimal digits: z.coerce alone read an empty `offset=` as 0
 * and took `limit=0x10`, `1e1` or `+5`, none of them the integer the document promises. Anything
 * else reaches the number as NaN, refused as not a whole number.
 */
export const queryInteger = (min: number, max: number, fallback: number) =>
  z.preprocess(
    (value) => (typeof value === 'string' && !WHOLE_NUMBER.test(value) ? Number.NaN : value),
    z.coerce
      .number({ error: (issue) => (issue.code === 'invalid_type' ? 'must be a whole number' : undefined) })
      .int()
      .min(min)
      .max(max)
      .default(fallback),
  );

export const pagination = {
  limit: queryInteger(1, 200, 50),
  offset: queryInteger(0, Number.MAX_SAFE_INTEGER, 0),
};

const NO_QUERY = z.strictObject({});

/**
 * For a route that reads no query string: a parameter it would have dropped is refused. A rotate
 * sent with `?gracePeriodSeconds=0` answered 200 and left the old secret working for the default
 * day; a revoke with `?dryRun=true` revoked.
 */
export const noQuery: RequestHandler = (req, _res, next) => {
  parseInput(NO_QUERY, req.query, 'query');
  next();
};

/**
 * For a route that reads no body: one sent (`{"dryRun":true}` to a revoke) is refused, not ignored.
 * Judged by its bytes: a chunked body, or a Content-Length of "00", may well be empty.
 */
export const noBody: RequestHandler = (req, _res, next) => {
  const refused = () => new AppError('invalid_request', 'Invalid body: this route takes no body');
  if (req.headers['transfer-encoding'] === undefined) return Number(req.headers['content-length'] ?? 0) === 0 ? next() : next(refused());
  let decided = false;
  const decide = (error?: unknown) => {
    if (decided) return;
    decided = true;
    req.off('data', onData);
    next(error);
  };
  // The first byte decides; what follows is left unread, as for any refused request.
  const onData = (chunk: Buffer) => chunk.length > 0 && decide(refused());
  req.on('data', onData);
  req.once('end', () => decide());
  req.once('error', decide);
};

// express.json leaves a body of any other type unread, which would then be reported as missing
// fields. A request without a body (or an empty one, as fetch sends) is left to the schema.
// UTF-8 only, as the document says: body-parser also took any other `charset=utf-*`, and replaced
// bytes that are not UTF-8 with U+FFFD, so a key's stored name was not the one sent.
export function jsonBody(limit: string): RequestHandler {
  const parse = express.json({ limit, verify: refuseNonUtf8 });
  return (req, res, next) => {
    const type = req.headers['content-type'];
    if ((req.is('application/json') === false || !isUtf8Charset(type)) && req.headers['content-length'] !== '0') {
      throw new AppError('unsupported_media_type', `Request body must be application/json in UTF-8 (got ${type ?? 'no Content-Type'})`);
    }
    parse(req, res, next);
  };
}

const CHARSET = /;\s*charset\s*=\s*"?([^";\s]*)/i;
const isUtf8Charset = (type: string | undefined) => {
  const charset = CHARSET.exec(type ?? '')?.[1].toLowerCase();
  return charset === undefined || charset === 'utf-8';
};

// body-parser answers a verify error with the error's own status and type (errors.ts, fromBodyParser).
const NOT_UTF8 = 'entity.not.utf8';
const refuseNonUtf8 = (_req: unknown, _res: unknown, body: Buffer) => {
  if (!isUtf8(body)) throw Object.assign(new Error('Request body is not valid UTF-8'), { status: 400, type: NOT_UTF8 });
};

// A time written in year 9999 with a negative offset falls in year 10000 in UTC: accepted, a key's
// expiresAt came back as "+010000-01-01T…", which no client's ISO 8601 parser (nor the API's own
// answer schema) takes, for good. Near year 0 a usage series' window (`to` less 7 days) began in
// year -1, "-000001-12-27T…", likewise. No key nor use predates 1970.
const LATEST_TIME = Date.UTC(9999, 11, 31, 23, 59, 59, 999);
/** Refines an ISO 8601 date-time string: from 1970 to the last millisecond of 9999, in UTC. */
// A value that is no date-time at all passes: its format's own check refused it already, and zod
// runs the refinement anyway, adding this message to every "yesterday".
export const withinSupportedTimes = [
  (value: string) => {
    const time = Date.parse(value);
    return Number.isNaN(time) || (time >= 0 && time <= LATEST_TIME);
  },
  'must be between 1970-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z',
] as const;

// An unencoded "+" in a query string reads as a space: 2026-01-01T00:00:00+02:00 arrives as
// "2026-01-01T00:00:00 02:00".
const plusAsSpace = / \d{2}(:?\d{2})?$/;
const isoDateTime = z.iso
  .datetime({
    offset: true,
    error: (issue) =>
      typeof issue.input === 'string' && plusAsSpace.test(issue.input)
        ? 'must be an ISO 8601 date-time; its "+" arrived as a space: send it as %2B, or give the time in UTC with Z'
        : 'must be an ISO 8601 date-time',
  })
  .refine(...withinSupportedTimes);
/** A date-time query parameter (a Date: to the millisecond, finer digits cut). */
export const dateParam = isoDateTime.transform((v) => new Date(v));
// Digits after the milliseconds that are not all zeros.
const belowMilliseconds = /\.\d{3}0*[1-9]/;
// The times these bounds are compared with are whole milliseconds (events', buckets'), and such a
// time is before x, or at or after x, exactly when it is so of x rounded up: either bound keeps its
// meaning. Cut down instead, each took the millisecond x falls within.
const roundedUpToMillisecond = isoDateTime.transform((v) => new Date(Math.min(Date.parse(v) + (belowMilliseconds.test(v) ? 1 : 0), LATEST_TIME)));
/**
 * The end of a range, [from, to). Cut down, `to=…11:00:00.0005Z` became 11:00:00.000 and the range
 * lost the hour it ends in.
 */
export const rangeEndParam = roundedUpToMillisecond;
/** A lower bound compared with >= (events' `since`). Cut down, `since=…:50.0001Z` took the event at :50.000. */
export const rangeStartParam = roundedUpToMillisecond;
