import { isDeepStrictEqual } from 'node:util';
import { z } from 'zod';
import type { Db } from '../../shared/db';
import { auditActor, beginAuditedChange, recordAudit, recordAudits, type AuditEntry } from '../audit/audit.repository';
import type { KeyVerifier } from '../auth/keyVerifier';
import { AppError, InvalidInputError, notFound } from '../errors';
import {
  countKeysInOrg,
  findDormantKeys,
  insertApiKey,
  listApiKeysInOrg,
  markRevoked,
  markRestored,
  replaceSecret,
  revokeDormantKeys,
  latestUseInOrg,
  lockApiKey,
  previousSecretUses,
  updateApiKey,
  type ApiKeyRecord,
  type DormantQuery,
  type KeyUpdate,
  type PreviousSecretUse,
  type SecretReplacement,
} from './apiKeys.repository';
import { generateKeyMaterial, newSecret } from './keyMaterial';
import { idString, isoTime, listOf, offsetPage } from '../responses';
import { SCOPES, type Scope } from './scopes';
import { requireKeyInOrg } from './requireKeyInOrg';
import { lockOrgFor } from '../orgs/orgs.repository';
import { DAY_MS } from '../../shared/timeUnits';
import { collectorUptimeSince, GAP_TOLERANCE_MS, type CollectorUptime } from '../../shared/collectorUptime';
import type { IdempotentRequest } from '../idempotency/idempotency';
import { idempotentChanges, madeNow, replayedFlag, type Replayed } from '../idempotency/idempotentChange';

export const KEY_STATUSES = ['active', 'expired', 'revoked'] as const;
export type KeyStatus = (typeof KEY_STATUSES)[number];

// What a client may see of a key: never the hash, never the secret.
export const apiKeyView = z
  .object({
    id: idString,
    orgId: idString,
    name: z.string(),
    owner: z.string().nullable().meta({
      description:
        'Who answers for the key: a person, team or address to ask before it is changed or cleaned up (free text, set on create or PATCH); null: nobody named',
    }),
    displayPrefix: z.string().meta({ description: 'The start of the key, to recognise it; not a secret' }),
    scopes: z.array(z.enum(SCOPES)),
    status: z.enum(KEY_STATUSES),
    createdAt: isoTime,
    expiresAt: isoTime.nullable(),
    revokedAt: isoTime.nullable(),
    restorableUntil: isoTime.nullable().meta({
      description:
        'While the key is revoked and can be restored (POST …/restore): until when. null: not revoked, or revoked for good (a single revoke; a clean-up with restorableForDays 0; or the time is past)',
    }),
    restoredAt: isoTime.nullable().meta({ description: 'When the key was last restored after a clean-up revoked it; its idle time counts from then' }),
    rotatedAt: isoTime.nullable(),
    previousSecretExpiresAt: isoTime
      .nullable()
      .meta({ description: 'While the key is active and a rotation grace period is open: when the previous secret stops working' }),
    previousSecretLastUsedAt: isoTime.nullable().meta({
      description:
        'While previousSecretExpiresAt is set: the newest use of the previous secret since the rotation that made it previous (as lastUsedAt, the collector receipt time); null when it has not been used since',
    }),
    previousSecretLastUsedIp: z
      .string()
      .nullable()
      .meta({ description: 'The client address of that use; null without one, or once erased (IP_RETENTION_DAYS, key erase-ips)' }),
    expectedNetworks: z.array(z.string()).nullable(),
    createdByKeyId: idString.nullable().meta({
      description:
        'The key that created it (null: made by the CLI or the first run, or before creators were recorded). A revoked key does not take the keys it created with it: list them with ?createdByKeyId=',
    }),
  })
  .meta({ id: 'ApiKey' });
export type ApiKeyView = z.output<typeof apiKeyView>;

// The one place a plaintext key appears: the answer to create and rotate.
export const revealedApiKey = apiKeyView
  .extend({ key: z.string().meta({ description: 'The plaintext key, shown this once; only its hash is kept' }) })
  .meta({ id: 'ApiKeyWithPlaintext' });
// What a retry of a create or rotate with the same Idempotency-Key answers: the key as the first
// answer showed it, without the plaintext, which is never kept (docs/api-keys.md, "Idempotent
// create and rotate").
export const replayedApiKey = apiKeyView
  .extend({
    replayed: replayedFlag('key', 'The plaintext key was in that answer only and is kept nowhere; if it was lost, rotate the key (or revoke it)'),
  })
  .meta({ id: 'ApiKeyReplay' });
