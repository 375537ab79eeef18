import { rawRows, referenceRowNow, type Db } from '../../shared/db';
import { dormantKeySql } from '../../shared/dormancy';
import type { Scope } from './scopes';
import { TABLE } from '../../shared/tables';
import { countUpTo } from '../countUpTo';

export interface ApiKeyRecord {
  id: string;
  orgId: string;
  name: string;
  /** Who answers for the key (free text); null: nobody named (migrations/20261208000290). */
  owner: string | null;
  displayPrefix: string;
  secretHash: Buffer;
  /** pepperId() of the pepper that made secretHash; null for hashes made before it was recorded. */
  secretPepperId: string | null;
  previousSecretHash: Buffer | null;
  previousSecretPepperId: string | null;
  previousSecretExpiresAt: Date | null;
  scopes: Scope[];
  createdAt: Date;
  expiresAt: Date | null;
  revokedAt: Date | null;
  /** While revoked: until when it can be restored (null: revoked for good, or not revoked). */
  restorableUntil: Date | null;
  /** When it was last restored; its idle time starts again then (shared/dormancy.ts). */
  restoredAt: Date | null;
  rotatedAt: Date | null;
  /** CIDRs the key is expected to be used from; null: anywhere. */
  expectedNetworks: string[] | null;
  /** The key that created it; null: the CLI or the first run did, or not known (migrations/20261207000240). */
  createdByKeyId: string | null;
}

interface ApiKeyRow {
  id: string;
  org_id: string;
  name: string;
  owner: string | null;
  display_prefix: string;
  secret_hash: Buffer;
  secret_pepper_id: string | null;
  previous_secret_hash: Buffer | null;
  previous_secret_pepper_id: string | null;
  previous_secret_expires_at: Date | null;
  scopes: Scope[];
  created_at: Date;
  expires_at: Date | null;
  revoked_at: Date | null;
  restorable_until: Date | null;
  restored_at: Date | null;
  rotated_at: Date | null;
  expected_networks: string[] | null;
  created_by_key_id: string | null;
}

const toRecord = (row: ApiKeyRow): ApiKeyRecord => ({
  id: row.id,
  orgId: row.org_id,
  name: row.name,
  owner: row.owner,
  displayPrefix: row.display_prefix,
  secretHash: row.secret_hash,
  secretPepperId: row.secret_pepper_id,
  previousSecretHash: row.previous_secret_hash,
  previousSecretPepperId: row.previous_secret_pepper_id,
  previousSecretExpiresAt: row.previous_secret_expires_at,
  scopes: row.scopes,
  createdAt: row.created_at,
  expiresAt: row.expires_at,
  revokedAt: row.revoked_at,
  restorableUntil: row.restorable_until,
  restoredAt: row.restored_at,
  rotatedAt: row.rotated_at,
  expectedNetworks: row.expected_networks,
  createdByKeyId: row.created_by_key_id,
});

// PostgreSQL normalises each CIDR to its network (10.1.2.3/8 becomes 10.0.0.0/8).
const networksValue = (db: Db, networks: readonly string[] | null) =>
  networks === null ? null : (db.raw('cast(array(select network(n) from unnest(cast(? as inet[])) as n) as cidr[])', [[...networks]]) as unknown as string[]);

export interface NewApiKey {
  id: string;
  orgId: string;
  name: string;
  owner?: string | null;
  displayPrefix: string;
  secretHash: Buffer;
  secretPepperId: string;
  scopes: Scope[];
  expiresAt: Date | null;
  expectedNetworks?: string[] | null;
  /** The acting key; none from the CLI. */
  createdByKeyId?: string | null;
}

/** Call it inside a transaction when the key has expected networks (two statements). */
export async function insertApiKey(db: Db, key: NewApiKey): Promise<ApiKeyRecord> {
  const [row] = await db<ApiKeyRow>(TABLE.apiKeys)
    .insert({
      id: key.id,
      org_id: key.orgId,
      name: key.name,
      owner: key.owner ?? null,
      display_prefix: key.displayPrefix,
      secret_hash: key.secretHash,
      secret_pepper_id: key.secretPepperId,
      scopes: key.scopes,
      expires_at: key.expiresAt,
      created_by_key_id: key.createdByKeyId ?? null,
      created_at: referenceRowNow(db),
    })
    .returning('*');
  // Citus refuses a subquery in an INSERT (networksValue's), and a key created with networks
  // answered 500 there: they are written by an UPDATE, as a PATCH writes them.
  if (key.expectedNetworks == null) return toRecord(row);
  return updateApiKey(db, key, { expectedNetworks: key.expectedNetworks });
}

