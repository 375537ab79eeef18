import type { Db } from '../../shared/db';
import type { KeyVerifier } from '../auth/keyVerifier';
import { AppError, notFound } from '../errors';
import {
  findApiKeyInOrg,
  findDormantKeys,
  insertApiKey,
  listApiKeysInOrg,
  markRevoked,
  replaceSecret,
  revokeDormantKeys,
  setExpectedNetworks,
  type ApiKeyRecord,
} from './apiKeys.repository';
import { generateKeyMaterial, newSecret } from './keyMaterial';
import type { Scope } from './scopes';

export type KeyStatus = 'active' | 'expired' | 'revoked';

// What a client may see of a key: never the hash, never the secret.
export interface ApiKeyView {
  id: string;
  orgId: string;
  name: string;
  displayPrefix: string;
  scopes: Scope[];
  status: KeyStatus;
  createdAt: string;
  expiresAt: string | null;
  revokedAt: string | null;
  rotatedAt: string | null;
  previousSecretExpiresAt: string | null;
  expectedNetworks: string[] | null;
}

const iso = (date: Date | null) => (date ? date.toISOString() : null);

export function keyStatus(key: Pick<ApiKeyRecord, 'revokedAt' | 'expiresAt'>, now: number): KeyStatus {
  if (key.revokedAt && key.revokedAt.getTime() <= now) return 'revoked';
  if (key.expiresAt && key.expiresAt.getTime() <= now) return 'expired';
  return 'active';
}

export function toApiKeyView(key: ApiKeyRecord, now: number): ApiKeyView {
  const graceOpen = key.previousSecretExpiresAt && key.previousSecretExpiresAt.getTime() > now;
  return {
    id: key.id,
    orgId: key.orgId,
    name: key.name,
    displayPrefix: key.displayPrefix,
    scopes: key.scopes,
    status: keyStatus(key, now),
    createdAt: key.createdAt.toISOString(),
    expiresAt: iso(key.expiresAt),
    revokedAt: iso(key.revokedAt),
    rotatedAt: iso(key.rotatedAt),
    previousSecretExpiresAt: graceOpen ? iso(key.previousSecretExpiresAt) : null,
    expectedNetworks: key.expectedNetworks,
  };
}

const DAY_MS = 86_400_000;

// An empty list would mean "expected nowhere", which no one means: it is stored as no list.
const networksOrNull = (networks: string[] | null | undefined) => (networks && networks.length > 0 ? networks : null);

export interface CreateKeyInput {
  name: string;
  scopes: Scope[];
  expiresAt: Date | null;
  expectedNetworks?: string[] | null;
}

/** The key a request acts with. The CLI acts with none: an operator at the database is not limited. */
export type Actor = Pick<ApiKeyRecord, 'scopes' | 'expiresAt'>;

// A key hands out no more than it holds: creating or rotating a key reveals that key's secret, so
// a key with more scopes or a longer life than the actor's own would be an escalation.
function assertWithinActor(actor: Actor | undefined, key: { scopes: Scope[]; expiresAt: Date | null }, verb: 'create' | 'rotate') {
  if (!actor) return;
  const lacking = key.scopes.filter((scope) => !actor.scopes.includes(scope));
  if (lacking.length > 0) {
    throw new AppError('forbidden', `This API key cannot ${verb} a key with scopes it does not hold itself: ${lacking.join(', ')}`);
  }
  if (actor.expiresAt && (key.expiresAt === null || key.expiresAt > actor.expiresAt)) {
    const life = key.expiresAt === null ? 'never expires' : `expires at ${key.expiresAt.toISOString()}`;
    throw new AppError('forbidden', `This API key expires at ${actor.expiresAt.toISOString()}; it cannot ${verb} a key that ${life}`);
  }
}

export interface ApiKeysServiceDeps {
  db: Db;
  pepper: string;
  defaultGraceSeconds: number;
  verifier: Pick<KeyVerifier, 'invalidate'>;
  now: () => number;
}

export type ApiKeysService = ReturnType<typeof createApiKeysService>;