/** The answer of a create or rotate: the plaintext, or, for a retry with the same Idempotency-Key, the replay without it. */
export const revealedOrReplayedApiKey = z.union([revealedApiKey, replayedApiKey]).meta({ id: 'ApiKeyWithPlaintextOrReplay' });
export const apiKeyList = listOf(apiKeyView, offsetPage).meta({ id: 'ApiKeyList' });
/** How many ids a revoke-dormant may name (keyIds): the API's bound, which the CLI checks first. */
export const MAX_REVOKE_KEY_IDS = 10_000;
/** How many gaps a revoke-dormant answer lists (collectorUptime.gaps). */
export const COLLECTOR_GAPS_SHOWN = 20;
export const revokeDormantResult = z
  .object({
    dryRun: z.boolean(),
    dormantDays: z.number().int(),
    keys: z.array(apiKeyView.extend({ lastUsedAt: isoTime.nullable() })),
    restorableUntil: isoTime.nullable().meta({
      description: 'Until when the keys an apply revokes can be restored (POST …/api-keys/:keyId/restore); null: for good (restorableForDays 0)',
    }),
    more: z.boolean().meta({
      description: `A dry run lists, and an apply revokes, at most ${MAX_REVOKE_KEY_IDS} keys, oldest first (as many as an apply's keyIds take): true when keys besides those answered are dormant, whether or not keyIds listed them. After a dry run, apply these, then run again; after an apply, run it again for the rest`,
    }),
    usesRecorded: z.boolean().meta({
      description:
        "Whether a use of any of the org's keys is recorded within dormantDays. false: uses may not be recorded (an API with USAGE_TRACKING=false, a collector not writing, a wrong port or signing secret), so every key older than dormantDays looks unused; an apply without keyIds is then refused (409), and one with them revokes what they name. Check that uses are recorded before applying",
    }),
    collectorUptime: z
      .object({
        trackedSince: isoTime.nullable().meta({
          description: 'When the first collector of this version began recording when it listens (null: none has yet): no gap is known before it',
        }),
        gaps: z
          .array(
            z.object({
              from: isoTime,
              to: isoTime.nullable().meta({ description: 'null: still going on' }),
              cause: z.enum(['no_collector', 'uses_lost']).meta({
                description: `no_collector: no collector listened (silences under ${GAP_TOLERANCE_MS / 1000} s, as a restart's, are not counted); uses_lost: a collector refused uses, its aggregator or its replay cache full`,
              }),
            }),
          )
          .meta({ description: `The newest ${COLLECTOR_GAPS_SHOWN} times within dormantDays when a use may have been lost, oldest first` }),
        moreGaps: z.boolean(),
      })
      .meta({
        description:
          'When uses may have been lost within dormantDays: a key used only then looks dormant. An apply without keyIds is refused (409) while there is any gap; one with them revokes what they name',
      }),
  })
  .meta({ id: 'RevokeDormantResult' });

const iso = (date: Date | null) => (date ? date.toISOString() : null);

export function keyStatus(key: Pick<ApiKeyRecord, 'revokedAt' | 'expiresAt'>, now: number): KeyStatus {
  // Revoked from the moment it is written, whatever the clock of the instance that wrote it said:
  // one running ahead stamped a time other instances took as still to come, and served the key.
  if (key.revokedAt) return 'revoked';
  if (key.expiresAt && key.expiresAt.getTime() <= now) return 'expired';
  return 'active';
}

// A revoked or expired key's previous secret is refused as its current one is, whatever its grace.
const graceOpen = (key: GraceOfKey, now: number) =>
  keyStatus(key, now) === 'active' && key.previousSecretExpiresAt !== null && key.previousSecretExpiresAt.getTime() > now;

type GraceOfKey = Pick<ApiKeyRecord, 'revokedAt' | 'expiresAt' | 'rotatedAt' | 'previousSecretExpiresAt'>;

/**
 * A key's grace period and its previous secret's last use as the key view and the usage list show
 * them. `previousUse`: the newest use of a previous secret the collector wrote, shown only during
 * the grace period and only if it came at or after the rotation that made the current previous
 * secret: an older one proved a secret rotated out before.
 */
export function previousSecretShown(key: GraceOfKey, now: number, previousUse: PreviousSecretUse | undefined) {
  const inGrace = graceOpen(key, now);
  const sinceRotation = inGrace && previousUse !== undefined && key.rotatedAt !== null && previousUse.at.getTime() >= key.rotatedAt.getTime();
  return {
    previousSecretExpiresAt: inGrace ? iso(key.previousSecretExpiresAt) : null,
    previousSecretLastUsedAt: sinceRotation ? previousUse.at.toISOString() : null,
    previousSecretLastUsedIp: sinceRotation ? previousUse.ip : null,
  };
}

/** Until when a revoked key can be restored, as the key view and the usage list show it: null once it cannot. */
export const restorableUntilShown = (key: Pick<ApiKeyRecord, 'revokedAt' | 'restorableUntil'>, now: number) =>
  key.revokedAt !== null && key.restorableUntil !== null && key.restorableUntil.getTime() > now ? key.restorableUntil.toISOString() : null;

export function toApiKeyView(key: ApiKeyRecord, now: number, previousUse?: PreviousSecretUse): ApiKeyView {
  return {
    id: key.id,
    orgId: key.orgId,
    name: key.name,
    owner: key.owner,
    displayPrefix: key.displayPrefix,
    scopes: key.scopes,
    status: keyStatus(key, now),
    createdAt: key.createdAt.toISOString(),
    expiresAt: iso(key.expiresAt),
    revokedAt: iso(key.revokedAt),
    restorableUntil: restorableUntilShown(key, now),
    restoredAt: iso(key.restoredAt),
    rotatedAt: iso(key.rotatedAt),
    ...previousSecretShown(key, now, previousUse),
    expectedNetworks: key.expectedNetworks,
    createdByKeyId: key.createdByKeyId,
  };
}

// An empty list would mean "expected nowhere", which no one means: it is stored as no list.
const networksOrNull = (networks: string[] | null | undefined) => (networks && networks.length > 0 ? networks : null);

export interface CreateKeyInput {
  name: string;
  owner?: string | null;
  scopes: Scope[];
  expiresAt: Date | null;
  expectedNetworks?: string[] | null;
}

/** The key a request acts with. The CLI acts with none: an operator at the database is not limited. */
export type Actor = Pick<ApiKeyRecord, 'id' | 'displayPrefix' | 'scopes' | 'expiresAt' | 'rotatedAt'>;

/**
 * Who makes a change and through what: the acting key (none from the CLI), the client address
 * (for the audit log), and a transaction to join (the CLI's `org create`).
 */
