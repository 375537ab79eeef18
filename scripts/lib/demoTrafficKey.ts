import { findOrganizationByName } from '../../api/orgs/orgs.repository';
import type { Config } from '../../shared/config';
import { cliKeysService, embeddedClusterRunning, openDatabase } from '../cli';
import { DEMO_ORG_NAME } from './firstRunDemo';

// `npm run demo-traffic` without DEMO_KEY: the key it needs, minted in the demo organization of
// the `npm start` that owns the embedded data folder, the way `npm run cli -- key create` does.
// It is never printed, and demo-traffic revokes it when the run ends. It cannot simply expire: a
// key with an expiry may only create keys that expire no later, and the demo's keys do not.

export const DEMO_TRAFFIC_ADMIN = 'demo-traffic-admin';

export type MintedKey = { plaintext: string; keyId: string; orgId: string } | { problem: string };

const MINT_SCOPES = ['keys:read', 'keys:write'] as const;

export async function mintDemoTrafficKey(config: Config, now: () => number = Date.now): Promise<MintedKey> {
  if (config.database.url) {
    return { problem: 'No key: with DATABASE_URL set there is no demo organization; set DEMO_KEY (or pass --key) to a key with keys:read and keys:write' };
  }
  if (!embeddedClusterRunning(config.database.embeddedDir)) {
    return {
      problem: `No key and no embedded PostgreSQL running in ${config.database.embeddedDir}: start the system with \`npm start\` first (or set DEMO_KEY)`,
    };
  }
  const database = openDatabase(config, () => {});
  try {
    const org = await findOrganizationByName(database.db, DEMO_ORG_NAME);
    if (!org)
      return {
        problem: `No key and no "${DEMO_ORG_NAME}" organization in ${config.database.embeddedDir}: start the system with \`npm start\` first (or set DEMO_KEY)`,
      };
    const keys = cliKeysService({ db: database.db, pepper: config.api.keyPepper, now });
    const created = await keys.create(org.id, { name: DEMO_TRAFFIC_ADMIN, scopes: [...MINT_SCOPES], expiresAt: null });
    return { plaintext: created.plaintext, keyId: created.key.id, orgId: org.id };
  } finally {
    await database.close();
  }
}
