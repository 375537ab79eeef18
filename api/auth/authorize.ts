import type { Request, RequestHandler, Response } from 'express';
import type { Outcome } from '../../shared/usageWire';
import { AppError, UNAUTHORIZED_MESSAGE, notFound } from '../errors';
import type { ApiKeyRecord } from '../keys/apiKeys.repository';
import { parsePresentedKey, type PresentedKey } from '../keys/keyMaterial';
import type { Scope } from '../keys/scopes';
import { uuid } from '../validation';
import { QUEUED_PER_RUNNING, type OrgConcurrency } from './orgConcurrency';
import type { OrgWriteBudget } from './orgWriteBudget';
import type { AuthThrottle } from './failureThrottle';
import type { KeyVerifier, MatchedSecret, Verification } from './keyVerifier';

export interface AuthContext {
  key: ApiKeyRecord;
  secret: MatchedSecret;
  /** The client address, as recorded with the use (and in the audit log). */
  ip: string;
}

declare module 'express-serve-static-core' {
  interface Locals {
    auth?: AuthContext;
    requestId: string;
  }
}

/** `previousSecret`: the use proved the key's previous secret (a rotation's grace period); omitted or false for the current one. */
export type RecordUse = (keyId: string, orgId: string, ip: string, outcome: Outcome, previousSecret?: boolean) => void;

/** Told of each authorization between its key's read and its use's record (UsageRecorder). */
export interface PendingUses {
  begin(): void;
  end(): void;
}

export interface AuthorizeDeps {
  verifier: KeyVerifier;
  recordUse: RecordUse;
  pendingUses?: PendingUses;
  clientAddress: (req: Request) => string;
  throttle: AuthThrottle;
  /** API_MAX_CONCURRENT_PER_ORG; no limit when not given. */
  orgConcurrency?: OrgConcurrency;
  /** Changes each org may make (API_WRITES_PER_ORG_MINUTE); unset: no limit. */
  orgWrites?: OrgWriteBudget;
}

export interface Requirement {
  /** Every one of them: a key lacking any is refused, the message naming the first it lacks. */
  scopes?: readonly Scope[];
  /**
   * Route parameter holding the org id the request acts on; another org's id answers 404. A
   * malformed id names no org: it passes here, and the route's validation answers 400 naming it,
   * as for any malformed id.
   */
  orgParam?: string;
  /**
   * Refuses a key's previous secret (still valid during a rotation's grace period): whoever holds a
   * leaked old secret must not be able to rotate the key again and lock its owner out. The key is
   * read fresh, not from the cache: a key revoked or rotated elsewhere (another instance, the CLI)
   * within the cache's TTL could otherwise mint an unrevoked key, or rotate its owner out.
   */
  currentSecret?: boolean;
  /** A change (currentSecret) that its org's write budget neither charges nor refuses: REVOKE_KEY. */
  outsideWriteBudget?: boolean;
}

/** Reading an org's keys, usage, events, webhooks and audit log. */
export const READ_ORG: Requirement = Object.freeze({ scopes: Object.freeze(['keys:read'] as const), orgParam: 'id' });
/** Changing an org's keys and webhooks. */
export const MANAGE_ORG: Requirement = Object.freeze({ scopes: Object.freeze(['keys:write'] as const), orgParam: 'id', currentSecret: true });
/**
 * A change that also reads: the dormant clean-up answers with the keys it selects (names, scopes,
 * networks), and a webhook streams every key event out. With keys:write alone, a key could read
 * what its scopes do not grant.
 */
export const MANAGE_AND_READ_ORG: Requirement = Object.freeze({ ...MANAGE_ORG, scopes: Object.freeze(['keys:read', 'keys:write'] as const) });
/**
 * Revoking a key, outside the org's write budget: charged to it, a leaked keys:write key that
 * spent the budget kept its org from revoking it (a review). Its audit entries are bounded
 * without it: a key is revoked once (revoking it again writes nothing), and an org holds
 * KEYS_MAX_PER_ORG keys at most.
 */
export const REVOKE_KEY: Requirement = Object.freeze({ ...MANAGE_ORG, outsideWriteBudget: true });

// The changes (the routes that want the current secret) spend their org's write budget.
const chargesWriteBudget = (requirement: Requirement) => requirement.currentSecret === true && requirement.outsideWriteBudget !== true;

