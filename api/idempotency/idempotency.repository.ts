import type { Db } from '../../shared/db';
import { TABLE } from '../../shared/tables';
import type { IdempotentRequest } from './idempotency';

// The remembered outcomes of requests sent with an Idempotency-Key (migrations
// 20261207000220_idempotency_keys, 20261207000230_idempotency_resource). Every function runs in the change's own transaction, after
// beginAuditedChange took the org's lock: an org's changes are made one at a time, so a retry sent
// while the first request still runs waits for it and then finds its row.

/** Who sent it: the acting key, or none (the nil UUID). */
export const NO_CALLER = '00000000-0000-0000-0000-000000000000';

/** What a remembered change made or changed: an API key (create, rotate) or a webhook (create, secret rotation). */
export const IDEMPOTENT_RESOURCES = ['api_key', 'webhook'] as const;
export type IdempotentResource = (typeof IDEMPOTENT_RESOURCES)[number];

export interface RememberedOutcome {
  requestHash: Buffer;
  resource: IdempotentResource;
  status: number;
  /** The answer as first given, without the secret (the plaintext key, the signing secret: never kept). */
  body: Record<string, unknown>;
  /** The id of the key or webhook it made or changed (the column is key_id, named before webhooks were). */
  resourceId: string;
  createdAt: Date;
}

interface Row {
  request_hash: Buffer;
  resource: IdempotentResource;
  response_status: number;
  response_body: Record<string, unknown>;
  key_id: string;
  created_at: Date;
}

/** The outcome remembered for this org, caller and key, if it was made after `since`. */
export async function findRememberedOutcome(
  trx: Db,
  where: { orgId: string; callerKeyId: string; request: IdempotentRequest; since: Date },
): Promise<RememberedOutcome | undefined> {
  const row: Row | undefined = await trx(TABLE.idempotencyKeys)
    .where('org_id', where.orgId)
    .andWhere('caller_key_id', where.callerKeyId)
    .andWhere('key_hash', where.request.keyHash)
    .andWhere('created_at', '>', where.since)
    .first('request_hash', 'resource', 'response_status', 'response_body', 'key_id', 'created_at');
  return (
    row && {
      requestHash: row.request_hash,
      resource: row.resource,
      status: row.response_status,
      body: row.response_body,
      resourceId: row.key_id,
      createdAt: row.created_at,
    }
  );
}

/** Old rows of the org deleted at each remembered change: more than it adds, so they never pile up. */
const EXPIRED_PER_WRITE = 100;

/**
 * Remembers an outcome, in the transaction of the change it answers. A row of the same key made
 * before `since` (expired, not deleted yet) is replaced; a live one is not, and false is answered
 * (the caller then rolls back: no second key or webhook is made, whatever led there). Up to
 * EXPIRED_PER_WRITE of the org's expired rows are deleted on the way.
 */
export async function rememberOutcome(
  trx: Db,
  entry: {
    orgId: string;
    callerKeyId: string;
    request: IdempotentRequest;
    resource: IdempotentResource;
    status: number;
    body: Record<string, unknown>;
    resourceId: string;
    now: Date;
    since: Date;
  },
): Promise<boolean> {
  await trx.raw(
    `delete from ${TABLE.idempotencyKeys} d
      using (select caller_key_id, key_hash from ${TABLE.idempotencyKeys}
              where org_id = ? and created_at <= ? limit ?) old
      where d.org_id = ? and d.caller_key_id = old.caller_key_id and d.key_hash = old.key_hash`,
    [entry.orgId, entry.since, EXPIRED_PER_WRITE, entry.orgId],
  );
  const { rows } = await trx.raw(
    `insert into ${TABLE.idempotencyKeys} (org_id, caller_key_id, key_hash, request_hash, resource, response_status, response_body, key_id, created_at)
     values (?, ?, ?, ?, ?, ?, ?::jsonb, ?, ?)
     on conflict (org_id, caller_key_id, key_hash) do update
        set request_hash = excluded.request_hash, resource = excluded.resource, response_status = excluded.response_status,
            response_body = excluded.response_body, key_id = excluded.key_id, created_at = excluded.created_at
      where ${TABLE.idempotencyKeys}.created_at <= ?
     returning key_id`,
    [
      entry.orgId,
      entry.callerKeyId,
      entry.request.keyHash,
      entry.request.requestHash,
      entry.resource,
      entry.status,
      JSON.stringify(entry.body),
      entry.resourceId,
      entry.now,
      entry.since,
    ],
  );
  return rows.length === 1;
}
