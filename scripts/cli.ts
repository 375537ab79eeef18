import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { DAY_MS, HOUR_MS } from '../shared/timeUnits';
import { OUTCOMES } from '../shared/usageWire';
import { AppError } from '../api/errors';
import { beginAuditedChange, recordAudit } from '../api/audit/audit.repository';
import { countKeysByPepper, findApiKeyInOrg } from '../api/keys/apiKeys.repository';
import {
  COLLECTOR_GAPS_SHOWN,
  MAX_REVOKE_KEY_IDS,
  KEY_STATUSES,
  RESTORABLE_DAYS_DEFAULT,
  createApiKeysService,
  type ApiKeyView,
  type revokeDormantResult,
} from '../api/keys/apiKeys.service';
import { collectorUptimeSince, spansHeardSince, type ListeningSpan } from '../shared/collectorUptime';
import { pepperId } from '../api/keys/keyMaterial';
import { SCOPES, type Scope } from '../api/keys/scopes';
import { findOrganizationById, insertOrganization, listOrganizations, type Organization } from '../api/orgs/orgs.repository';
import { displayName, uuid, withinSupportedTimes } from '../api/validation';
import { loadConfig, withDevelopmentDefault, type Config } from '../shared/config';
import { createDb, describeDatabaseError, migrateLatest, type Db } from '../shared/db';
import { eraseKeyIps } from '../shared/ipRetention';
import { createUsageService, MAX_SERIES_POINTS, ReportCutShortError, type ReportQuery } from '../api/usage/usage.service';
import { CSV_HEADER, csvRows } from '../api/usage/usageCsv';
import { requeueUnreadable } from '../shared/usageLogDelta';
import { redactKeyMaterial } from '../shared/logger';
import { exitWhenDone } from './lib/commandExit';
import { postmasterPid, startLocalPostgres } from './lib/localPostgres';

// `npm run cli -- <command>`: the operator's bootstrap tool. runCli() holds the command logic and
// takes its database, output streams, pepper and clock as arguments so tests run it in-process;
// main() wires it to the environment, the database and the process.

export const USAGE = `Usage: npm run cli -- <command> [--json]

Commands:
  org create <name>                  Create an organization and its first API key (every scope)
  org list                           List organizations
  org usage <orgId> [--days <n>] [--granularity day|hour] [--outcomes]
                                     The organization's requests and keys used, summed over its
                                     keys by day (or hour) for the last n days: n days (n × 24
                                     hours), the current one last; 7 by default, at most 93 by
                                     hour (GET /api/orgs/:id/usage); --outcomes: with a column
                                     for each outcome (failed attempts included)
  key list <orgId>                   List an organization's API keys
  key report <orgId> [--days <n>] [--dormant] [--status active|expired|revoked] [--owner <who>] [--contains <text>]
                                     Every key with its usage as CSV on stdout, oldest first (the
                                     API's usage.csv; a key unused for n days is dormant, 30 by
                                     default); each filter given narrows it: the dormant keys, a
                                     status, an owner (exactly), a text the name or owner
                                     contains; a report cut short exits 1. Through npm: npm run -s
                                     cli, so npm prints nothing before the CSV
  key create <orgId> --name <name> --scopes <scope,...> [--expires-at <ISO 8601>] [--owner <who>]
                                     Create an API key (scopes: ${SCOPES.join(', ')}); --owner:
                                     who answers for it (a person, team or address)
  key revoke <orgId> <keyId>         Revoke an API key at once, for good (one the dormant clean-up
                                     revoked too: it can no longer be restored)
  key restore <orgId> <keyId>        Give back a key the dormant clean-up revoked, as it was (same
                                     id, secret and scopes), while it can be restored
  key update <orgId> <keyId> [--name <name>] [--owner <who> | --no-owner]
                                     Rename an API key, or name (or clear) who answers for it
  key renew <orgId> <keyId> --expires-at <ISO 8601|never>
                                     Give an active API key a new expiry (same id, usage history
                                     and networks); an expired or revoked key cannot be renewed
  key revoke-dormant <orgId> --days <n> [--apply [--key-ids <id,...|@file>] [--restorable-days <n>]]
                                     List the active keys unused for n days (and not created or
                                     rotated within them); --apply revokes them: with --key-ids
                                     only those of the ids a dry run listed (a file: one id per
                                     line) still dormant, without it the keys selected again
                                     (refused if no key of the org has a recorded use within n
                                     days, or if uses may have been lost within them); key restore
                                     gives one back within --restorable-days (0-365,
                                     ${RESTORABLE_DAYS_DEFAULT} by default; 0: revoked for good)
  key erase-ips <orgId> <keyId>      Erase every IP address kept for an API key (usage, IP history, events, webhook payloads, audit log, usage log)
  pepper status                      Count usable keys per pepper (KEY_PEPPER, KEY_PEPPER_PREVIOUS, KEY_PEPPER_NEXT)
  collector spans [--days <n>]       When each collector process listened in the last n days (7 by
                                     default), and the gaps the dormant clean-up counts
  usage-log requeue                  Move the usage set aside (usage log rows a fold could not read,
                                     keys PostgreSQL refused) back into the usage log for the next fold
  help                               Show this help

Options:
  --json    Print machine-readable JSON on stdout (through npm: npm run -s cli, so npm prints nothing before it)

A new key's plaintext is printed once and never again: only its hash is stored.
Uses DATABASE_URL when set, else the embedded PostgreSQL of \`npm start\` (started and stopped as needed).`;

