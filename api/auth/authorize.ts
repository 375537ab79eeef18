import type { Request, RequestHandler } from 'express';
import type { Outcome } from '../../shared/usageWire';
import { AppError, UNAUTHORIZED_MESSAGE, notFound } from '../errors';
import type { ApiKeyRecord } from '../keys/apiKeys.repository';
import { parsePresentedKey } from '../keys/keyMaterial';
import type { Scope } from '../keys/scopes';
import type { KeyVerifier, MatchedSecret, Verification } from './keyVerifier';

export interface AuthContext {
  key: ApiKeyRecord;
  secret: MatchedSecret;
}

declare module 'express-serve-static-core' {
  interface Locals {
    auth?: AuthContext;
    requestId: string;
  }
}

export type RecordUse = (keyId: string, orgId: string, ip: string, outcome: Outcome) => void;

export interface AuthorizeDeps {
  verifier: KeyVerifier;
  recordUse: RecordUse;
  clientAddress: (req: Request) => string;
}

export interface Requirement {
  scope?: Scope;
  /** Route parameter holding the org id the request acts on; another org's id answers 404. */
  orgParam?: string;
  /**
   * Refuses a key's previous secret (still valid during a rotation's grace period): whoever holds a
   * leaked old secret must not be able to rotate the key again and lock its owner out.
   */
  currentSecret?: boolean;
}

function presentedKey(req: Request): string | undefined {
  const header = req.headers.authorization;
  if (header !== undefined) {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    return match ? match[1] : '';
  }
  const apiKey = req.headers['x-api-key'];
  return typeof apiKey === 'string' ? apiKey.trim() : undefined;
}

type Proven = Exclude<Verification, { outcome: 'unknown' | 'bad_secret' }>;

// What a request whose secret matched may do: the outcome to record and, unless it is ok, the
// error to answer. A stale secret is recorded as forbidden: a proven use, refused by policy.
function decide(verdict: Proven, requirement: Requirement, req: Request): { outcome: Outcome; refusal?: AppError } {
  const { key } = verdict;
  if (verdict.outcome !== 'ok') return { outcome: verdict.outcome, refusal: new AppError('unauthorized', UNAUTHORIZED_MESSAGE) };
  if (requirement.scope && !key.scopes.includes(requirement.scope)) {
    return { outcome: 'forbidden', refusal: new AppError('forbidden', `This API key lacks the required scope "${requirement.scope}"`) };
  }
  if (requirement.orgParam && String(req.params[requirement.orgParam]).toLowerCase() !== key.orgId) {
    return { outcome: 'cross_org', refusal: notFound('Organization') };
  }
  if (requirement.currentSecret && verdict.secret !== 'current') {
    const message = 'Key management requires the API key with its current secret; this is its previous secret, valid only for other calls until the rotation grace period ends';
    return { outcome: 'forbidden', refusal: new AppError('stale_secret', message) };
  }
  return { outcome: 'ok' };
}

// Every request that names an existing key id is a use and is recorded exactly once here, with
// its outcome. Recording is an in-memory increment: no await, no I/O, nothing that can throw.
export function authorizer(deps: AuthorizeDeps) {
  return (requirement: Requirement = {}): RequestHandler =>
    async (req, res, next) => {
      const raw = presentedKey(req);
      const presented = raw ? parsePresentedKey(raw) : undefined;
      if (!presented) throw new AppError('unauthorized', UNAUTHORIZED_MESSAGE);

      const verdict = await deps.verifier.verify(presented);
      if (verdict.outcome === 'unknown') throw new AppError('unauthorized', UNAUTHORIZED_MESSAGE);
      if (verdict.outcome === 'bad_secret') {
        deps.recordUse(verdict.key.id, verdict.key.orgId, deps.clientAddress(req), 'bad_secret');
        throw new AppError('unauthorized', UNAUTHORIZED_MESSAGE);
      }

      const { outcome, refusal } = decide(verdict, requirement, req);
      deps.recordUse(verdict.key.id, verdict.key.orgId, deps.clientAddress(req), outcome);
      if (refusal) throw refusal;
      res.locals.auth = { key: verdict.key, secret: verdict.secret };
      next();
    };
}