// A Bearer credential wins; an Authorization of another scheme (Basic, added by an ingress in
// front of the API) is not a key, and must not hide the X-API-Key the client sent beside it.
function presentedKey(req: Request): string | undefined {
  const header = req.headers.authorization;
  const bearer = header === undefined ? undefined : /^Bearer\s+(\S+)\s*$/i.exec(header)?.[1];
  if (bearer !== undefined) return bearer;
  const apiKey = req.headers['x-api-key'];
  if (typeof apiKey === 'string') return apiKey.trim();
  return header === undefined ? undefined : '';
}

const TOO_MANY_FAILURES_MESSAGE = 'Too many failed authentication attempts; retry after the time in Retry-After';

// A failed attempt (malformed key, unknown id, wrong secret) is counted by the throttle; once its
// address or key id is over the limit the answer is 429 rather than 401. Only a key that exists
// is counted by id: ids that name no key would otherwise take the slots of real keys' windows
// (and push them out), and anyone can mint those by the million.
function failure(deps: AuthorizeDeps, res: Response, ip: string, keyId?: string): AppError {
  const waitMs = deps.throttle.failed(ip, keyId);
  return waitMs > 0 ? tooManyFailures(res, waitMs) : new AppError('unauthorized', UNAUTHORIZED_MESSAGE);
}

type OrgTurn = { started: Promise<void>; release: () => void };
const NO_TURN_NEEDED: OrgTurn = { started: Promise.resolve(), release: () => {} };

// The request's turn under its org's concurrency limit (undefined: too many wait). Given back
// when its handler ends the response: its statements are done by then, and every handler and the
// error middleware end it, an abandoned or pipelined response too. Given back only when the
// response or its connection closed, a client that stopped reading its responses held its org's
// turns for as long as its connection stayed open (a keys:read key froze its org's API, its own
// revocation included), and given back at a close while its handler ran, a client that hung up
// after each request had any number of its org's statements running (both found by reviews). A
// request still waiting for its turn leaves the queue when it closes.
function turnOf(deps: AuthorizeDeps, req: Request, res: Response, orgId: string): OrgTurn | undefined {
  const limiter = deps.orgConcurrency;
  if (!limiter) return NO_TURN_NEEDED;
  const turn = limiter.enter(orgId);
  if (!turn) return undefined;
  const socket = req.socket;
  const end = res.end.bind(res);
  const closed = () => {
    if (!turn.running) release();
  };
  const release = () => {
    res.off('close', closed);
    socket.off('close', closed);
    res.end = end;
    turn.release();
  };
  res.end = ((...args: Parameters<Response['end']>) => {
    release();
    return end(...args);
  }) as Response['end'];
  res.once('close', closed);
  socket.once('close', closed);
  // Its client may have left while its key was verified: neither closes again.
  if (res.closed || socket.destroyed) release();
  return { started: turn.started, release };
}

// A change's handler may still refuse it: a key beyond its caller's scopes or lifetime (403). Such
// probes for more privilege were recorded ok, before the handler ran. A change's outcome is its
// answer's, recorded as the handler ends it (forbidden for a 403; revoked, expired or forbidden for
// a key changed while the change waited, RefusedUseError; the error middleware answers even a
// client that left). A client gone before its handler was reached: recorded ok then.
// Returns what to call as the handler is reached.
// A change's body is read after its key is checked (an anonymous caller's never is) and its write
// budget taken, before it takes its org's turn: read after the turn, a body sent slowly, or never
// finished, held one of its org's API_MAX_CONCURRENT_PER_ORG turns for as long as Node waits for
// it (300 s), and two such requests froze the org's API, the revocation of their own key included
// (a review). A key whose body is refused (bad JSON, too large, one sent to a route that takes
// none) is still a use, recorded as allowed, as it was when the route read the body. The use is
// pending while the body is read (a stop waits for it); the caller ends that once it has recorded
// the use, or handed it to recordWhenAnswered.
async function readBody(
  deps: AuthorizeDeps,
  body: RequestHandler,
  req: Request,
  res: Response,
  key: { id: string; orgId: string },
  ip: string,
  outcome: Outcome,
  previousSecret: boolean,
): Promise<() => void> {
  deps.pendingUses?.begin();
  try {
    await new Promise<void>((resolve, reject) => {
      // jsonBody and noBody pass an Error (an AppError, or body-parser's) or nothing.
      void body(req, res, (error?: unknown) => (error instanceof Error ? reject(error) : resolve()));
    });
  } catch (error) {
    deps.recordUse(key.id, key.orgId, ip, outcome, previousSecret);
    deps.pendingUses?.end();
    throw error;
  }
  return () => deps.pendingUses?.end();
}