const OPTIONS = {
  json: { type: 'boolean' },
  name: { type: 'string' },
  owner: { type: 'string' },
  'no-owner': { type: 'boolean' },
  scopes: { type: 'string' },
  'expires-at': { type: 'string' },
  days: { type: 'string' },
  granularity: { type: 'string' },
  outcomes: { type: 'boolean' },
  dormant: { type: 'boolean' },
  status: { type: 'string' },
  contains: { type: 'string' },
  apply: { type: 'boolean' },
  'key-ids': { type: 'string' },
  'restorable-days': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type OptionName = keyof typeof OPTIONS;

export type Command =
  | { kind: 'org create'; name: string; json: boolean }
  | { kind: 'org list'; json: boolean }
  | { kind: 'org usage'; orgId: string; days: number; granularity: 'hour' | 'day'; outcomes: boolean; json: boolean }
  | { kind: 'key list'; orgId: string; json: boolean }
  | { kind: 'key report'; orgId: string; dormantDays: number; filters: ReportFilters; json: boolean }
  | { kind: 'key create'; orgId: string; name: string; owner: string | null; scopes: Scope[]; expiresAt: Date | null; json: boolean }
  | { kind: 'key revoke'; orgId: string; keyId: string; json: boolean }
  | { kind: 'key restore'; orgId: string; keyId: string; json: boolean }
  | { kind: 'key update'; orgId: string; keyId: string; name?: string; owner?: string | null; json: boolean }
  | { kind: 'key renew'; orgId: string; keyId: string; expiresAt: Date | null; json: boolean }
  | {
      kind: 'key revoke-dormant';
      orgId: string;
      dormantDays: number;
      apply: boolean;
      keyIds: KeyIds | undefined;
      /** Undefined: the service's default (RESTORABLE_DAYS_DEFAULT). */
      restorableForDays: number | undefined;
      json: boolean;
    }
  | { kind: 'key erase-ips'; orgId: string; keyId: string; json: boolean }
  | { kind: 'pepper status'; json: boolean }
  | { kind: 'collector spans'; days: number; json: boolean }
  | { kind: 'usage-log requeue'; json: boolean };

/** The usage list's filters the CSV report takes (GET …/usage.csv), as the service reads them. */
export type ReportFilters = Pick<ReportQuery, 'dormant' | 'status' | 'owner' | 'nameOrOwnerContains'>;

/** The ids a dry run listed: given inline, or a file's, read when the command runs. */
export type KeyIds = { ids: string[] } | { file: string };

export type ParsedCli = { kind: 'help' } | { kind: 'usage'; problem: string } | { kind: 'command'; command: Command };

export interface CliDeps {
  db: Db;
  out: (text: string) => void;
  err: (text: string) => void;
  /** Resolves once every line given to `out` is written; rejects with the stream's error (a full disk, a closed pipe). */
  flush?: () => Promise<void>;
  pepper: string;
  /** KEY_PEPPER_PREVIOUS, newest first. */
  previousPeppers?: readonly string[];
  /** KEY_PEPPER_NEXT. */
  nextPepper?: string | null;
  /** The API's settings the usage views are made with (key report). */
  usageSettings?: Pick<Config['api'], 'usageDelay' | 'eventSummaryDays'>;
  /** USAGE_TRACKING: false refuses revoke-dormant --apply, as the API does (uses are not recorded). */
  usageTracking?: boolean;
  now: () => number;
}

class UsageError extends Error {}

// The API's bounds: a time past 9999 in UTC was stored, and the API then answered "+010000-…".
const isoDateTime = z.iso.datetime({ offset: true }).refine(...withinSupportedTimes);

function check<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const result = schema.safeParse(value);
  if (!result.success) throw new UsageError(`${what}: ${result.error.issues[0]?.message ?? 'invalid'}`);
  return result.data;
}

const checkId = (value: string, what: string) => check(uuid, value, what);

function parseScopes(raw: string | undefined): Scope[] {
  if (raw === undefined) throw new UsageError('--scopes is required');
  const scopes = raw
    .split(',')
    .map((scope) => scope.trim())
    .filter(Boolean);
  if (scopes.length === 0) throw new UsageError('--scopes: must list at least one scope');
  for (const scope of scopes) {
    if (!(SCOPES as readonly string[]).includes(scope)) {
      throw new UsageError(`--scopes: unknown scope "${scope}" (known: ${SCOPES.join(', ')})`);
    }
  }
  return [...new Set(scopes as Scope[])];
}

function parseExpiry(raw: string | undefined, now: number): Date | null {
  if (raw === undefined) return null;
  const expiresAt = new Date(check(isoDateTime, raw, '--expires-at (an ISO 8601 date-time such as 2027-01-31T00:00:00Z)'));
  if (expiresAt.getTime() <= now) throw new UsageError('--expires-at: must be in the future');
  return expiresAt;
}

// Which positional arguments and options each command takes; --json goes with every command.
const SIGNATURES: Record<Command['kind'], { args: string[]; options: OptionName[] }> = {
  'org create': { args: ['name'], options: [] },
  'org list': { args: [], options: [] },
  'org usage': { args: ['orgId'], options: ['days', 'granularity', 'outcomes'] },
  'key list': { args: ['orgId'], options: [] },
  'key report': { args: ['orgId'], options: ['days', 'dormant', 'status', 'owner', 'contains'] },
  'key create': { args: ['orgId'], options: ['name', 'owner', 'scopes', 'expires-at'] },
  'key revoke': { args: ['orgId', 'keyId'], options: [] },
  'key restore': { args: ['orgId', 'keyId'], options: [] },
  'key update': { args: ['orgId', 'keyId'], options: ['name', 'owner', 'no-owner'] },
  'key renew': { args: ['orgId', 'keyId'], options: ['expires-at'] },
  'key revoke-dormant': { args: ['orgId'], options: ['days', 'apply', 'key-ids', 'restorable-days'] },
  'key erase-ips': { args: ['orgId', 'keyId'], options: [] },
  'pepper status': { args: [], options: [] },
  'collector spans': { args: [], options: ['days'] },
  'usage-log requeue': { args: [], options: [] },
};