export interface ChangeContext {
  actor?: Actor;
  ip?: string;
  db?: Db;
}

/** A revoke-dormant request (revokeDormant). */
interface DormantInput {
  dormantDays: number;
  dryRun: boolean;
  keyIds?: string[];
  /** How long an apply's keys can be restored; 0: revoked for good. RESTORABLE_DAYS_DEFAULT unless given. */
  restorableForDays?: number;
}

/** How long the keys a clean-up revokes can be restored, unless the request says. */
export const RESTORABLE_DAYS_DEFAULT = 30;

const restorableUntilOf = (input: DormantInput, now: number) => {
  const days = input.restorableForDays ?? RESTORABLE_DAYS_DEFAULT;
  return days === 0 ? null : new Date(now + days * DAY_MS);
};

// The clean-up's selection judged at `now`: keys idle for dormantDays by then.
const dormantQuery = (orgId: string, input: DormantInput, actor: Actor | undefined, now: number): DormantQuery => ({
  orgId,
  idleSince: new Date(now - input.dormantDays * DAY_MS),
  now: new Date(now),
  exceptKeyId: actor?.id ?? null,
  onlyKeyIds: input.keyIds ?? null,
  // As a single revoke: an expiring key revoked the org's lasting admin key through the clean-up.
  expiringBy: actor?.expiresAt ?? null,
});

/** A rotation's options: the grace period (defaultGraceSeconds unless given), and a new expiry (kept unless given; null: never). */
export type RotateOptions = ChangeContext & { graceSeconds?: number; expiresAt?: Date | null };

/** A create or rotate made now: the key and its plaintext, with the answer's status. */
export interface RevealedKey {
  replayed: false;
  status: number;
  key: ApiKeyView;
  plaintext: string;
}

/** A create or rotate remembered for its Idempotency-Key: its first answer, without the plaintext. */
export type ReplayedKey = Replayed<ApiKeyView>;

// A key hands out no more than it holds: creating or rotating a key reveals that key's secret, so
// a key with more scopes or a longer life than the actor's own would be an escalation. Revoking is
// limited the same way: a short-lived key that revoked the org's lasting admin key left the org,
// once it expired, with no key that could mint another.
// A key may change (PATCH) only keys whose scopes it holds: with keys:write alone it cleared an
// admin key's expected networks, silencing key.outside_networks for that key, and read its view.
type Verb = 'create' | 'rotate' | 'change' | 'revoke' | 'restore';
function assertScopesWithinActor(actor: Actor | undefined, key: { scopes: Scope[] }, verb: Verb) {
  const lacking = actor ? key.scopes.filter((scope) => !actor.scopes.includes(scope)) : [];
  if (lacking.length > 0) {
    throw new AppError('forbidden', `This API key cannot ${verb} a key with scopes it does not hold itself: ${lacking.join(', ')}`);
  }
}

function assertWithinActor(actor: Actor | undefined, key: { scopes: Scope[]; expiresAt: Date | null }, verb: Verb) {
  if (!actor) return;
  assertScopesWithinActor(actor, key, verb);
  if (actor.expiresAt && (key.expiresAt === null || key.expiresAt > actor.expiresAt)) {
    const life = key.expiresAt === null ? 'never expires' : `expires at ${key.expiresAt.toISOString()}`;
    throw new AppError('forbidden', `This API key expires at ${actor.expiresAt.toISOString()}; it cannot ${verb} a key that ${life}`);
  }
}

// The expiry a rotate or a PATCH gives a key is bounded as a created key's is: a key that expires
// cannot renew a key (itself included) past its own expiry, nor make it never expire.
function assertExpiryWithinActor(actor: Actor | undefined, expiresAt: Date | null) {
  if (!actor?.expiresAt || (expiresAt !== null && expiresAt <= actor.expiresAt)) return;
  const asked = expiresAt === null ? 'null (never expires)' : `${expiresAt.toISOString()}, later than that`;
  throw new AppError('forbidden', `This API key expires at ${actor.expiresAt.toISOString()}; it cannot set a key's expiresAt to ${asked}`);
}

// A new expiry is checked once the org's turn has come, by the clock read then (as a create's).
function assertFuture(expiresAt: Date | null | undefined, now: number) {
  if (expiresAt && expiresAt.getTime() <= now) throw new InvalidInputError('expiresAt: must be in the future');
}

/**
 * A PATCH: each field given is set, one left out kept. `owner` null: nobody named. `expiresAt`
 * renews (or shortens) an active key's life; null: it never expires.
 */
export interface KeyChange {
  name?: string;
  owner?: string | null;
  expectedNetworks?: string[] | null;
  expiresAt?: Date | null;
}

// Each field a PATCH changed, with what it replaced, compared as stored (networks normalised): a
// PATCH that changes nothing records nothing, as a second revoke does.
function changedFields(before: ApiKeyRecord, after: ApiKeyRecord) {
  return {
    ...(before.name === after.name ? {} : { name: { from: before.name, to: after.name } }),
    ...(before.owner === after.owner ? {} : { owner: { from: before.owner, to: after.owner } }),
    ...(isDeepStrictEqual(before.expectedNetworks, after.expectedNetworks)
      ? {}
      : { expectedNetworks: { from: before.expectedNetworks, to: after.expectedNetworks } }),
    ...(sameTime(before.expiresAt, after.expiresAt) ? {} : { expiresAt: { from: iso(before.expiresAt), to: iso(after.expiresAt) } }),
  };
}

const sameTime = (a: Date | null, b: Date | null) => (a?.getTime() ?? null) === (b?.getTime() ?? null);

