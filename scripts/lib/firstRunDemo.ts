import { createApiKeysService } from '../../api/keys/apiKeys.service';
import { SCOPES } from '../../api/keys/scopes';
import { findOrganizationByName, insertOrganization, type Organization } from '../../api/orgs/orgs.repository';
import { loadConfig, type Config } from '../../shared/config';
import type { Db } from '../../shared/db';
import type { DatabaseTarget } from './embeddedDatabase';
import { urlHost } from './ports';

// The first-run demo of `npm start`: one organization named "demo" and one key with every scope.
// Nothing about it is stored outside the database: a later run finds the org by name, and the
// plaintext key exists only in the return value of the run that created it.

export const DEMO_ORG_NAME = 'demo';
export const DEMO_KEY_NAME = 'demo';

// Serialises concurrent launchers on one database, so two first runs cannot make two demo orgs.
const DEMO_LOCK_ID = 0x6b75_646d; // "kudm"

export type DemoOrg = { created: true; org: Organization; key: { id: string; plaintext: string } } | { created: false; org: Organization };

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
      now: options.now ?? Date.now,
    });
    const created = await keys.create(org.id, { name: DEMO_KEY_NAME, scopes: [...SCOPES], expiresAt: null });
    return { created: true, org, key: { id: created.key.id, plaintext: created.plaintext } };
  });
}

const shellWord = (value: string) => (/^[A-Za-z0-9_/.:,@%+=-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`);

/**
 * What a second terminal needs to reach this system with `npm run cli` and `npm run demo-traffic`:
 * every setting that differs from its default, as `NAME=value ` words to paste before the command,
 * and the names of the secret ones that must be exported there too (never printed).
 */
export function commandSettings(config: Config, env: NodeJS.ProcessEnv = process.env): { prefix: string; secrets: string[] } {
  const defaults = loadConfig({ NODE_ENV: 'development' });
  const settings: Array<[string, string | number | undefined, string | number | undefined]> = [
    ['NODE_ENV', config.env, defaults.env],
    ['PORT', config.api.port, defaults.api.port],
    ['EMBEDDED_PG_DIR', config.database.embeddedDir, defaults.database.embeddedDir],
    ['EMBEDDED_PG_PORT', config.database.embeddedPort, defaults.database.embeddedPort],
  ];
  const prefix = settings
    .filter(([, value, fallback]) => value !== undefined && value !== fallback)
    .map(([name, value]) => `${name}=${shellWord(String(value))} `)
    .join('');
  return { prefix, secrets: ['DATABASE_URL', 'KEY_PEPPER', 'KEY_PEPPER_PREVIOUS', 'KEY_PEPPER_NEXT'].filter((name) => env[name]) };
}

export interface BannerContext {
  baseUrl: string;
  /** commandSettings(): pasted before every npm command the banner prints. */
  settings: { prefix: string; secrets: string[] };
  /** Where the data lives, for people: a folder for the embedded database, else host:port/db. */
  dataLocation: string;
  /** How to start from scratch, when the launcher owns the data; undefined for an external database. */
  resetHint?: string;
}

// What `npm start` prints once the API answers. The only place a plaintext key is ever printed
// by the launcher; it goes to stdout and nowhere else.
// With DATABASE_URL the launcher makes nothing in the database but the schema: it may be a real one.
function secretsNote(context: BannerContext): string[] {
  const { secrets } = context.settings;
  if (secrets.length === 0) return [];
  return [`In another terminal, export the same ${secrets.join(', ')} as this one first (not printed here).`, ''];
}

export function externalDatabaseBanner(context: BannerContext): string {
  return [
    '',
    `Data lives in ${context.dataLocation}. No demo organization is made there; create one with:`,
    '',
    `    ${context.settings.prefix}npm run cli -- org create <name>`,
    '',
    ...secretsNote(context),
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
      `    ${context.settings.prefix}npm run cli -- key create ${orgId} --name demo --scopes keys:read,keys:write`,
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
    'Generate traffic from several keys (allowed, forbidden, revoked, never used), then read the usage',
    '(it mints its own short-lived key in this organization):',
    '',
    `    ${context.settings.prefix}npm run demo-traffic`,
    '',
    ...secretsNote(context),
    `Data lives in ${context.dataLocation}.`,
  );
  if (context.resetHint) lines.push(context.resetHint);
  lines.push('Stop with Ctrl-C (the API stops first, then the collector flushes, then the database).', '');
  return lines.join('\n');
}

/**
 * The banner `npm start` prints once everything answers (so that a first-run key is never made
 * and then not shown): on the embedded database the demo organization, made on the first run;
 * an external database may be a real one, so nothing is made there. Undefined when a stop was
 * asked for meanwhile, unless this call made the demo key: its banner holds the key's only copy.
 */
export async function firstRunBanner(
  db: Db,
  config: Config,
  target: DatabaseTarget & { embedded: boolean },
  stopRequested: () => boolean,
): Promise<string | undefined> {
  const context: BannerContext = {
    baseUrl: `http://${urlHost(config.api.host)}:${config.api.port}`,
    settings: commandSettings(config),
    dataLocation: target.dataLocation,
    resetHint: target.resetHint,
  };
  if (!target.embedded) return externalDatabaseBanner(context);
  if (stopRequested()) return undefined;
  const demo = await ensureDemoOrg(db, { pepper: config.api.keyPepper });
  return demo.created || !stopRequested() ? demoBanner(demo, context) : undefined;
}
