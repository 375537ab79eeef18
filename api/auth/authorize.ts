import type { Request, RequestHandler } from 'express';
import type { Outcome } from '../../shared/usageWire';
import { AppError, UNAUTHORIZED_MESSAGE, notFound } from '../errors';
import type { ApiKeyRecord } from '../keys/apiKeys.repository';
import { parsePresentedKey } from '../keys/keyMaterial';
import type { Scope } from '../keys/scopes';
import { uuid } from '../validation';
import type { KeyVerifier } from './keyVerifier';

export interface AuthContext {
  key: ApiKeyRecord;
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
  /**
   * Route parameter holding the org id the request acts on; another org's id answers 404. A
   * malformed id names no org: it passes here, and the route's validation answers 400 naming it,
   * as for any malformed id.
   */
  orgParam?: string;
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

function isOtherOrg(param: unknown, orgId: string): boolean {
  const parsed = uuid.safeParse(param);
  return parsed.success && parsed.data !== orgId;
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

      const { key } = verdict;
      const outcome: Outcome =
        verdict.outcome !== 'ok'
          ? verdict.outcome
          : requirement.scope && !key.scopes.includes(requirement.scope)
            ? 'forbidden'
            : requirement.orgParam && isOtherOrg(req.params[requirement.orgParam], key.orgId)
              ? 'cross_org'
              : 'ok';
      deps.recordUse(key.id, key.orgId, deps.clientAddress(req), outcome);

      switch (outcome) {
        case 'ok':
          res.locals.auth = { key };
          return next();
        case 'forbidden':
          throw new AppError('forbidden', `This API key lacks the required scope "${requirement.scope}"`);
        case 'cross_org':
          throw notFound('Organization');
        default:
          throw new AppError('unauthorized', UNAUTHORIZED_MESSAGE);
      }
    };
}