/** The org's keys, revoked ones included, counted up to `upTo` (the caller's cap): no more rows are read. */
export async function countKeysInOrg(db: Db, orgId: string, upTo: number): Promise<number> {
  return countUpTo(db, db(TABLE.apiKeys).where({ org_id: orgId }), upTo);
}

export async function findApiKeyById(db: Db, id: string): Promise<ApiKeyRecord | undefined> {
  const row = await db<ApiKeyRow>(TABLE.apiKeys).where({ id }).first();
  return row && toRecord(row);
}

export async function findApiKeyInOrg(db: Db, orgId: string, id: string): Promise<ApiKeyRecord | undefined> {
  const row = await db<ApiKeyRow>(TABLE.apiKeys).where({ id, org_id: orgId }).first();
  return row && toRecord(row);
}

export async function listApiKeysInOrg(
  db: Db,
  orgId: string,
  page: { limit: number; offset: number; createdByKeyId?: string },
): Promise<{ keys: ApiKeyRecord[]; total: number }> {
  // The org's keys, or those one key created (a leaked key's clean-up).
  const matching = { org_id: orgId, ...(page.createdByKeyId === undefined ? {} : { created_by_key_id: page.createdByKeyId }) };
  const [rows, [{ count }]] = await Promise.all([
    db<ApiKeyRow>(TABLE.apiKeys)
      .where(matching)
      .orderBy([{ column: 'created_at' }, { column: 'id' }])
      .limit(page.limit)
      .offset(page.offset),
    db(TABLE.apiKeys).where(matching).count<{ count: number }[]>({ count: '*' }),
  ]);
  return { keys: rows.map(toRecord), total: Number(count) };
}

/** A rotation's write (replaceSecret). */
export interface SecretReplacement {
  /**
   * The key's rotation time as read (null: never rotated): the write applies only while it is
   * unchanged. Not the hash: a pepper upgrade rehashes the same secret (api/auth/pepperUpgrade.ts),
   * and a rotation that read the hash before it answered a false "rotated by another request".
   */
  replacedRotationAt: Date | null;
  secretHash: Buffer;
  secretPepperId: string;
  /** Null when no grace period keeps the old secret. */
  previousSecretHash: Buffer | null;
  previousSecretPepperId: string | null;
  previousSecretExpiresAt: Date;
  rotatedAt: Date;
  /** A new expiry given with the rotation (null: never); undefined: the key keeps its own. */
  expiresAt?: Date | null;
}

/** The newest use of a key's previous secret the collector wrote, and its address (null once erased). */
export interface PreviousSecretUse {
  at: Date;
  ip: string | null;
}

/**
 * The newest previous-secret use of each of `keyIds` (of `orgId`) that has one, by key id. Which
 * previous secret it proved is not stored: the caller keeps it only if it is not older than the
 * key's last rotation (toApiKeyView).
 */
export async function previousSecretUses(db: Db, orgId: string, keyIds: readonly string[]): Promise<Map<string, PreviousSecretUse>> {
  if (keyIds.length === 0) return new Map();
  const rows: Array<{ key_id: string; previous_secret_last_used_at: Date; previous_secret_last_used_ip: string | null }> = await db(TABLE.usage)
    .where({ org_id: orgId })
    .whereIn('key_id', [...keyIds])
    .whereNotNull('previous_secret_last_used_at')
    .select('key_id', 'previous_secret_last_used_at', 'previous_secret_last_used_ip');
  return new Map(rows.map((row) => [row.key_id, { at: row.previous_secret_last_used_at, ip: row.previous_secret_last_used_ip }]));
}

// Compare-and-set on the secret the rotation read: of two concurrent rotations only the first
// finds its hash still current; the other gets undefined, not a plaintext that was never stored.
export async function replaceSecret(db: Db, id: string, change: SecretReplacement): Promise<ApiKeyRecord | undefined> {
  // Still active when written: a revocation that committed after the caller read the key left its
  // hash alone, and the rotation answered 200 with a new secret for a revoked key.
  const [row] = await db<ApiKeyRow>(TABLE.apiKeys)
    .where({ id })
    .where((query) => {
      // The millisecond read (a Date holds no more): a rotated_at written with microseconds, by
      // hand, still matches the value read from it.
      const read = change.replacedRotationAt;
      if (read === null) query.whereNull('rotated_at');
      else query.where('rotated_at', '>=', read).where('rotated_at', '<', new Date(read.getTime() + 1));
    })
    .whereRaw('revoked_at is null and (expires_at is null or expires_at > ?)', [change.rotatedAt])
    .update({
      secret_hash: change.secretHash,
      secret_pepper_id: change.secretPepperId,
      previous_secret_hash: change.previousSecretHash,
      previous_secret_pepper_id: change.previousSecretPepperId,
      previous_secret_expires_at: change.previousSecretExpiresAt,
      rotated_at: change.rotatedAt,
      ...(change.expiresAt === undefined ? {} : { expires_at: change.expiresAt }),
    })
    .returning('*');
  return row && toRecord(row);
}

