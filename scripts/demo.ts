import { createApiKeysService } from '../api/keys/apiKeys.service';
import { SCOPES } from '../api/keys/scopes';
import { findOrganizationByName, insertOrganization, type Organization } from '../api/orgs/orgs.repository';
import type { Db } from '../shared/db';

// The first-run demo of `npm start`: one organization named "demo" and one key with every scope.
// Nothing about it is stored outside the database: a later run finds the org by name, and the
// plaintext key exists only in the return value of the run that created it.

export const DEMO_ORG_NAME = 'demo';
export const DEMO_KEY_NAME = 'demo';

// Serialises concurrent launchers on one database, so two first runs cannot make two demo orgs.
const DEMO_LOCK_ID = 0x6b75_646d; // "kudm"

export type DemoOrg =
  | { created: true; org: Organization; key: { id: string; plaintext: string } }
  | { created: false; org: Organization };

export async function ensureDemoOrg(db: Db, options: { pepper: string; now?: () => number }): Promise<DemoOrg> {
  return db.transaction(async (trx) => {
    await trx.raw('select pg_advisory_xact_lock(?)', [DEMO_LOCK_ID]);
    const existing = await findOrganizationByName(trx, DEMO_ORG_NAME);
    if (existing) return { created: false, org: existing };

    const org = await insertOrganization(trx, DEMO_ORG_NAME);
    const keys = createApiKeysService({
      db: trx,
      pepper: options.pepper,
      defaultGraceSeconds: 0,
      verifier: { invalidate: () => {} },
      now: options.now ?? Date.now,
    });
    const created = await keys.create(org.id, { name: DEMO_KEY_NAME, scopes: [...SCOPES], expiresAt: null });
    return { created: true, org, key: { id: created.key.id, plaintext: created.plaintext } };
  });
}

export interface BannerContext {
  baseUrl: string;
  /** Where the data lives, for people: a folder for the embedded database, else host:port/db. */
  dataLocation: string;
  /** How to start from scratch, when the launcher owns the data; undefined for an external database. */
  resetHint?: string;
}

// What `npm start` prints once the API answers. The only place a plaintext key is ever printed
// by the launcher; it goes to stdout and nowhere else.
// With DATABASE_URL the launcher makes nothing in the database but the schema: it may be a real one.
export function externalDatabaseBanner(context: BannerContext): string {
  return [
    '',
    `Data lives in ${context.dataLocation}. No demo organization is made there; create one with:`,
    '',
    '    npm run cli -- org create <name>',
    '',
    `The API answers on ${context.baseUrl}.`,
    'Stop with Ctrl-C (the API stops first, then the collector flushes).',
    '',
  ].join('\n');
}

export function demoBanner(demo: DemoOrg, context: BannerContext): string {
  const { baseUrl } = context;
  const orgId = demo.org.id;
  const key = demo.created ? demo.key.plaintext : '<your-key>';
  const lines = [''];
  if (demo.created) {
    lines.push(
      `Demo organization "${demo.org.name}" created: ${orgId}`,
      '',
      'Demo API key (every scope). It is shown this once and stored nowhere; copy it now:',
      '',
      `    ${demo.key.plaintext}`,
      '',
    );
  } else {
    lines.push(
      `Demo organization "${demo.org.name}": ${orgId}`,
      '',
      'Its key was printed on the first run only. To mint a fresh demo key:',
      '',
      `    npm run cli -- key create ${orgId} --name demo --scopes keys:read,keys:write`,
      '',
    );
  }
  lines.push(
    `Dashboard: open ${baseUrl}/ in a browser and paste the key (it stays in that tab).`,
    '',
    'Try it:',
    '',
    `    curl -H "Authorization: Bearer ${key}" ${baseUrl}/api/whoami`,
    `    curl -H "Authorization: Bearer ${key}" ${baseUrl}/api/orgs/${orgId}/api-keys/usage`,
    '',
    'Generate traffic from several keys (allowed, forbidden, revoked, never used), then read the usage:',
    '',
    `    DEMO_KEY=${key} npm run demo-traffic`,
    '',
    `Data lives in ${context.dataLocation}.`,
  );
  if (context.resetHint) lines.push(context.resetHint);
  lines.push('Stop with Ctrl-C (the API stops first, then the collector flushes, then the database).', '');
  return lines.join('\n');
}