const wholeNumber = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`));

// The same bounds as the HTTP API's dormantDays and restorableForDays.
const dormantDays = wholeNumber(1, 3650);
const restorableDays = wholeNumber(0, 365);
// As many buckets as the HTTP API's series answers: 93 days of hours.
const seriesDays = { hour: wholeNumber(1, MAX_SERIES_POINTS / 24), day: wholeNumber(1, MAX_SERIES_POINTS) };
const granularity = z.enum(['hour', 'day'], { error: 'must be hour or day' });
const keyStatus = z.enum(KEY_STATUSES, { error: `must be ${KEY_STATUSES.join(', ')}` });

// Only the filters given: the report's answer for none is every key.
function reportFilters(values: { dormant?: boolean; status?: string; owner?: string; contains?: string }): ReportFilters {
  return {
    ...(values.dormant ? { dormant: true } : {}),
    ...(values.status === undefined ? {} : { status: check(keyStatus, values.status, '--status') }),
    ...(values.owner === undefined ? {} : { owner: check(displayName, values.owner, '--owner') }),
    ...(values.contains === undefined ? {} : { nameOrOwnerContains: check(displayName, values.contains, '--contains') }),
  };
}

function keyIdsOption(raw: string | undefined): KeyIds | undefined {
  if (raw === undefined) return undefined;
  if (raw.startsWith('@')) {
    if (raw.length === 1) throw new UsageError('--key-ids: @ must be followed by a file name');
    return { file: raw.slice(1) };
  }
  return { ids: checkKeyIds(raw, '--key-ids') };
}

/** Ids separated by commas, spaces or lines: each a UUID, at least one, at most the API's MAX_REVOKE_KEY_IDS. */
function checkKeyIds(text: string, what: string): string[] {
  const ids = text.split(/[\s,]+/).filter(Boolean);
  if (ids.length === 0) throw new UsageError(`${what}: lists no key id`);
  if (ids.length > MAX_REVOKE_KEY_IDS) throw new UsageError(`${what}: lists ${ids.length} ids, at most ${MAX_REVOKE_KEY_IDS}`);
  // A key pasted for its id (ku_<32 hex>_<secret>) is named without its secret, whose first
  // characters fell within the 40 echoed.
  return [...new Set(ids.map((id) => checkId(id, `${what}: "${printable(redactKeyMaterial(id).slice(0, 40))}"`)))];
}

function isCommandKind(value: string): value is Command['kind'] {
  return Object.hasOwn(SIGNATURES, value);
}

// parseArgs reports unknown options and missing option values with a TypeError.
function parseOptions(argv: string[]) {
  try {
    return parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

// key update's fields: at least one; --no-owner clears the owner (an empty --owner is refused, as the API refuses it).
function keyChange(values: { name?: string; owner?: string; 'no-owner'?: boolean }): { name?: string; owner?: string | null } {
  if (values.owner !== undefined && values['no-owner']) throw new UsageError('key update: --owner and --no-owner: give one');
  if (values.name === undefined && values.owner === undefined && !values['no-owner']) {
    throw new UsageError('key update: give --name, --owner or --no-owner');
  }
  return {
    ...(values.name === undefined ? {} : { name: check(displayName, values.name, '--name') }),
    ...(values.owner === undefined ? {} : { owner: check(displayName, values.owner, '--owner') }),
    ...(values['no-owner'] ? { owner: null } : {}),
  };
}

export function parseCli(argv: string[], now: number): ParsedCli {
  try {
    const { values, positionals } = parseOptions(argv);
    if (values.help || (positionals[0] === 'help' && positionals.length === 1)) return { kind: 'help' };
    if (positionals.length === 0) throw new UsageError('no command given');
    const kind = positionals.slice(0, 2).join(' ');
    if (!isCommandKind(kind)) throw new UsageError(`unknown command "${kind}"`);

    const signature = SIGNATURES[kind];
    const args = positionals.slice(2);
    if (args.length < signature.args.length) {
      throw new UsageError(`${kind}: missing <${signature.args[args.length]}>`);
    }
    if (args.length > signature.args.length) throw new UsageError(`${kind}: unexpected argument "${args[signature.args.length]}"`);
    for (const option of Object.keys(values) as OptionName[]) {
      if (option !== 'json' && !signature.options.includes(option)) throw new UsageError(`${kind}: --${option} does not apply`);
    }
    const json = values.json ?? false;

    switch (kind) {
      case 'org create':
        return { kind: 'command', command: { kind, name: check(displayName, args[0], '<name>'), json } };
      case 'org list':
        return { kind: 'command', command: { kind, json } };
      case 'key list':
        return { kind: 'command', command: { kind, orgId: checkId(args[0], '<orgId>'), json } };
      case 'key create':
        if (values.name === undefined) throw new UsageError('key create: --name is required');
        return {
          kind: 'command',
          command: {
            kind,
            orgId: checkId(args[0], '<orgId>'),
            name: check(displayName, values.name, '--name'),
            owner: values.owner === undefined ? null : check(displayName, values.owner, '--owner'),
            scopes: parseScopes(values.scopes),
            expiresAt: parseExpiry(values['expires-at'], now),
            json,
          },
        };
      case 'key revoke':
      case 'key restore':
      case 'key erase-ips':
        return { kind: 'command', command: { kind, orgId: checkId(args[0], '<orgId>'), keyId: checkId(args[1], '<keyId>'), json } };
      case 'key update':
        return { kind: 'command', command: { kind, orgId: checkId(args[0], '<orgId>'), keyId: checkId(args[1], '<keyId>'), ...keyChange(values), json } };
      case 'key renew': {
        const raw = values['expires-at'];
        if (raw === undefined) throw new UsageError('key renew: --expires-at is required (an ISO 8601 date-time, or never)');
        const ids = { orgId: checkId(args[0], '<orgId>'), keyId: checkId(args[1], '<keyId>') };
        return { kind: 'command', command: { kind, ...ids, expiresAt: raw === 'never' ? null : parseExpiry(raw, now), json } };
      }
      case 'key revoke-dormant': {
        if (values.days === undefined) throw new UsageError('key revoke-dormant: --days is required');
        const apply = values.apply ?? false;
        if (values['key-ids'] !== undefined && !apply) throw new UsageError('--key-ids: only with --apply (a dry run lists the ids)');
        const restorable = values['restorable-days'];
        if (restorable !== undefined && !apply) throw new UsageError('--restorable-days: only with --apply (a dry run revokes nothing)');
        return {
          kind: 'command',
          command: {
            kind,
            orgId: checkId(args[0], '<orgId>'),
            dormantDays: check(dormantDays, values.days, '--days'),
            apply,
            keyIds: keyIdsOption(values['key-ids']),
            restorableForDays: restorable === undefined ? undefined : check(restorableDays, restorable, '--restorable-days'),
            json,
          },
        };
      }
      case 'key report':
        if (json) throw new UsageError('key report: --json does not apply (the report is CSV)');
        return {
          kind: 'command',
          command: {
            kind,
            orgId: checkId(args[0], '<orgId>'),
            dormantDays: values.days === undefined ? 30 : check(dormantDays, values.days, '--days'),
            filters: reportFilters(values),
            json,
          },
        };
      case 'org usage': {
        const by = values.granularity === undefined ? 'day' : check(granularity, values.granularity, '--granularity');
        const days = values.days === undefined ? 7 : check(seriesDays[by], values.days, '--days');
        const outcomes = values.outcomes ?? false;
        return { kind: 'command', command: { kind, orgId: checkId(args[0], '<orgId>'), days, granularity: by, outcomes, json } };
      }
      case 'collector spans':
        return { kind: 'command', command: { kind, days: values.days === undefined ? 7 : check(dormantDays, values.days, '--days'), json } };
      case 'pepper status':
      case 'usage-log requeue':
        return { kind: 'command', command: { kind, json } };
    }
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    // Usage errors quote the arguments: a key pasted in the wrong place (`cli.ts ku_…`) reached the
    // terminal, its scrollback and any CI log.
    return { kind: 'usage', problem: redactKeyMaterial(error.message) };
  }
}

// Names come from API clients too: never let one put escape sequences on an operator's terminal,
// nor a line or paragraph separator (stored before the API refused them) into a table's row.
const printable = (text: string) => text.replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029]/g, '?');

function table(rows: string[][]): string {
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  return rows
    .map((row) =>
      row
        .map((cell, column) => cell.padEnd(widths[column]))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

const orgJson = (org: Organization) => ({ id: org.id, name: org.name, createdAt: org.createdAt.toISOString() });

const ONCE_WARNING =
  'This key is shown only once and cannot be recovered: store it now (e.g. in a secret manager). ' + 'If it is lost, create a new key and revoke this one.';

function describeKey(key: ApiKeyView): string {
  return [
    `  id:         ${key.id}`,
    `  name:       ${printable(key.name)}`,
    ...(key.owner === null ? [] : [`  owner:      ${printable(key.owner)}`]),
    `  scopes:     ${key.scopes.join(', ')}`,
    `  expires at: ${key.expiresAt ?? 'never'}`,
  ].join('\n');
}

function revealKey(deps: CliDeps, plaintext: string) {
  deps.out(`\n  ${plaintext}\n`);
  deps.out(`warning: ${ONCE_WARNING}`);
}

const ownerCell = (key: Pick<ApiKeyView, 'owner'>) => (key.owner === null ? '-' : printable(key.owner));

const printJson = (deps: CliDeps, value: unknown) => deps.out(JSON.stringify(value, null, 2));

/** stdout failed: what the command did is done (committed), only its report is lost. */
class OutputLost extends Error {}

/** A command that failed after it printed part of its answer. */
class CommandFailed extends Error {}

// Every write and the final flush, so a failed stdout is told apart from a failed command.
function watchOutput(deps: CliDeps): CliDeps {
  const lost = (error: unknown) => new OutputLost(`the output could not be written (${(error as Error).message})`);
  return {
    ...deps,
    out(text) {
      try {
        deps.out(text);
      } catch (error) {
        throw lost(error);
      }
    },
    flush: async () => {
      try {
        await deps.flush?.();
      } catch (error) {
        throw lost(error);
      }
    },
  };
}

// A new key's secret is printed once, after its transaction committed: lost on the way, it is gone
// for good, and the operator needs the key's id to revoke it (never the secret, in any message).
async function printSecretOnce(deps: CliDeps, created: { orgId: string; keyId: string }, print: () => void): Promise<void> {
  try {
    print();
    await deps.flush?.();
  } catch (error) {
    if (!(error instanceof OutputLost)) throw error;
    throw new OutputLost(
      `${error.message}: API key ${created.keyId} of organization ${created.orgId} was created, but its secret, shown only once, is lost. ` +
        `Revoke it with \`npm run cli -- key revoke ${created.orgId} ${created.keyId}\` and create another with \`npm run cli -- key create ${created.orgId} …\`.`,
    );
  }
}

