import type { Db } from '../../shared/db';
import type { Scope } from './scopes';

export interface ApiKeyRecord {
  id: string;
  orgId: string;
  name: string;
  displayPrefix: string;
  secretHash: Buffer;
  previousSecretHash: Buffer | null;
  previousSecretExpiresAt: Date | null;
  scopes: Scope[];
  createdAt: Date;
  expiresAt: Date | null;
  revokedAt: Date | null;
  rotatedAt: Date | null;
}

interface ApiKeyRow {
  id: string;
  org_id: string;
  name: string;
  display_prefix: string;
  secret_hash: Buffer;
  previous_secret_hash: Buffer | null;
  previous_secret_expires_at: Date | null;
  scopes: Scope[];
  created_at: Date;
  expires_at: Date | null;
  revoked_at: Date | null;
  rotated_at: Date | null;
}

const toRecord = (row: ApiKeyRow): ApiKeyRecord => ({
  id: row.id,
  orgId: row.org_id,
  name: row.name,
  displayPrefix: row.display_prefix,
  secretHash: row.secret_hash,
  previousSecretHash: row.previous_secret_hash,
  previousSecretExpiresAt: row.previous_secret_expires_at,
  scopes: row.scopes,
  createdAt: row.created_at,
  expiresAt: row.expires_at,
  revokedAt: row.revoked_at,
  rotatedAt: row.rotated_at,
});

export interface NewApiKey {
  id: string;
  orgId: string;
  name: string;
  displayPrefix: string;
  secretHash: Buffer;
  scopes: Scope[];
  expiresAt: Date | null;
}

export async function insertApiKey(db: Db, key: NewApiKey): Promise<ApiKeyRecord> {
  const [row] = await db<ApiKeyRow>('api_keys')
    .insert({
      id: key.id,
      org_id: key.orgId,
      name: key.name,
      display_prefix: key.displayPrefix,
      secret_hash: key.secretHash,
      scopes: key.scopes,
      expires_at: key.expiresAt,
    })
    .returning('*');
  return toRecord(row);
}

export async function findApiKeyById(db: Db, id: string): Promise<ApiKeyRecord | undefined> {
  const row = await db<ApiKeyRow>('api_keys').where({ id }).first();
  return row && toRecord(row);
}

export async function findApiKeyInOrg(db: Db, orgId: string, id: string): Promise<ApiKeyRecord | undefined> {
  const row = await db<ApiKeyRow>('api_keys').where({ id, org_id: orgId }).first();
  return row && toRecord(row);
}

export async function listApiKeysInOrg(
  db: Db,
  orgId: string,
  page: { limit: number; offset: number },
): Promise<{ keys: ApiKeyRecord[]; total: number }> {
  const [rows, [{ count }]] = await Promise.all([
    db<ApiKeyRow>('api_keys').where({ org_id: orgId }).orderBy([{ column: 'created_at' }, { column: 'id' }]).limit(page.limit).offset(page.offset),
    db('api_keys').where({ org_id: orgId }).count<{ count: number }[]>({ count: '*' }),
  ]);
  return { keys: rows.map(toRecord), total: Number(count) };
}

// Compare-and-set on the secret the rotation read: of two concurrent rotations only the first
// finds its hash still current; the other gets undefined, not a plaintext that was never stored.
export async function replaceSecret(
  db: Db,
  id: string,
  change: { secretHash: Buffer; previousSecretHash: Buffer; previousSecretExpiresAt: Date; rotatedAt: Date },
): Promise<ApiKeyRecord | undefined> {
  const [row] = await db<ApiKeyRow>('api_keys')
    .where({ id, secret_hash: change.previousSecretHash })
    .update({
      secret_hash: change.secretHash,
      previous_secret_hash: change.previousSecretHash,
      previous_secret_expires_at: change.previousSecretExpiresAt,
      rotated_at: change.rotatedAt,
    })
    .returning('*');
  return row && toRecord(row);
}

export async function markRevoked(db: Db, id: string, revokedAt: Date): Promise<ApiKeyRecord> {
  const [row] = await db<ApiKeyRow>('api_keys')
    .where({ id })
    .update({ revoked_at: db.raw('coalesce(revoked_at, ?)', [revokedAt]) as unknown as Date })
    .returning('*');
  return toRecord(row);
}