export interface ApiKeysServiceDeps {
  db: Db;
  pepper: string;
  defaultGraceSeconds: number;
  /** KEYS_MAX_PER_ORG, for the API's callers; the operator's tools (the CLI, the first run) leave it out and are not held to it. */
  maxKeysPerOrg?: number;
  /**
   * The API's own key cache, told of each revocation, rotation and new expiry so they apply at once in this
   * process. Callers without one (the CLI) leave it out: other processes' caches expire within
   * KEY_CACHE_TTL_MS.
   */
  verifier?: Pick<KeyVerifier, 'invalidate'>;
  /**
   * False when this API records no uses (USAGE_TRACKING=false): its keys' uses are not in the
   * totals, so "unused" cannot be told from "not recorded", and the clean-up refuses to revoke.
   */
  usageTracking?: boolean;
  /** How long a create or rotate sent with an Idempotency-Key is remembered (IDEMPOTENCY_KEY_TTL_SECONDS); 24 h unless given. */
  idempotencyTtlSeconds?: number;
  now: () => number;
}

export type ApiKeysService = ReturnType<typeof createApiKeysService>;

// Under the org's lock, so that concurrent creates cannot all pass the same count.
async function assertRoomForKey(trx: Db, orgId: string, max: number): Promise<void> {
  await lockOrgFor(trx, 'keys', orgId);
  if ((await countKeysInOrg(trx, orgId, max)) >= max) {
    throw new AppError('conflict', `this org holds ${max} API keys, revoked ones included, the most it may have (KEYS_MAX_PER_ORG)`);
  }
}

// The write of a rotation of `key` at `now`, or the 409 that refuses it. `replacedRotationAt`: the
// rotation the request read, which the write is conditioned on.
function rotation(
  key: ApiKeyRecord,
  replacedRotationAt: Date | null,
  material: Pick<ReturnType<typeof newSecret>, 'secretHash' | 'pepperId'>,
  graceSeconds: number,
  now: number,
  expiresAt: Date | null | undefined,
): SecretReplacement {
  assertFuture(expiresAt, now);
  if (keyStatus(key, now) !== 'active') {
    throw new AppError('conflict', `Cannot rotate a ${keyStatus(key, now)} API key`);
  }
  // One previous secret is kept: a second rotation with a grace period, while the first one's
  // runs, ended the first one's at once, though its answer had promised it (clients still on
  // the original secret were cut off, with nothing in the audit log to say so; a review).
  const keepsOld = graceSeconds > 0;
  if (keepsOld && key.previousSecretHash !== null && key.previousSecretExpiresAt !== null && key.previousSecretExpiresAt.getTime() > now) {
    throw new AppError(
      'conflict',
      `This key's previous secret works until ${iso(key.previousSecretExpiresAt)}: a rotation with a grace period would end it now. Rotate again after that, or with gracePeriodSeconds 0, which ends both the previous secret and the current one at once`,
    );
  }
  // No grace: the old secret is not kept at all. Kept with an end of now, it still worked on
  // an instance whose clock ran behind the rotating one's, for as long as the difference.
  return {
    replacedRotationAt,
    secretHash: material.secretHash,
    secretPepperId: material.pepperId,
    previousSecretHash: keepsOld ? key.secretHash : null,
    previousSecretPepperId: keepsOld ? key.secretPepperId : null,
    previousSecretExpiresAt: new Date(now + graceSeconds * 1000),
    // Later than the rotation it replaces, by a millisecond at least: the write is conditioned
    // on rotated_at, and a rotation in the same millisecond (a clock behind, or stepped back)
    // left it as two racing rotations had read it, so both won.
    rotatedAt: new Date(Math.max(now, (key.rotatedAt?.getTime() ?? -Infinity) + 1)),
    expiresAt,
  };
}

function notRestorable(key: ApiKeyRecord): AppError {
  const why =
    key.restorableUntil === null
      ? 'it was revoked for good (a single revoke, or a clean-up with restorableForDays 0)'
      : `it could be restored until ${key.restorableUntil.toISOString()}`;
  return new AppError('conflict', `This API key cannot be restored: ${why}; create a new key`);
}