async function requireOrganization(db: Db, orgId: string): Promise<Organization> {
  const org = await findOrganizationById(db, orgId);
  if (!org) throw new AppError('not_found', `organization ${orgId} not found`);
  return org;
}

/** The keys service as the operator's tools use it, outside any API process. */
export function cliKeysService(deps: Pick<CliDeps, 'db' | 'pepper' | 'now' | 'usageTracking'>) {
  return createApiKeysService({
    db: deps.db,
    pepper: deps.pepper,
    // No key cache to tell of revocations: a running API server's cache forgets a revoked key
    // within KEY_CACHE_TTL_MS.
    defaultGraceSeconds: 0,
    usageTracking: deps.usageTracking,
    now: deps.now,
  });
}

// The command, the CLI's deps and the keys service every key command uses.
type Handler<K extends Command['kind']> = (command: Extract<Command, { kind: K }>, deps: CliDeps, keys: ReturnType<typeof cliKeysService>) => Promise<void>;

// One transaction: an organization never exists without the key that administers it.
const createOrg: Handler<'org create'> = async (command, deps, keys) => {
  const { org, created } = await deps.db.transaction(async (trx) => {
    const org = await insertOrganization(trx, command.name);
    const created = await keys.create(org.id, { name: 'admin', scopes: [...SCOPES], expiresAt: null }, { db: trx });
    return { org, created };
  });
  await printSecretOnce(deps, { orgId: org.id, keyId: created.key.id }, () => {
    if (command.json) {
      printJson(deps, { org: orgJson(org), key: { ...created.key, key: created.plaintext } });
      deps.err(`warning: ${ONCE_WARNING}`);
      return;
    }
    deps.out(`Created organization "${printable(org.name)}"\n  id:         ${org.id}\n`);
    deps.out(`Created API key\n${describeKey(created.key)}`);
    revealKey(deps, created.plaintext);
  });
};

const listOrgs: Handler<'org list'> = async (command, deps) => {
  const orgs = await listOrganizations(deps.db);
  if (command.json) return printJson(deps, orgs.map(orgJson));
  if (orgs.length === 0) return deps.out('No organizations yet: create one with `npm run cli -- org create <name>`.');
  deps.out(table([['ID', 'NAME', 'CREATED'], ...orgs.map((org) => [org.id, printable(org.name), org.createdAt.toISOString()])]));
};

// A key the dormant clean-up revoked says until when `key restore` can give it back.
const statusOf = (key: ApiKeyView) => (key.restorableUntil === null ? key.status : `${key.status} (restorable until ${key.restorableUntil})`);

const listKeys: Handler<'key list'> = async (command, deps, keys) => {
  await requireOrganization(deps.db, command.orgId);
  const views: ApiKeyView[] = [];
  for (let offset = 0; ; offset += 200) {
    const page = await keys.list(command.orgId, { limit: 200, offset });
    views.push(...page.data);
    if (page.data.length === 0 || views.length >= page.page.total) break;
  }
  if (command.json) return printJson(deps, views);
  if (views.length === 0) return deps.out(`Organization ${command.orgId} has no API keys.`);
  deps.out(
    table([
      ['ID', 'PREFIX', 'NAME', 'OWNER', 'SCOPES', 'STATUS', 'CREATED', 'EXPIRES'],
      ...views.map((key) => [
        key.id,
        key.displayPrefix,
        printable(key.name),
        ownerCell(key),
        key.scopes.join(','),
        statusOf(key),
        key.createdAt,
        key.expiresAt ?? '-',
      ]),
    ]),
  );
};

