import { createHash } from 'node:crypto';
import type { Request } from 'express';
import { z } from 'zod';
import { redactKeyMaterial } from '../../shared/logger';
import { AppError } from '../errors';

// Idempotency-Key (as Stripe's, and the IETF httpapi draft's): a client that lost the answer to a
// create or a rotate (of a key, of a webhook's secret) retries with the same key and gets the
// first outcome back, not a second key or webhook. What is kept, and why a replay never carries
// the secret: docs/api-keys.md, "Idempotent create and rotate"; docs/webhooks.md, "Idempotent
// create and secret rotation". The change's side: idempotentChange.ts.

export const IDEMPOTENCY_HEADER = 'Idempotency-Key';

/** The header as the OpenAPI document describes it (api/openapi/contract.ts, `headers`). */
export const idempotencyHeaders = z.object({
  [IDEMPOTENCY_HEADER]: z
    .string()
    .regex(/^[\x20-\x7E]{1,255}$/)
    .optional()
    .meta({
      description:
        'Optional. 1–255 printable ASCII characters, unique per request (a UUID): a retry with the same key and the same request within IDEMPOTENCY_KEY_TTL_SECONDS (24 h by default) is answered as the first was, without the secret it revealed (the plaintext key, the signing secret; `replayed: true`; the Idempotent-Replayed: true header), and makes no change; with another request, 422 idempotency_key_reused.',
    }),
});

/** A request's idempotency key and what it asked for, both as SHA-256. */
export interface IdempotentRequest {
  keyHash: Buffer;
  requestHash: Buffer;
}

const sha256 = (text: string) => createHash('sha256').update(text, 'utf8').digest();

/** JSON with every object's keys sorted: one text for one parsed value, whatever the client's key order or spacing. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, field]) => field !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([name, field]) => `${JSON.stringify(name)}:${canonicalJson(field)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

// Printable ASCII, as Stripe takes it. Node joins a repeated header with ", ": refused rather than
// taken as one key made of both.
const invalid = (why: string) => new AppError('invalid_request', `Invalid header: ${IDEMPOTENCY_HEADER}: ${why}`);

/**
 * The request's Idempotency-Key, or undefined without one. `route`: the route's pattern and the
 * path parameters it acts on (the org is part of where the key is kept): the same key for another
 * route, key or body is another request.
 */
export function idempotentRequest(req: Request, route: { pattern: string; params: Record<string, string> }): IdempotentRequest | undefined {
  const values = req.headersDistinct[IDEMPOTENCY_HEADER.toLowerCase()];
  if (values === undefined) return undefined;
  if (values.length > 1) throw invalid('given more than once');
  const key = values[0];
  if (!/^[\x20-\x7E]{1,255}$/.test(key)) throw invalid('must be 1 to 255 printable ASCII characters (a UUID will do)');
  // Kept as a hash, but a key pasted here would be in proxies' and clients' logs of the request.
  if (redactKeyMaterial(key) !== key) throw invalid('must not contain an API key');
  return {
    keyHash: sha256(key),
    requestHash: sha256(canonicalJson({ method: req.method, route: route.pattern, params: route.params, body: req.body ?? {} })),
  };
}