/**
 * The key revoked for good at `revokedAt`; one the dormant clean-up revoked, still restorable then,
 * keeps its revocation time and can no longer be restored. Undefined, and nothing written, when it
 * already was revoked for good, or its time to be restored is past (a revoke then changes nothing).
 */
export async function markRevoked(db: Db, id: string, revokedAt: Date): Promise<ApiKeyRecord | undefined> {
  const [row] = await db<ApiKeyRow>(TABLE.apiKeys)
    .where({ id })
    .whereRaw('(revoked_at is null or restorable_until > ?)', [revokedAt])
    .update({ revoked_at: db.raw('coalesce(revoked_at, ?)', [revokedAt]), restorable_until: null })
    .returning('*');
  return row && toRecord(row);
}

/**
 * The key restored at `at` if it is revoked and restorable past `at`; undefined, and nothing
 * written, otherwise. Call it on a key locked by lockApiKey, which tells why not.
 */
export async function markRestored(db: Db, key: { orgId: string; id: string }, at: Date): Promise<ApiKeyRecord | undefined> {
  const [row] = await db<ApiKeyRow>(TABLE.apiKeys)
    .where({ org_id: key.orgId, id: key.id })
    .whereNotNull('revoked_at')
    .where('restorable_until', '>', at)
    .update({ revoked_at: null, restorable_until: null, restored_at: at })
    .returning('*');
  return row && toRecord(row);
}

/** A PATCH's write: each field given is set, one left out kept. */
export interface KeyUpdate {
  name?: string;
  owner?: string | null;
  expectedNetworks?: string[] | null;
  expiresAt?: Date | null;
}

/**
 * The key as it is, read under its row's lock (undefined: deleted): a change judged on it, and the
 * audit entry of what it replaced, hold against a concurrent change, rotation or revocation. Call
 * it inside a transaction.
 */
export async function lockApiKey(db: Db, key: { orgId: string; id: string }): Promise<ApiKeyRecord | undefined> {
  const [row] = await db<ApiKeyRow>(TABLE.apiKeys).where({ org_id: key.orgId, id: key.id }).forUpdate().select('*');
  return row && toRecord(row);
}

/** Writes `change` to a key locked by lockApiKey; the key as changed. */
export async function updateApiKey(db: Db, key: { orgId: string; id: string }, change: KeyUpdate): Promise<ApiKeyRecord> {
  const [row] = await db<ApiKeyRow>(TABLE.apiKeys)
    .where({ org_id: key.orgId, id: key.id })
    .update({
      ...(change.name === undefined ? {} : { name: change.name }),
      ...(change.owner === undefined ? {} : { owner: change.owner }),
      ...(change.expectedNetworks === undefined ? {} : { expected_networks: networksValue(db, change.expectedNetworks) }),
      ...(change.expiresAt === undefined ? {} : { expires_at: change.expiresAt }),
    })
    .returning('*');
  return toRecord(row);
}

export interface DormantQuery {
  orgId: string;
  /** Dormant (shared/dormancy.ts): last proven use, or creation if never used, before this instant. */
  idleSince: Date;
  now: Date;
  /** Never selected: the key making the request. */
  exceptKeyId: string | null;
  /** When given, only these keys are selected (those of them still dormant): the set a dry run showed. */
  onlyKeyIds: string[] | null;
  /** When given (the caller's key expires), only keys that expire no later: none it outlives is revoked. */
  expiringBy: Date | null;
}

export type DormantKey = ApiKeyRecord & { lastUsedAt: Date | null };

// A key with uses appended to the usage log and not yet folded into its totals is spared: its
// last use may be seconds old (the next run sees it folded). So is a key with uses set aside
// (a collector could not apply them): they count once an operator requeues them.
const dormantKeys = (query: DormantQuery) => `
select k.*, u.last_used_at
  from ${TABLE.apiKeys} k
  left join ${TABLE.usage} u on u.org_id = k.org_id and u.key_id = k.id
 where k.org_id = :orgId and k.id is distinct from :exceptKeyId
   and ${dormantKeySql('cast(:now as timestamptz)', 'cast(:idleSince as timestamptz)')}
   and not exists (select 1 from ${TABLE.usageLog} l where l.org_id = :orgId and l.key_id = k.id)
   and not exists (select 1 from ${TABLE.usageSetAside} s where s.org_id = :orgId and s.key_id = k.id)
   ${query.onlyKeyIds === null ? '' : 'and k.id = any(cast(:onlyKeyIds as uuid[]))'}
   ${query.expiringBy === null ? '' : 'and k.expires_at <= cast(:expiringBy as timestamptz)'}`;