const createKey: Handler<'key create'> = async (command, deps, keys) => {
  await requireOrganization(deps.db, command.orgId);
  const { name, owner, scopes, expiresAt } = command;
  const created = await keys.create(command.orgId, { name, owner, scopes, expiresAt });
  await printSecretOnce(deps, { orgId: command.orgId, keyId: created.key.id }, () => {
    if (command.json) {
      printJson(deps, { ...created.key, key: created.plaintext });
      deps.err(`warning: ${ONCE_WARNING}`);
      return;
    }
    deps.out(`Created API key\n${describeKey(created.key)}`);
    revealKey(deps, created.plaintext);
  });
};

const revokeKey: Handler<'key revoke'> = async (command, deps, keys) => {
  await requireOrganization(deps.db, command.orgId);
  const revoked = await keys.revoke(command.orgId, command.keyId);
  if (command.json) return printJson(deps, revoked);
  deps.out(`Revoked API key ${revoked.id} ("${printable(revoked.name)}") at ${revoked.revokedAt}.`);
  deps.out('Running API servers refuse it within their key cache TTL (KEY_CACHE_TTL_MS, 2 s by default).');
};

const restoreKey: Handler<'key restore'> = async (command, deps, keys) => {
  await requireOrganization(deps.db, command.orgId);
  const wasRevoked = (await keys.get(command.orgId, command.keyId)).status === 'revoked';
  const restored = await keys.restore(command.orgId, command.keyId);
  if (command.json) return printJson(deps, restored);
  for (const line of restoredReport(restored, wasRevoked)) deps.out(line);
};

// A key restored past its expiry is expired, not active: its secret still fails. One restored
// before, and active since, shows its restoredAt: it is not what this run did.
function restoredReport(key: ApiKeyView, wasRevoked: boolean): string[] {
  const named = `API key ${key.id} ("${printable(key.name)}")`;
  if (key.status === 'expired') return [`${named} expired at ${key.expiresAt}: restored or not, its secret no longer works; create a new key.`];
  if (!wasRevoked) return [`${named} is active: it was not revoked, there is nothing to restore.`];
  return [
    `Restored ${named} at ${key.restoredAt}: it is active again, and its secret works again.`,
    'Running API servers accept it again within their key cache TTL (KEY_CACHE_TTL_MS, 2 s by default).',
  ];
}

const updateKey: Handler<'key update'> = async (command, deps, keys) => {
  await requireOrganization(deps.db, command.orgId);
  const updated = await keys.update(command.orgId, command.keyId, { name: command.name, owner: command.owner });
  if (command.json) return printJson(deps, updated);
  deps.out(`API key ${updated.id} is now "${printable(updated.name)}", owner ${updated.owner === null ? 'nobody named' : `"${printable(updated.owner)}"`}.`);
};

const renewKey: Handler<'key renew'> = async (command, deps, keys) => {
  await requireOrganization(deps.db, command.orgId);
  const renewed = await keys.update(command.orgId, command.keyId, { expiresAt: command.expiresAt });
  if (command.json) return printJson(deps, renewed);
  deps.out(`API key ${renewed.id} ("${printable(renewed.name)}") now ${renewed.expiresAt === null ? 'never expires' : `expires at ${renewed.expiresAt}`}.`);
  deps.out('Running API servers apply it within their key cache TTL (KEY_CACHE_TTL_MS, 2 s by default).');
};

const revokeDormant: Handler<'key revoke-dormant'> = async (command, deps, keys) => {
  await requireOrganization(deps.db, command.orgId);
  const keyIds = command.keyIds && ('ids' in command.keyIds ? command.keyIds.ids : await keyIdsOfFile(command.keyIds.file));
  const result = await keys.revokeDormant(command.orgId, {
    dormantDays: command.dormantDays,
    dryRun: !command.apply,
    keyIds,
    restorableForDays: command.restorableForDays,
  });
  if (command.json) return printJson(deps, result);
  const verb = command.apply ? 'Revoked' : 'Would revoke (dry run; add --apply to revoke)';
  const of = keyIds ? ` of the ${keyIds.length} listed` : '';
  deps.out(`${verb} ${result.keys.length} key(s)${of} of organization ${command.orgId} unused for ${command.dormantDays} days.`);
  if (result.more) deps.out(moreDormantAdvice(command.apply, keyIds !== undefined));
  if (result.keys.length === 0) return;
  deps.out(
    table([
      ['ID', 'PREFIX', 'NAME', 'OWNER', 'CREATED', 'LAST USED'],
      ...result.keys.map((key) => [key.id, key.displayPrefix, printable(key.name), ownerCell(key), key.createdAt, key.lastUsedAt ?? 'never']),
    ]),
  );
  deps.out(restorableAdvice(command, result.restorableUntil));
  if (command.apply) {
    deps.out('Running API servers refuse them within their key cache TTL (KEY_CACHE_TTL_MS, 2 s by default).');
  } else {
    warnOfUnrecordedUses(deps, command, result);
    // Applied later without the ids, the selection is made again: a key that crossed the threshold since is revoked unseen.
    const ids = result.keys.length <= 20 ? result.keys.map((key) => key.id).join(',') : '@<file of the ids above, one per line>';
    deps.out(`To revoke exactly these (those still dormant then): --apply --key-ids ${ids}`);
  }
};

// A clean-up guesses from recorded uses: the operator learns, before and after, how to undo a wrong guess.
function restorableAdvice(command: { orgId: string; apply: boolean }, until: string | null): string {
  if (until === null) return 'Revoked for good (--restorable-days 0): their holders need new keys.';
  if (!command.apply) return `An apply now leaves them restorable until ${until} (--restorable-days <n> to change it; 0: revoked for good).`;
  return `Each can be restored, as it was, until ${until}: npm run cli -- key restore ${command.orgId} <keyId>. After that, their holders need new keys.`;
}

// A gap of collectorUptime as both the dry run's warning and `collector spans` print it.
const describeGap = (gap: { from: string; to: string | null; cause: string }) =>
  `  ${gap.from} to ${gap.to ?? 'now'}: ${gap.cause === 'no_collector' ? 'no collector listened' : 'a collector refused uses (its aggregator or its replay cache full)'}`;

