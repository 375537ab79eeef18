import type { Response } from 'express';
import { z } from 'zod';
import type { Db } from '../../shared/db';
import { AppError } from '../errors';
import type { IdempotentRequest } from './idempotency';
import { NO_CALLER, findRememberedOutcome, rememberOutcome, type IdempotentResource, type RememberedOutcome } from './idempotency.repository';

// What every change that reveals a secret once (key create and rotate, webhook create and secret
// rotation) does with an Idempotency-Key, in its own audited transaction, after
// beginAuditedChange took the org's lock: answer a retry as the first request was answered, or
// remember the answer of the change it makes. The services keep what is theirs (the change, the
// view, the audit entry); docs/api-keys.md, "Idempotent create and rotate", says why.

/** A change remembered for its Idempotency-Key: its first answer's status and view, without the secret. */
export interface Replayed<View> {
  replayed: true;
  status: number;
  body: View;
}

// The fields that carry a secret in a change's answer: an API key's plaintext, a webhook's signing
// secret. Never kept (the table's check constraints refuse them too), whatever view is given.
const SECRET_FIELDS = ['key', 'secret'] as const;

const DEFAULT_TTL_SECONDS = 86_400;

/** The `replayed` field of a replay's answer, for the route's response schema; `secretNote`: where the resource's secret went, and what to do if it was lost. */
export const replayedFlag = (what: string, secretNote: string) =>
  z.literal(true).meta({
    description: `This answers a retry (same Idempotency-Key, same request): nothing was changed now, and this is the ${what} as the first answer showed it. ${secretNote}`,
  });

/** Answers a replay: the first answer's status and view, flagged in the body and in Idempotent-Replayed. */
export function sendReplay(res: Response, outcome: Replayed<object>): void {
  res.setHeader('Idempotent-Replayed', 'true');
  res.status(outcome.status).json({ ...outcome.body, replayed: true });
}

/** A change made without an Idempotency-Key is never a replay: for the service methods that take none. */
export function madeNow<T extends { replayed: false }>(result: T | Replayed<unknown>): T {
  if (result.replayed) throw new Error('a change without an Idempotency-Key was answered as a replay');
  return result;
}

export type IdempotentChanges = ReturnType<typeof idempotentChanges>;

/**
 * The remembered answers of one kind of resource's changes. `ttlSeconds`: IDEMPOTENCY_KEY_TTL_SECONDS
 * (24 h unless given).
 */
export function idempotentChanges(deps: { resource: IdempotentResource; ttlSeconds?: number; now: () => number }) {
  const ttlMs = (deps.ttlSeconds ?? DEFAULT_TTL_SECONDS) * 1000;
  const callerOf = (actor: { id: string } | undefined) => actor?.id ?? NO_CALLER;

  return {
    /**
     * The first answer to this Idempotency-Key if one is remembered within the window, else
     * undefined (and always without a key). The same key for another request (route, target or
     * body) is refused, 422, changing nothing. In the change's transaction, after the org's lock;
     * on the pool, it is a look before the wait, which the transaction's look confirms.
     */
    async replayFor<View>(
      db: Db,
      orgId: string,
      actor: { id: string } | undefined,
      request: IdempotentRequest | undefined,
    ): Promise<Replayed<View> | undefined> {
      if (!request) return undefined;
      const since = new Date(deps.now() - ttlMs);
      const found: RememberedOutcome | undefined = await findRememberedOutcome(db, { orgId, callerKeyId: callerOf(actor), request, since });
      if (!found) return undefined;
      if (!found.requestHash.equals(request.requestHash)) {
        throw new AppError(
          'idempotency_key_reused',
          `This Idempotency-Key was used at ${found.createdAt.toISOString()} for another request (another route, target or body); send a new key for a new request`,
        );
      }
      return { replayed: true, status: found.status, body: found.body as View };
    },

    /**
     * Remembers the answer to a change made with an Idempotency-Key (none: nothing), in the
     * change's transaction: it commits with the change or not at all. The view only, never a secret.
     */
    async remember(
      trx: Db,
      entry: { orgId: string; actor: { id: string } | undefined; request: IdempotentRequest | undefined; status: number; view: { id: string } },
    ): Promise<void> {
      if (!entry.request) return;
      const now = deps.now();
      const body: Record<string, unknown> = { ...entry.view };
      for (const field of SECRET_FIELDS) delete body[field];
      const kept = await rememberOutcome(trx, {
        orgId: entry.orgId,
        callerKeyId: callerOf(entry.actor),
        request: entry.request,
        resource: deps.resource,
        status: entry.status,
        body,
        resourceId: entry.view.id,
        now: new Date(now),
        since: new Date(now - ttlMs),
      });
      // Not reached while every change takes the org's lock first; if it were, the change rolls back.
      if (!kept) throw new AppError('conflict', 'Another request with this Idempotency-Key is in progress; retry it in a moment');
    },
  };
}