type DormantRow = ApiKeyRow & { last_used_at: Date | null };

const toDormant = (row: DormantRow): DormantKey => ({ ...toRecord(row), lastUsedAt: row.last_used_at });

/** Oldest first; at most `limit` when given. */
export async function findDormantKeys(db: Db, query: DormantQuery, limit?: number): Promise<DormantKey[]> {
  const order = `${dormantKeys(query)} order by k.created_at, k.id`;
  const rows =
    limit === undefined ? await rawRows<DormantRow>(db, order, { ...query }) : await rawRows<DormantRow>(db, `${order} limit :limit`, { ...query, limit });
  return rows.map(toDormant);
}

/**
 * Revokes the keys findDormantKeys would list with `limit` that are still dormant once locked;
 * returns them. Locked in id order, the order a flush's inserts lock keys (their foreign-key
 * checks): locked oldest first in one statement, an apply and a flush writing two keys' first uses
 * each held a key the other waited for (deadlock, a 500), and a key whose first use committed
 * while the apply waited for it was revoked by the apply's older snapshot (found by a review).
 * Checked again after the locks, in a statement of its own (a new snapshot), such a key is spared.
 */
export async function revokeDormantKeys(db: Db, query: DormantQuery, limit: number, restorableUntil: Date | null): Promise<DormantKey[]> {
  const selected = await rawRows<{ id: string }>(db, `select id from (${dormantKeys(query)} order by k.created_at, k.id limit :limit) d`, { ...query, limit });
  if (selected.length === 0) return [];
  const ids = selected.map((row) => row.id);
  await db.raw(`select id from ${TABLE.apiKeys} where org_id = ? and id = any(cast(? as uuid[])) order by id for update`, [query.orgId, ids]);
  const stillDormant = await rawRows<DormantRow>(db, dormantKeys({ ...query, onlyKeyIds: ids }), { ...query, onlyKeyIds: ids });
  if (stillDormant.length === 0) return [];
  // Apart from the select: on Citus api_keys is a reference table, and one statement may not read
  // the distributed usage tables and change it. The rows are locked: what was read stands.
  await db.raw(`update ${TABLE.apiKeys} set revoked_at = ?, restorable_until = ? where org_id = ? and id = any(cast(? as uuid[]))`, [
    query.now,
    restorableUntil,
    query.orgId,
    stillDormant.map((row) => row.id),
  ]);
  return stillDormant
    .map((row) => toDormant({ ...row, revoked_at: query.now, restorable_until: restorableUntil }))
    .sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime() || (a.id < b.id ? -1 : 1));
}

// A hash made with an older pepper, remade with the current one. Compare-and-set on the old hash:
// a rotation (or another instance's rehash) that got there first wins, and this changes nothing.
export async function rehashSecret(
  db: Db,
  id: string,
  which: 'current' | 'previous',
  change: { from: Buffer; to: Buffer; pepperId: string },
): Promise<boolean> {
  const [hash, pepper] = which === 'current' ? ['secret_hash', 'secret_pepper_id'] : ['previous_secret_hash', 'previous_secret_pepper_id'];
  const updated = await db(TABLE.apiKeys)
    .where({ id, [hash]: change.from })
    .update({ [hash]: change.to, [pepper]: change.pepperId });
  return updated > 0;
}

/** The latest proven use of any key of the org that the usage tables hold; null when none. */
export async function latestUseInOrg(db: Db, orgId: string): Promise<Date | null> {
  const [row] = await db(TABLE.usage).where({ org_id: orgId }).max<{ latest: Date | null }[]>({ latest: 'last_used_at' });
  return row.latest;
}

/** Usable keys (neither revoked nor expired) per pepper id of their current secret, and of their previous secret still in grace. */
export async function countKeysByPepper(db: Db, now: Date): Promise<Array<{ pepperId: string | null; secrets: number; previousSecrets: number }>> {
  const rows = await rawRows<{ pepper_id: string | null; secrets: string; previous_secrets: string }>(
    db,
    `with usable as (
       select * from ${TABLE.apiKeys} where revoked_at is null and (expires_at is null or expires_at > :now)
     ), ids as (
       select secret_pepper_id as pepper_id, 1 as secret, 0 as previous from usable
       union all
       select previous_secret_pepper_id, 0, 1 from usable where previous_secret_hash is not null and previous_secret_expires_at > :now
     )
     select pepper_id, sum(secret) as secrets, sum(previous) as previous_secrets from ids group by pepper_id order by pepper_id nulls last`,
    { now },
  );
  return rows.map((row) => ({
    pepperId: row.pepper_id,
    secrets: Number(row.secrets),
    previousSecrets: Number(row.previous_secrets),
  }));
}