// The ids go through where --apply alone is refused: say why it would be, before they are copied.
function warnOfUnrecordedUses(deps: CliDeps, command: { orgId: string; dormantDays: number }, result: z.output<typeof revokeDormantResult>): void {
  if (!result.usesRecorded) {
    deps.err(
      `warning: no key of organization ${command.orgId} has a recorded use in the last ${command.dormantDays} days, so these may look unused only because uses are not recorded: check that the API records uses (USAGE_TRACKING) and the collector writes them before applying`,
    );
  }
  const { gaps, moreGaps } = result.collectorUptime;
  if (gaps.length === 0) return;
  deps.err(
    `warning: uses may have been lost ${gaps.length}${moreGaps ? ' or more' : ''} time(s) in the last ${command.dormantDays} days, and a key used only then is listed here: check the collectors before applying`,
  );
  for (const gap of gaps) deps.err(describeGap(gap));
}

// With --key-ids, the others are keys the list did not name, not those beyond the 10,000 oldest.
function moreDormantAdvice(applied: boolean, listed: boolean): string {
  if (listed) return 'More keys are dormant than those listed: run a dry run again to see them.';
  return applied
    ? 'More keys are dormant: an apply revokes the oldest 10,000 at a time. Run it again for the rest.'
    : 'More keys are dormant: a dry run lists the oldest 10,000. Apply these, then run it again.';
}