export function createApiKeysService(deps: ApiKeysServiceDeps) {
  const requireKey = (orgId: string, keyId: string) => requireKeyInOrg(deps.db, orgId, keyId);

  // The previous secrets' last uses of the keys whose grace period is open, the only ones shown:
  // no statement at all when none is.
  function previousUsesOf(orgId: string, keys: readonly ApiKeyRecord[], now: number) {
    const inGrace = keys.filter((key) => graceOpen(key, now)).map((key) => key.id);
    return previousSecretUses(deps.db, orgId, inGrace);
  }

  // The change and its audit entry in one transaction (a savepoint inside the caller's).
  // `entry` may answer undefined when the change changed nothing.
  function audited<T>(
    orgId: string,
    context: ChangeContext,
    change: (trx: Db) => Promise<T>,
    entry: (result: T) => Omit<AuditEntry, 'actor' | 'ip'> | undefined,
  ) {
    return (context.db ?? deps.db).transaction(async (trx) => {
      await beginAuditedChange(trx, orgId, context.actor, deps.now);
      const result = await change(trx);
      const fields = entry(result);
      if (fields) await recordAudit(trx, { ...fields, actor: auditActor(context.actor), ip: context.ip ?? null });
      return result;
    });
  }

  // The revocations and one audit entry per revoked key, in one transaction: the oldest
  // MAX_REVOKE_KEY_IDS, as a dry run lists them, and whether more are dormant. Unbounded, an org of
  // 100,000 dormant keys with long names and networks made an answer of hundreds of megabytes,
  // built on the API's one thread, as the dry run's was before.
  // Judged once the org's turn has come, by the clock read then (`now`, answered with them): by the
  // time read before the wait (up to API_STATEMENT_TIMEOUT_MS), a key that expired meanwhile was
  // revoked and one that became dormant meanwhile spared; and whether the org records uses was
  // told before it, so an org whose last recorded use left the window meanwhile was not refused,
  // and one with a use recorded meanwhile was.
  function revokeDormantApplied(orgId: string, input: DormantInput, context: ChangeContext) {
    return (context.db ?? deps.db).transaction(async (trx) => {
      await beginAuditedChange(trx, orgId, context.actor, deps.now);
      const now = deps.now();
      const query = dormantQuery(orgId, input, context.actor, now);
      const usesRecorded = await usesRecordedWithin(trx, query);
      const uptime = await collectorUptimeSince(trx, query.idleSince, query.now, COLLECTOR_GAPS_SHOWN);
      if (input.keyIds === undefined) await refuseUnsafeSelection(trx, query, input.dormantDays, usesRecorded, uptime);
      const restorableUntil = restorableUntilOf(input, now);
      const keys = await revokeDormantKeys(trx, query, MAX_REVOKE_KEY_IDS, restorableUntil);
      // Asked whatever the count: a key spared by the check after the locks leaves fewer than the
      // limit revoked, and others may still be dormant. Those revoked are dormant no more.
      const more = await othersDormant(trx, query, []);
      // In a few inserts: one each held up to KEYS_MAX_PER_ORG revoked rows locked for as many round trips.
      await recordAudits(
        trx,
        orgId,
        keys.map((key) => ({
          orgId,
          action: 'keys.revoke_dormant',
          targetKeyId: key.id,
          // Why it was dormant (a key never used is dormant from its creation or rotation), when
          // it was revoked, and whether an operator saw the list first (keyIds) or it was chosen again.
          details: {
            name: key.name,
            owner: key.owner,
            dormantDays: input.dormantDays,
            lastUsedAt: iso(key.lastUsedAt),
            createdAt: iso(key.createdAt),
            rotatedAt: iso(key.rotatedAt),
            revokedAt: iso(key.revokedAt),
            restorableUntil: iso(restorableUntil),
            selectedBy: query.onlyKeyIds === null ? 'dormancy' : 'keyIds',
            // false: revoked by the ids given although no use of the org was recorded within
            // dormantDays (as the dry run said), an override of the check above.
            usesRecorded,
            // How many times within dormantDays a use may have been lost (as the answer lists
            // them): above 0 only with keyIds, an override of the check above.
            collectorGaps: uptime.gaps.length,
          },
          actor: auditActor(context.actor),
          ip: context.ip ?? null,
        })),
      );
      return { keys, more, now, usesRecorded, uptime, restorableUntil };
    });
  }

  // Where uses are not recorded (a collector not writing for longer than dormantDays, a wrong
  // COLLECTOR_PORT or signing secret, USAGE_TRACKING=false on the API that serves the org's keys),
  // every key looks unused, and an apply that selects again revoked every key of the org older
  // than dormantDays, for good (a key made or rotated since is spared, so "every key" was no
  // test). What tells it: no use of any of the org's keys recorded within dormantDays. Nor where
  // a use may have been lost within dormantDays (no collector listened, or one refused uses): a
  // key used only then looks unused, and the keys selected again are not those anyone checked.
  // Such an apply takes the ids a dry run listed. The CLI had the first check and the API had not
  // (a review).
  async function refuseUnsafeSelection(db: Db, query: DormantQuery, dormantDays: number, usesRecorded: boolean, uptime: CollectorUptime): Promise<void> {
    if (usesRecorded && uptime.gaps.length === 0) return;
    // Where nothing would be revoked (every key newer than dormantDays) it is harmless: not refused.
    const dry = await dormantListed(db, query);
    if (dry.keys.length === 0) return;
    const count = `${dry.keys.length}${dry.more ? ' or more' : ''}`;
    const override = 'to revoke them anyway, pass the ids a dry run lists (keyIds; --key-ids in the CLI)';
    if (!usesRecorded) {
      throw new AppError(
        'conflict',
        `no key of organization ${query.orgId} has a recorded use in the last ${dormantDays} days, so all ${count} key(s) older than that look unused: check that the API records uses (USAGE_TRACKING) and the collector writes them; ${override}`,
      );
    }
    const latest = uptime.gaps[uptime.gaps.length - 1];
    throw new AppError(
      'conflict',
      `uses may have been lost ${uptime.gaps.length}${uptime.moreGaps ? ' or more' : ''} time(s) in the last ${dormantDays} days (the latest from ${latest.from.toISOString()} ${latest.to ? `to ${latest.to.toISOString()}` : 'until now'}: ${latest.cause === 'no_collector' ? 'no collector listened' : 'a collector refused uses'}), so ${count} key(s) used only then would look unused: check the collectors; ${override}`,
    );
  }

  // Whether a use of any of the org's keys is recorded within dormantDays: told by both the dry
  // run and the apply (usesRecorded), so a client that applies the ids a dry run listed (the
  // dashboard) can warn as the apply without them is refused. It applied them unwarned (a review).
  async function usesRecordedWithin(db: Db, query: DormantQuery): Promise<boolean> {
    const latest = await latestUseInOrg(db, query.orgId);
    return latest !== null && latest >= query.idleSince;
  }

  async function dormantListed(db: Db, query: DormantQuery) {
    const found = await findDormantKeys(db, query, MAX_REVOKE_KEY_IDS + 1);
    const keys = found.slice(0, MAX_REVOKE_KEY_IDS);
    const more = query.onlyKeyIds === null ? found.length > MAX_REVOKE_KEY_IDS : await othersDormant(db, query, keys);
    return { keys, more };
  }

  // A dry run takes no lock and waits for nothing: judged by the time it starts.
  async function dormantDryRun(orgId: string, input: DormantInput, actor: Actor | undefined) {
    const now = deps.now();
    const query = dormantQuery(orgId, input, actor, now);
    const usesRecorded = await usesRecordedWithin(deps.db, query);
    const uptime = await collectorUptimeSince(deps.db, query.idleSince, query.now, COLLECTOR_GAPS_SHOWN);
    return { ...(await dormantListed(deps.db, query)), now, usesRecorded, uptime, restorableUntil: restorableUntilOf(input, now) };
  }

  // Whether the org has dormant keys besides `answered`, whatever keyIds listed: asked within the
  // listed ids only, an apply of a dry run's list (as the dashboard and the CLI make it) always
  // answered that nothing was left, however many keys were still dormant (a review). The first
  // answered.length + 1 dormant keys hold one not answered if there is any.
  async function othersDormant(db: Db, query: DormantQuery, answered: Array<{ id: string }>): Promise<boolean> {
    const ids = new Set(answered.map((key) => key.id));
    const first = await findDormantKeys(db, { ...query, onlyKeyIds: null }, ids.size + 1);
    return first.some((key) => !ids.has(key.id));
  }

  // A retry with the same Idempotency-Key is answered as the first request was, before anything
  // is judged again; a change made is remembered in its own transaction, without the plaintext.
  const idempotency = idempotentChanges({ resource: 'api_key', ttlSeconds: deps.idempotencyTtlSeconds, now: deps.now });

  async function createKey(
    orgId: string,
    input: CreateKeyInput,
    context: ChangeContext,
    request: IdempotentRequest | undefined,
  ): Promise<RevealedKey | ReplayedKey> {
    assertWithinActor(context.actor, input, 'create');
    const material = generateKeyMaterial(deps.pepper);
    const newKey = {
      id: material.keyId,
      orgId,
      name: input.name,
      owner: input.owner ?? null,
      displayPrefix: material.displayPrefix,
      secretHash: material.secretHash,
      secretPepperId: material.pepperId,
      scopes: input.scopes,
      expiresAt: input.expiresAt,
      expectedNetworks: networksOrNull(input.expectedNetworks),
      createdByKeyId: context.actor?.id ?? null,
    };
    const outcome = await audited(
      orgId,
      context,
      async (trx) => {
        // A retry is answered as the first request was, before anything is judged again.
        const replay = await idempotency.replayFor<ApiKeyView>(trx, orgId, context.actor, request);
        if (replay) return replay;
        // Once the org's turn has come: checked before, a key that expired while the create
        // waited for it (up to API_STATEMENT_TIMEOUT_MS) was created.
        if (input.expiresAt && input.expiresAt.getTime() <= deps.now()) {
          throw new InvalidInputError('expiresAt: must be in the future');
        }
        if (deps.maxKeysPerOrg !== undefined) await assertRoomForKey(trx, orgId, deps.maxKeysPerOrg);
        const created = await insertApiKey(trx, newKey);
        const view = toApiKeyView(created, deps.now());
        await idempotency.remember(trx, { orgId, actor: context.actor, request, status: 201, view });
        return { replayed: false as const, created, view };
      },
      (result) =>
        result.replayed
          ? undefined
          : {
              orgId,
              action: 'key.create',
              targetKeyId: result.created.id,
              details: {
                name: result.created.name,
                owner: result.created.owner,
                scopes: result.created.scopes,
                expiresAt: iso(result.created.expiresAt),
                expectedNetworks: result.created.expectedNetworks,
              },
            },
    );
    if (outcome.replayed) return outcome;
    return { replayed: false, status: 201, key: outcome.view, plaintext: material.plaintext };
  }

  async function rotateKey(orgId: string, keyId: string, options: RotateOptions, request: IdempotentRequest | undefined): Promise<RevealedKey | ReplayedKey> {
    const { graceSeconds = deps.defaultGraceSeconds, expiresAt } = options;
    const key = await requireKey(orgId, keyId);
    assertWithinActor(options.actor, key, 'rotate');
    if (expiresAt !== undefined) assertExpiryWithinActor(options.actor, expiresAt);
    const material = newSecret(key.id, deps.pepper);
    // Judged and stamped once the org's turn has come, on the key as it is then: judged on the
    // read above, by the time before the wait (up to API_STATEMENT_TIMEOUT_MS), a key that
    // expired meanwhile was rotated, and a grace period ended early. The write is still
    // conditioned on the rotation read above: one made meanwhile is "rotated by another request".
    // A retry with the same Idempotency-Key is answered first, and rotates nothing again.
    const outcome = await audited(
      orgId,
      options,
      async (trx) => {
        const replay = await idempotency.replayFor<ApiKeyView>(trx, orgId, options.actor, request);
        if (replay) return replay;
        const current = await requireKeyInOrg(trx, orgId, keyId);
        // Judged again on the key as it is now: renewed while the request waited (never expiring,
        // or outliving the caller), it is no longer one an expiring caller may rotate.
        assertWithinActor(options.actor, current, 'rotate');
        const rotated = await replaceSecret(trx, key.id, rotation(current, key.rotatedAt, material, graceSeconds, deps.now(), expiresAt));
        if (!rotated) return undefined;
        const view = toApiKeyView(rotated, deps.now());
        await idempotency.remember(trx, { orgId, actor: options.actor, request, status: 200, view });
        return { replayed: false as const, rotated, view, expiresAtBefore: current.expiresAt };
      },
      (result) =>
        result && !result.replayed
          ? {
              orgId,
              action: 'key.rotate',
              targetKeyId: key.id,
              details: {
                gracePeriodSeconds: graceSeconds,
                previousSecretExpiresAt: iso(result.rotated.previousSecretExpiresAt),
                // Only when the rotation was given one, as a PATCH records it.
                ...(expiresAt === undefined ? {} : { expiresAt: { from: iso(result.expiresAtBefore), to: iso(result.rotated.expiresAt) } }),
              },
            }
          : undefined,
    );
    if (!outcome) throw await rotationLost(orgId, keyId);
    if (outcome.replayed) return outcome;
    deps.verifier?.invalidate(key.id);
    return { replayed: false, status: 200, key: outcome.view, plaintext: material.plaintext };
  }

  // Why a rotation's compare-and-set wrote nothing: the key was revoked or expired meanwhile, or
  // another rotation won.
  async function rotationLost(orgId: string, keyId: string): Promise<AppError> {
    const key = await requireKey(orgId, keyId);
    const status = keyStatus(key, deps.now());
    if (status !== 'active') return new AppError('conflict', `Cannot rotate a ${status} API key`);
    return new AppError('conflict', 'The API key was rotated by another request at the same time; read it again before retrying');
  }

  // A PATCH. A new expiry renews a key in place (its id, usage history and network baseline
  // stay), or shortens it; only while it is active: an expired key made valid again would make
  // any old copy of its secret valid again, a leaked one too (create a new key instead). The
  // caller is bounded as for a create (the new expiry) and a revoke (the key as it is).
  async function updateKey(orgId: string, keyId: string, change: KeyChange, context: ChangeContext = {}) {
    const key = await requireKey(orgId, keyId);
    assertScopesWithinActor(context.actor, key, 'change');
    const { expiresAt } = change;
    if (expiresAt !== undefined) assertExpiryWithinActor(context.actor, expiresAt);
    const fields: KeyUpdate = {
      ...(change.name === undefined ? {} : { name: change.name }),
      ...(change.owner === undefined ? {} : { owner: change.owner }),
      ...(change.expectedNetworks === undefined ? {} : { expectedNetworks: networksOrNull(change.expectedNetworks) }),
      ...(expiresAt === undefined ? {} : { expiresAt }),
    };
    const updated = await audited(
      orgId,
      context,
      async (trx) => {
        // Judged on the key as it is once locked, by the clock read then: a key that expired,
        // or was revoked, while the request waited for the org's turn is not renewed.
        const before = await lockApiKey(trx, key);
        if (!before) return undefined;
        if (expiresAt !== undefined) {
          const now = deps.now();
          assertFuture(expiresAt, now);
          assertWithinActor(context.actor, before, 'change');
          const status = keyStatus(before, now);
          if (status !== 'active') {
            throw new AppError(
              'conflict',
              `This API key is ${status}: ${status === 'expired' ? 'an expired' : 'a revoked'} key cannot be renewed; create a new key`,
            );
          }
        }
        return { before, after: await updateApiKey(trx, key, fields) };
      },
      (changed) => {
        if (!changed) return undefined;
        const details = changedFields(changed.before, changed.after);
        return Object.keys(details).length === 0 ? undefined : { orgId, action: 'key.update', targetKeyId: key.id, details };
      },
    );
    // Deleted since it was read.
    if (!updated) throw notFound('API key');
    // This process's cache held the key as it was: a renewed key was refused, a shortened one
    // served, and a renamed one told its old name (whoami), until the entry aged out. Other
    // processes' within KEY_CACHE_TTL_MS.
    deps.verifier?.invalidate(key.id);
    const now = deps.now();
    return toApiKeyView(updated.after, now, (await previousUsesOf(orgId, [updated.after], now)).get(updated.after.id));
  }

  // A key the dormant clean-up revoked, given back as it was (same secret, scopes and history) while
  // its restorable time lasts: the clean-up guessed from recorded uses, and guessed wrong. Never
  // one revoked for good (a single revoke: a leak is answered that way). Limited as a revoke. A
  // key already active is answered as it is, and nothing recorded, as a second revoke.
  async function restoreKey(orgId: string, keyId: string, context: ChangeContext = {}) {
    const key = await requireKey(orgId, keyId);
    assertWithinActor(context.actor, key, 'restore');
    const restored = await audited(
      orgId,
      context,
      async (trx) => {
        const current = await lockApiKey(trx, key);
        if (!current) return undefined;
        assertWithinActor(context.actor, current, 'restore');
        if (current.revokedAt === null) return { after: current, changed: false };
        const now = deps.now();
        const after = await markRestored(trx, current, new Date(now));
        if (!after) throw notRestorable(current);
        return { after, changed: true, revokedAt: current.revokedAt };
      },
      (result) =>
        result?.changed
          ? {
              orgId,
              action: 'key.restore',
              targetKeyId: key.id,
              details: { name: key.name, revokedAt: iso(result.revokedAt ?? null), restoredAt: iso(result.after.restoredAt) },
            }
          : undefined,
    );
    if (!restored) throw notFound('API key');
    deps.verifier?.invalidate(key.id);
    const now = deps.now();
    return toApiKeyView(restored.after, now, (await previousUsesOf(orgId, [restored.after], now)).get(key.id));
  }

  return {
    async create(orgId: string, input: CreateKeyInput, context: ChangeContext = {}): Promise<RevealedKey> {
      return madeNow(await createKey(orgId, input, context, undefined));
    },

    /** create, remembered for its Idempotency-Key: a retry within the window answers the first outcome, without the plaintext. */
    createIdempotent(orgId: string, input: CreateKeyInput, context: ChangeContext, request: IdempotentRequest | undefined) {
      return createKey(orgId, input, context, request);
    },

    async list(orgId: string, query: { limit: number; offset: number; createdByKeyId?: string }): Promise<z.output<typeof apiKeyList>> {
      // A key of another org (or none) is not_found, not an empty page, as for webhooks.
      if (query.createdByKeyId) await requireKey(orgId, query.createdByKeyId);
      const { keys, total } = await listApiKeysInOrg(deps.db, orgId, query);
      const now = deps.now();
      const uses = await previousUsesOf(orgId, keys, now);
      return { data: keys.map((key) => toApiKeyView(key, now, uses.get(key.id))), page: { limit: query.limit, offset: query.offset, total } };
    },

    async get(orgId: string, keyId: string) {
      const key = await requireKey(orgId, keyId);
      const now = deps.now();
      return toApiKeyView(key, now, (await previousUsesOf(orgId, [key], now)).get(key.id));
    },

    // A new secret for the same key id, so usage history stays continuous; the old secret keeps
    // working until the grace period ends.
    async rotate(orgId: string, keyId: string, options: RotateOptions = {}): Promise<RevealedKey> {
      return madeNow(await rotateKey(orgId, keyId, options, undefined));
    },

    /** rotate, remembered for its Idempotency-Key: a retry within the window rotates nothing and answers the first outcome, without the plaintext. */
    rotateIdempotent(orgId: string, keyId: string, options: RotateOptions, request: IdempotentRequest | undefined) {
      return rotateKey(orgId, keyId, options, request);
    },

    /** Expected networks do not block a request: a use from outside them raises key.outside_networks. */
    update: updateKey,

    // Active keys dormant for dormantDays (shared/dormancy.ts). A dry run lists them; otherwise the
    // same selection is revoked in one statement, or, with keyIds (the set a dry run showed), only
    // those of them still dormant: a key that crossed the threshold between the two is not revoked
    // unseen. The caller's own key is never among them, so a clean-up cannot lock out the one running it,
    // nor, for an expiring caller, a key that outlives it.
    async revokeDormant(orgId: string, input: DormantInput, context: ChangeContext = {}): Promise<z.output<typeof revokeDormantResult>> {
      if (!input.dryRun && deps.usageTracking === false) {
        throw new AppError(
          'conflict',
          'This API records no uses (USAGE_TRACKING=false): unused keys cannot be told from unrecorded ones; only a dry run is allowed',
        );
      }
      // Either answer is bounded: an org of 100,000 dormant keys with long names and networks made
      // each a response of hundreds of megabytes, built on the API's one thread.
      const { keys, more, now, usesRecorded, uptime, restorableUntil } = input.dryRun
        ? await dormantDryRun(orgId, input, context.actor)
        : await revokeDormantApplied(orgId, input, context);
      if (!input.dryRun) for (const key of keys) deps.verifier?.invalidate(key.id);
      // The previous secrets' last uses, as the key view shows them: without them a dry run said of
      // a key in its grace period that its old secret was not used since the rotation when it was
      // (a review). A revoked key shows none, so an apply asks nothing.
      const uses = await previousUsesOf(orgId, keys, now);
      return {
        dryRun: input.dryRun,
        dormantDays: input.dormantDays,
        keys: keys.map((key) => ({ ...toApiKeyView(key, now, uses.get(key.id)), lastUsedAt: iso(key.lastUsedAt) })),
        restorableUntil: iso(restorableUntil),
        more,
        usesRecorded,
        collectorUptime: {
          trackedSince: iso(uptime.trackedSince),
          gaps: uptime.gaps.map((gap) => ({ from: gap.from.toISOString(), to: iso(gap.to), cause: gap.cause })),
          moreGaps: uptime.moreGaps,
        },
      };
    },

    // Revoking a key revoked for good changes nothing and records nothing, even when two requests
    // race; one the clean-up revoked is made final (it can no longer be restored): what an
    // operator means who revokes a key, as after a leak.
    // Limited by scopes (with keys:write alone, revoking the org's admin key left the org unable
    // to read usage or mint a replacement, and the answer was that key's view) and by lifetime.
    async revoke(orgId: string, keyId: string, context: ChangeContext = {}) {
      const key = await requireKey(orgId, keyId);
      assertWithinActor(context.actor, key, 'revoke');
      const revoked = await audited(
        orgId,
        context,
        async (trx) => {
          // As a rotate's: on the key as it is once the org's turn has come (renewed meanwhile?).
          const current = await requireKeyInOrg(trx, orgId, keyId);
          assertWithinActor(context.actor, current, 'revoke');
          const after = await markRevoked(trx, key.id, new Date(deps.now()));
          return after && { after, before: current };
        },
        (result) =>
          result && {
            orgId,
            action: 'key.revoke',
            targetKeyId: key.id,
            details: {
              name: key.name,
              revokedAt: iso(result.after.revokedAt),
              // Made final: a key the clean-up revoked, which could be restored until then.
              ...(result.before.revokedAt === null ? {} : { restorableUntil: { from: iso(result.before.restorableUntil), to: null } }),
            },
          },
      );
      deps.verifier?.invalidate(key.id);
      return toApiKeyView(revoked?.after ?? (await requireKey(orgId, keyId)), deps.now());
    },

    restore: restoreKey,
  };
}