export function createApiKeysService(deps: ApiKeysServiceDeps) {
  async function requireKey(orgId: string, keyId: string): Promise<ApiKeyRecord> {
    const key = await findApiKeyInOrg(deps.db, orgId, keyId);
    if (!key) throw notFound('API key');
    return key;
  }

  return {
    async create(orgId: string, input: CreateKeyInput, context: { actor?: Actor; db?: Db } = {}) {
      const { actor, db = deps.db } = context;
      if (input.expiresAt && input.expiresAt.getTime() <= deps.now()) {
        throw new AppError('invalid_request', 'Invalid body: expiresAt: must be in the future');
      }
      assertWithinActor(actor, input, 'create');
      const material = generateKeyMaterial(deps.pepper);
      const key = await insertApiKey(db, {
        id: material.keyId,
        orgId,
        name: input.name,
        displayPrefix: material.displayPrefix,
        secretHash: material.secretHash,
        scopes: input.scopes,
        expiresAt: input.expiresAt,
        expectedNetworks: networksOrNull(input.expectedNetworks),
      });
      return { key: toApiKeyView(key, deps.now()), plaintext: material.plaintext };
    },

    async list(orgId: string, page: { limit: number; offset: number }) {
      const { keys, total } = await listApiKeysInOrg(deps.db, orgId, page);
      const now = deps.now();
      return { data: keys.map((key) => toApiKeyView(key, now)), page: { ...page, total } };
    },

    async get(orgId: string, keyId: string) {
      return toApiKeyView(await requireKey(orgId, keyId), deps.now());
    },

    // A new secret for the same key id, so usage history stays continuous; the old secret keeps
    // working until the grace period ends.
    async rotate(orgId: string, keyId: string, graceSeconds: number = deps.defaultGraceSeconds, actor?: Actor) {
      const key = await requireKey(orgId, keyId);
      assertWithinActor(actor, key, 'rotate');
      const now = deps.now();
      if (keyStatus(key, now) !== 'active') {
        throw new AppError('conflict', `Cannot rotate a ${keyStatus(key, now)} API key`);
      }
      const material = newSecret(key.id, deps.pepper);
      const rotated = await replaceSecret(deps.db, key.id, {
        secretHash: material.secretHash,
        previousSecretHash: key.secretHash,
        previousSecretExpiresAt: new Date(now + graceSeconds * 1000),
        rotatedAt: new Date(now),
      });
      if (!rotated) throw new AppError('conflict', 'The API key was rotated by another request at the same time; read it again before retrying');
      deps.verifier.invalidate(key.id);
      return { key: toApiKeyView(rotated, now), plaintext: material.plaintext };
    },

    /** Expected networks do not block a request: a use from outside them raises key.outside_networks. */
    async setExpectedNetworks(orgId: string, keyId: string, networks: string[] | null) {
      const key = await requireKey(orgId, keyId);
      return toApiKeyView(await setExpectedNetworks(deps.db, key.id, networksOrNull(networks)), deps.now());
    },

    // Active keys whose last proven use (or creation, if never used) is older than dormantDays.
    // A dry run lists them; otherwise the same selection is revoked in one statement. The caller's
    // own key is never among them, so a clean-up cannot lock out the one running it.
    async revokeDormant(orgId: string, input: { dormantDays: number; dryRun: boolean; callerKeyId: string | null }) {
      const now = deps.now();
      const query = { orgId, idleSince: new Date(now - input.dormantDays * DAY_MS), now: new Date(now), exceptKeyId: input.callerKeyId };
      const keys = input.dryRun ? await findDormantKeys(deps.db, query) : await revokeDormantKeys(deps.db, query);
      if (!input.dryRun) for (const key of keys) deps.verifier.invalidate(key.id);
      return {
        dryRun: input.dryRun,
        dormantDays: input.dormantDays,
        keys: keys.map((key) => ({ ...toApiKeyView(key, now), lastUsedAt: iso(key.lastUsedAt) })),
      };
    },

    async revoke(orgId: string, keyId: string) {
      const key = await requireKey(orgId, keyId);
      const revoked = await markRevoked(deps.db, key.id, new Date(deps.now()));
      deps.verifier.invalidate(key.id);
      return toApiKeyView(revoked, deps.now());
    },
  };
}