async function keyIdsOfFile(file: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new AppError('invalid_request', `--key-ids: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  try {
    return checkKeyIds(text, `--key-ids @${file}`);
  } catch (error) {
    throw new AppError('invalid_request', (error as Error).message);
  }
}

// Which configured pepper each id is, and its place in the report: current, previous ones in
// order, the next one, hashes from before ids were recorded, then ids no configured pepper has
// (keys that no longer verify).
function pepperSource(id: string | null, deps: CliDeps): { rank: number; source: string } {
  const previous = deps.previousPeppers ?? [];
  const configured = [deps.pepper, ...previous, ...(deps.nextPepper == null ? [] : [deps.nextPepper])].map(pepperId);
  const index = id === null ? -1 : configured.indexOf(id);
  if (index === 0) return { rank: 0, source: 'KEY_PEPPER (current)' };
  if (index > previous.length) return { rank: index, source: 'KEY_PEPPER_NEXT (verified, not rehashed)' };
  if (index > 0) return { rank: index, source: `KEY_PEPPER_PREVIOUS #${index}` };
  if (id === null) return { rank: configured.length, source: 'not recorded (made before 0.2.0; rehashed on use)' };
  return { rank: configured.length + 1, source: 'not configured: these keys no longer verify' };
}

// A data subject's erasure request: every address kept for the key, and an audit entry saying so.
async function eraseIps(command: { orgId: string; keyId: string; json: boolean }, deps: CliDeps): Promise<void> {
  await requireOrganization(deps.db, command.orgId);
  // A key deleted by SQL leaves addresses in its webhook deliveries and in the audit entries it
  // made (neither cascades from the key): an erasure request for it still finds them.
  const exists = (await findApiKeyInOrg(deps.db, command.orgId, command.keyId)) !== undefined;
  const erased = await deps.db.transaction(async (trx) => {
    // The audit lock first, as every audited change takes it: taken last, after the erasure had
    // locked the key's webhook deliveries, it deadlocked with a webhook delete, which takes it
    // first and then deletes those deliveries.
    await beginAuditedChange(trx, command.orgId, undefined, deps.now);
    const counts = await eraseKeyIps(trx, command.orgId, command.keyId);
    if (!exists && Object.values(counts).every((count) => count === 0))
      throw new AppError('not_found', `API key ${command.keyId} not found in organization ${command.orgId}`);
    await recordAudit(trx, {
      orgId: command.orgId,
      actor: { type: 'cli' },
      action: 'key.erase_ips',
      targetKeyId: command.keyId,
      details: { erased: counts },
      ip: null,
    });
    return counts;
  });
  if (command.json) return printJson(deps, erased);
  deps.out(`Erased the IP addresses of API key ${command.keyId}${exists ? '' : ` (deleted: those its rows left in organization ${command.orgId})`}:`);
  deps.out(table([['TABLE', 'ERASED'], ...Object.entries(erased).map(([name, count]) => [name, String(count)])]));
  deps.out('Uses still in flight (up to one collector flush) may record an address again.');
}

async function pepperStatus(json: boolean, deps: CliDeps): Promise<void> {
  const rows = (await countKeysByPepper(deps.db, new Date(deps.now())))
    .map((row) => ({ ...row, ...pepperSource(row.pepperId, deps) }))
    .sort((a, b) => a.rank - b.rank)
    .map(({ rank, ...row }) => row);
  if (json) return printJson(deps, rows);
  if (rows.length === 0) return deps.out('No usable API keys.');
  deps.out(
    table([
      ['PEPPER', 'KEYS', 'PREVIOUS SECRETS IN GRACE', 'SOURCE'],
      ...rows.map((row) => [row.pepperId ?? '-', String(row.secrets), String(row.previousSecrets), row.source]),
    ]),
  );
  // Keys made before 0.2.0 record no pepper: one of them may still need any previous pepper, so
  // "no row names it" said a pepper could go while such a key still needed it (its next use: 401).
  const unrecorded = rows.some((row) => row.pepperId === null);
  deps.out(
    unrecorded
      ? '\nKeep every pepper in KEY_PEPPER_PREVIOUS while the "not recorded" row remains: those keys were made before 0.2.0, and any previous pepper may be theirs (each is rehashed with KEY_PEPPER, and recorded, on its next use).'
      : '\nA previous pepper can be removed from KEY_PEPPER_PREVIOUS once no row names it (keys move to KEY_PEPPER on their next use) ' +
          'and no webhook made before the pepper changed keeps its signing secret: those secrets are never sealed again, and dropping ' +
          'the pepper makes them unreadable for good (rotate them first: POST …/webhooks/:webhookId/rotate-secret, docs/webhooks.md).',
  );
}

async function requeueUsageLog(json: boolean, deps: CliDeps): Promise<void> {
  const rows = await requeueUnreadable(deps.db);
  if (json) return printJson(deps, { requeued: rows });
  deps.out(`Moved ${rows} row(s) set aside back into the usage log.`);
  if (rows > 0) deps.out('A fold that still cannot read or write one sets it aside again (quarantined_keys_total).');
}

/** How many spans `collector spans` lists, newest first. */
const SPANS_LISTED = 200;

async function collectorSpans(command: { days: number; json: boolean }, deps: CliDeps): Promise<void> {
  const now = deps.now();
  const from = new Date(now - command.days * DAY_MS);
  const spans = await spansHeardSince(deps.db, from, SPANS_LISTED);
  const uptime = await collectorUptimeSince(deps.db, from, new Date(now), COLLECTOR_GAPS_SHOWN);
  if (command.json) return printJson(deps, { spans, ...uptime });
  if (uptime.trackedSince === null) {
    deps.out('No collector has recorded when it listens: none of this version has run on this database.');
    return;
  }
  deps.out(
    `Collector spans heard in the last ${command.days} days${spans.length === SPANS_LISTED ? ` (the newest ${SPANS_LISTED})` : ''}; tracked since ${uptime.trackedSince.toISOString()}:`,
  );
  const ended = (span: ListeningSpan) => (span.lostUntil ? `refused uses by ${span.lostUntil.toISOString()}` : '');
  deps.out(
    table([
      ['COLLECTOR', 'STARTED', 'LAST HEARD', ''],
      ...spans.map((span) => [printable(span.collector), span.startedAt.toISOString(), span.heardAt.toISOString(), ended(span)]),
    ]),
  );
  deps.out(
    uptime.gaps.length === 0 ? 'No gap: a use was lost nowhere the spans can see.' : `Gaps (uses may have been lost)${uptime.moreGaps ? ', the newest' : ''}:`,
  );
  for (const gap of uptime.gaps) deps.out(describeGap({ from: gap.from.toISOString(), to: gap.to?.toISOString() ?? null, cause: gap.cause }));
}

// The CSV as the API writes it, a page of keys at a time. deps.out ends each text with \n, so it is
// given each page without its last \n: every line keeps its CRLF. Each page waits for the one
// before it to be written: a slow pipe held the whole report in memory, and a closed one was
// told only after every page was read. A report that fails midway (its keyset lost its place)
// has printed part of the keys: the exit status and stderr say so.
const reportKeys: Handler<'key report'> = async (command, deps) => {
  const usage = await orgUsageService(command, deps);
  deps.out(CSV_HEADER.slice(0, -1));
  try {
    for await (const keys of usage.report(command.orgId, { ...command.filters, dormantDays: command.dormantDays })) {
      deps.out(csvRows(keys).slice(0, -1));
      await deps.flush?.();
    }
  } catch (error) {
    if (error instanceof ReportCutShortError) throw new CommandFailed(`${error.message}; the lines printed are not every key: run it again`);
    throw error;
  }
};

// The usage service the API's usage routes use, for an org that exists.
async function orgUsageService(command: { kind: string; orgId: string }, deps: CliDeps) {
  if (!deps.usageSettings) throw new Error(`${command.kind}: the CLI was started without the usage settings`);
  await requireOrganization(deps.db, command.orgId);
  const { usageDelay, eventSummaryDays } = deps.usageSettings;
  return createUsageService({ db: deps.db, now: deps.now, delay: usageDelay, eventSummaryDays });
}

// The API's answer for the last n days, as whole buckets up to the current one: a range from now
// less n days began inside a bucket, which the API counts whole, so the table summed more than
// the range its heading named, and 93 days of hours came to one bucket more than the API answers.
// The outcomes (byOutcome) only when asked for: they add six columns to the table.
const orgUsage: Handler<'org usage'> = async (command, deps) => {
  const usage = await orgUsageService(command, deps);
  const to = deps.now();
  const step = command.granularity === 'hour' ? HOUR_MS : DAY_MS;
  const series = await usage.orgTimeSeries(command.orgId, {
    from: new Date(Math.floor(to / step) * step - (command.days * DAY_MS - step)),
    to: new Date(to),
    granularity: command.granularity,
    byOutcome: command.outcomes,
  });
  if (command.json) return printJson(deps, series);
  deps.out(`${series.total} requests, ${series.keysUsed} keys used, from ${series.from} to ${series.to} (by ${series.granularity}):`);
  const outcomes = command.outcomes ? OUTCOMES : [];
  const heading = ['START', 'REQUESTS', 'KEYS USED', ...outcomes.map((outcome) => outcome.toUpperCase())];
  const row = (bucket: (typeof series.buckets)[number]) => [
    bucket.start,
    String(bucket.requestCount),
    String(bucket.keysUsed),
    ...outcomes.map((outcome) => String(bucket.outcomes?.[outcome] ?? 0)),
  ];
  deps.out(table([heading, ...series.buckets.map(row)]));
};

const HANDLERS: { [K in Command['kind']]: Handler<K> } = {
  'org create': createOrg,
  'org list': listOrgs,
  'org usage': orgUsage,
  'key list': listKeys,
  'key report': reportKeys,
  'key create': createKey,
  'key revoke': revokeKey,
  'key restore': restoreKey,
  'key update': updateKey,
  'key renew': renewKey,
  'key revoke-dormant': revokeDormant,
  'key erase-ips': (command, deps) => eraseIps(command, deps),
  'pepper status': (command, deps) => pepperStatus(command.json, deps),
  'collector spans': (command, deps) => collectorSpans(command, deps),
  'usage-log requeue': (command, deps) => requeueUsageLog(command.json, deps),
};

function execute<K extends Command['kind']>(command: Extract<Command, { kind: K }>, deps: CliDeps): Promise<void> {
  return (HANDLERS[command.kind] as Handler<K>)(command, deps, cliKeysService(deps));
}

function reportParse(parsed: Exclude<ParsedCli, { kind: 'command' }>, io: Pick<CliDeps, 'out' | 'err'>): number {
  if (parsed.kind === 'help') {
    io.out(USAGE);
    return 0;
  }
  io.err(`error: ${parsed.problem}\n\n${USAGE}`);
  return 2;
}

/**
 * Runs a parsed command; an AppError (unknown org or key, invalid input) or a failed stdout prints
 * `error: …` and gives 1.
 */
export async function runCommand(command: Command, deps: CliDeps): Promise<number> {
  const watched = watchOutput(deps);
  try {
    await execute(command, watched);
    await watched.flush?.();
    return 0;
  } catch (error) {
    if (!(error instanceof AppError || error instanceof OutputLost || error instanceof CommandFailed)) throw error;
    deps.err(`error: ${error.message}`);
    return 1;
  }
}

/** 0 on success, 1 when the command failed, 2 for a usage error; `help` prints the usage on `out`. */
export async function runCli(argv: string[], deps: CliDeps): Promise<number> {
  const parsed = parseCli(argv, deps.now());
  if (parsed.kind !== 'command') return reportParse(parsed, deps);
  return runCommand(parsed.command, deps);
}

const APPLICATION_NAME = 'keyusage-cli';

// startLocalPostgres reuses a running cluster without saying so, so we look before calling it
// to know whether to stop it after.
export function embeddedClusterRunning(dataDir: string): boolean {
  return postmasterPid(dataDir) !== undefined;
}

// Under the reply timeout, so the server's clear lock_timeout error comes first; the API and the
// collector refuse to start on such settings, but a short DATABASE_REPLY_TIMEOUT_MS set for them
// must not fail the CLI.
const cliLockTimeout = ({ cliLockTimeoutMs, replyTimeoutMs }: Config['database']) =>
  replyTimeoutMs > 0 && cliLockTimeoutMs > 0 ? Math.max(1, Math.min(cliLockTimeoutMs, replyTimeoutMs - 500)) : cliLockTimeoutMs;

export interface CliDatabase {
  db: Db;
  close(): Promise<void>;
}

// DATABASE_URL when set; otherwise the embedded cluster of `npm start`, started if needed and
// then stopped again, unless someone else (an `npm start` or another CLI begun meanwhile) is
// connected to it. One connection is plenty for a command, and lets "someone else" be any
// backend but our own.
export function openDatabase(config: Config, err: (text: string) => void): CliDatabase {
  const lockTimeoutMs = cliLockTimeout(config.database);
  if (config.database.url) {
    const db = createDb(config.database.url, {
      poolMax: 1,
      connectTimeoutMs: config.database.connectTimeoutMs,
      replyTimeoutMs: config.database.replyTimeoutMs,
      idleInTransactionTimeoutMs: config.database.idleInTransactionTimeoutMs,
      applicationName: APPLICATION_NAME,
      lockTimeoutMs,
    });
    return { db, close: () => db.destroy() };
  }
  const { embeddedDir, embeddedPort } = config.database;
  const wasRunning = embeddedClusterRunning(embeddedDir);
  const cluster = startLocalPostgres({ dataDir: embeddedDir, port: embeddedPort });
  if (!wasRunning) err(`Started the embedded PostgreSQL in ${embeddedDir} for this command; it is stopped afterwards.`);
  const db = createDb(cluster.url, {
    poolMax: 1,
    applicationName: APPLICATION_NAME,
    lockTimeoutMs,
    idleInTransactionTimeoutMs: config.database.idleInTransactionTimeoutMs,
  });
  return {
    db,
    async close() {
      let othersConnected = false;
      if (!wasRunning) {
        const result = await db
          .raw(`select count(*) as others from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()`)
          .catch(() => undefined);
        othersConnected = Number(result?.rows[0]?.others ?? 0) > 0;
      }
      await db.destroy();
      if (wasRunning) return;
      if (othersConnected) err('The embedded PostgreSQL is left running: another process is connected to it.');
      else cluster.stop();
    },
  };
}

export const stdio: Pick<CliDeps, 'out' | 'err' | 'flush'> = {
  out: (text: string) => void process.stdout.write(`${text}\n`),
  err: (text: string) => void process.stderr.write(`${text}\n`),
  // A write that fails later (a pipe closed, a full disk) calls back every write after it with the error.
  flush: () => new Promise<void>((resolve, reject) => process.stdout.write('', (error) => (error ? reject(error) : resolve()))),
};

/** The process entry point: every failure (config, database, command) becomes `error: …` and exit 1. */
export async function main(argv: string[], env: NodeJS.ProcessEnv, io: Pick<CliDeps, 'out' | 'err' | 'flush'> = stdio): Promise<number> {
  const now = Date.now;
  const parsed = parseCli(argv, now());
  // Help and usage errors answer without touching a database.
  if (parsed.kind !== 'command') return reportParse(parsed, io);
  let database: CliDatabase | undefined;
  let url: string | undefined;
  try {
    const config = loadConfig(withDevelopmentDefault(env));
    url = config.database.url;
    database = openDatabase(config, io.err);
    // Only the embedded database is ours to migrate. A DATABASE_URL is the app role's in
    // production (docs/deployment.md), which may not even read knex_migrations: migrating made
    // every command fail there, and with the owner's URL a read-only command applied a release's
    // migrations before the planned `npm run migrate`.
    if (!config.database.url) await migrateEmbedded(database.db, io.err);
    return await runCommand(parsed.command, {
      db: database.db,
      out: io.out,
      err: io.err,
      flush: io.flush,
      pepper: config.api.keyPepper,
      previousPeppers: config.api.previousKeyPeppers,
      nextPepper: config.api.nextKeyPepper,
      usageTracking: config.usage.enabled,
      usageSettings: config.api,
      now,
    });
  } catch (error) {
    // describeDatabaseError names the host and the variable of a database it cannot reach.
    const message = url ? describeDatabaseError(error, url) : (error as Error).message;
    io.err(`error: ${message}${hintFor(error)}`);
    return 1;
  } finally {
    await database?.close();
  }
}

async function migrateEmbedded(db: Db, err: (text: string) => void): Promise<void> {
  const applied = await migrateLatest(db);
  if (applied.length > 0) err(`Applied ${applied.length} migration(s): ${applied.join(', ')}`);
}

const MIGRATE_HINT = ' (is the schema migrated? `npm run migrate`, as the schema owner)';
const LOCK_HINT =
  ' (CLI_LOCK_TIMEOUT_MS passed waiting for a row or lock another session holds: a flush, a change, a transaction left open; ' +
  'nothing was changed: run it again, or raise CLI_LOCK_TIMEOUT_MS)';
const hintFor = (error: unknown) => (isMissingRelation(error) ? MIGRATE_HINT : (error as { code?: unknown }).code === '55P03' ? LOCK_HINT : '');
// 42P01: undefined_table.
const isMissingRelation = (error: unknown) => (error as { code?: unknown }).code === '42P01';

if (require.main === module) {
  // Without a listener a failed stdout is an "Unhandled 'error' event" crash that skips closing the
  // database and reporting; its error reaches stdio.flush's callback instead, and runCommand says it.
  process.stdout.on('error', () => {});
  exitWhenDone(main(process.argv.slice(2), process.env), stdio.err);
}