function recordWhenAnswered(
  deps: AuthorizeDeps,
  req: Request,
  res: Response,
  key: { id: string; orgId: string },
  ip: string,
  previousSecret: boolean,
): () => void {
  deps.pendingUses?.begin();
  let recorded = false;
  let reached = false;
  const record = (outcome: Outcome) => {
    if (recorded) return;
    recorded = true;
    res.off('close', left);
    deps.recordUse(key.id, key.orgId, ip, outcome, previousSecret);
    deps.pendingUses?.end();
  };
  const left = () => {
    if (!reached) record('ok');
  };
  const end = res.end.bind(res);
  res.end = ((...args: Parameters<Response['end']>) => {
    record(res.locals.useOutcome ?? (res.statusCode === 403 ? 'forbidden' : 'ok'));
    return end(...args);
  }) as Response['end'];
  res.once('close', left);
  // Gone while its key was checked: 'close' came before the listener.
  if (res.closed || req.socket.destroyed) record('ok');
  return () => {
    reached = true;
  };
}

// Every 429 says when to come back.
function tooMany(res: Response, waitMs: number, message: string): AppError {
  res.setHeader('Retry-After', String(Math.max(1, Math.ceil(waitMs / 1000))));
  return new AppError('too_many_requests', message);
}

const tooManyInProgress = (res: Response, limit: number) =>
  tooMany(
    res,
    1000,
    `Too many requests of this organization at once (${limit} in progress and ${QUEUED_PER_RUNNING * limit} waiting at most, API_MAX_CONCURRENT_PER_ORG); retry shortly`,
  );

const tooManyWrites = (res: Response, waitMs: number, perMinute: number) =>
  tooMany(res, waitMs, `Too many changes by this organization (${perMinute} a minute, API_WRITES_PER_ORG_MINUTE); retry later`);

const tooManyFailures = (res: Response, waitMs: number) => tooMany(res, waitMs, TOO_MANY_FAILURES_MESSAGE);

// Not the caller's failure, and not counted as one: too many reads of keys from every address
// (AUTH_THROTTLE_MAX_LOOKUPS) run and wait. 429, not 503: a proxy that ejects an instance after a
// run of 5xx (outlier detection) would take every instance out during a flood of made-up ids.
const busyVerifying = (res: Response) =>
  tooMany(res, 1000, 'The server is busy verifying other API keys (AUTH_THROTTLE_MAX_LOOKUPS reads at once); retry after the time in Retry-After');

const NO_LOOKUP = () => {};

// A key the cache answers costs no read, and waits for none: it is served however many wait; so
// is a change route's fresh read of a cached key the cache shows allowed to make the change.
function lookupTurn(deps: AuthorizeDeps, presented: PresentedKey, requirement: Requirement, req: Request) {
  const fresh = requirement.currentSecret === true;
  const allows = (key: ApiKeyRecord) => decide({ outcome: 'ok', key, secret: 'current' }, requirement, req).refusal === undefined;
  return deps.verifier.willRead(presented, { fresh, allows }) ? deps.throttle.beginLookup(presented.keyId, fresh) : NO_LOOKUP;
}

type Proven = Exclude<Verification, { outcome: 'unknown' | 'bad_secret' }>;

// What a request whose secret matched may do: the outcome to record and, unless it is ok, the
// error to answer. A stale secret is recorded as forbidden: a proven use, refused by policy.
function decide(verdict: Proven, requirement: Requirement, req: Request): { outcome: Outcome; refusal?: AppError } {
  const { key } = verdict;
  if (verdict.outcome !== 'ok') return { outcome: verdict.outcome, refusal: new AppError('unauthorized', UNAUTHORIZED_MESSAGE) };
  const missing = requirement.scopes?.find((scope) => !key.scopes.includes(scope));
  if (missing) {
    return { outcome: 'forbidden', refusal: new AppError('forbidden', `This API key lacks the required scope "${missing}"`) };
  }
  if (requirement.orgParam && isOtherOrg(req.params[requirement.orgParam], key.orgId)) {
    return { outcome: 'cross_org', refusal: notFound('Organization') };
  }
  if (requirement.currentSecret && verdict.secret !== 'current') {
    const message =
      'Managing keys and webhooks requires the API key with its current secret; this is its previous secret, valid only for other calls until the rotation grace period ends';
    return { outcome: 'forbidden', refusal: new AppError('stale_secret', message) };
  }
  return { outcome: 'ok' };
}

function isOtherOrg(param: unknown, orgId: string): boolean {
  const parsed = uuid.safeParse(param);
  return parsed.success && parsed.data !== orgId;
}

