import type { Db } from '../../shared/db';
import { notFound } from '../errors';
import { findApiKeyInOrg, type ApiKeyRecord } from './apiKeys.repository';

/** The org's key, or not_found: another org's key answers exactly as a key that does not exist. */
export async function requireKeyInOrg(db: Db, orgId: string, keyId: string): Promise<ApiKeyRecord> {
  const key = await findApiKeyInOrg(db, orgId, keyId);
  if (!key) throw notFound('API key');
  return key;
}