// Every request that names an existing key id is recorded exactly once here (a change allowed
// here, when it is answered), with its outcome, except one the per-address failure throttle
// refuses (refuseIp, or its verification's wait): refused before its key is looked up, it is
// counted only in auth_refused_by_ip_total; and one refused as too many reads of keys wait
// (beginLookup), counted in the throttle's lookupStats. Recording is an in-memory increment: no await, no
// I/O, nothing that can throw.
export function authorizer(deps: AuthorizeDeps) {
  return (requirement: Requirement = {}, body?: RequestHandler): RequestHandler =>
    async (req, res, next) => {
      const ip = deps.clientAddress(req);
      const ipWaitMs = deps.throttle.refuseIp(ip);
      if (ipWaitMs > 0) throw tooManyFailures(res, ipWaitMs);
      const raw = presentedKey(req);
      const presented = raw ? parsePresentedKey(raw) : undefined;
      if (!presented) throw raw ? failure(deps, res, ip) : new AppError('unauthorized', UNAUTHORIZED_MESSAGE);

      const fresh = requirement.currentSecret === true;
      const begun = deps.throttle.beginVerification(ip, presented.keyId, fresh);
      const verification = begun instanceof Promise ? await begun : begun;
      if (verification.waitMs > 0) throw tooManyFailures(res, verification.waitMs);
      const lookup = lookupTurn(deps, presented, requirement, req);
      const endLookup = lookup instanceof Promise ? await lookup : lookup;
      if (!endLookup) {
        verification.end();
        throw busyVerifying(res);
      }
      // The use is recorded in the same turn as end(): a stop waiting for it resumes after the record.
      deps.pendingUses?.begin();
      let verdict: Awaited<ReturnType<KeyVerifier['verify']>>;
      try {
        verdict = await deps.verifier.verify(presented, { fresh });
      } finally {
        endLookup();
        verification.end();
        deps.pendingUses?.end();
      }
      if (verdict.outcome === 'unknown') throw failure(deps, res, ip);
      if (verdict.outcome === 'bad_secret') {
        deps.recordUse(verdict.key.id, verdict.key.orgId, ip, 'bad_secret');
        throw failure(deps, res, ip, verdict.key.id);
      }

      const { outcome, refusal } = decide(verdict, requirement, req);
      const charged = refusal === undefined && chargesWriteBudget(requirement);
      const writeWaitMs = charged ? (deps.orgWrites?.take(verdict.key.orgId) ?? 0) : 0;
      const overBudget = writeWaitMs > 0 ? tooManyWrites(res, writeWaitMs, deps.orgWrites!.perMinute) : undefined;
      // Known from here, for the request log too (a body refused, a client gone while sending it).
      const allowed = refusal === undefined && overBudget === undefined;
      if (allowed) res.locals.auth = { key: verdict.key, secret: verdict.secret, ip };
      const previousSecret = verdict.secret === 'previous';
      const bodyRead = allowed && body !== undefined ? await readBody(deps, body, req, res, verdict.key, ip, outcome, previousSecret) : undefined;
      // The org's routes read and write its rows (whoami is answered from the key cache). A request
      // refused for too many of its org's waiting, or over its changes' budget, is a proven use
      // refused by policy: forbidden.
      const turn = allowed && requirement.orgParam !== undefined ? turnOf(deps, req, res, verdict.key.orgId) : NO_TURN_NEEDED;
      const recorded = refusal || (turn && !overBudget) ? outcome : 'forbidden';
      const reached = recorded === 'ok' && requirement.currentSecret ? recordWhenAnswered(deps, req, res, verdict.key, ip, previousSecret) : undefined;
      if (!reached) deps.recordUse(verdict.key.id, verdict.key.orgId, ip, recorded, previousSecret);
      bodyRead?.();
      if (refusal) throw refusal;
      if (overBudget) throw overBudget;
      if (!turn) {
        // Refused before it could change anything: its change is not counted.
        if (charged) deps.orgWrites?.giveBack(verdict.key.orgId);
        throw tooManyInProgress(res, deps.orgConcurrency!.limit);
      }
      await turn.started;
      // Its client left as it got its turn: nothing to answer, and the place goes back.
      if (res.closed || req.socket.destroyed) return turn.release();
      // A CSV report gives its turn back once its first page is sent, and writes the rest at the
      // client's pace under a limit of its own (api/usage/usage.routes.ts).
      res.locals.releaseOrgTurn = turn.release;
      reached?.();
      next();
    };
}
