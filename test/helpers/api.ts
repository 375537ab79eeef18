import http from 'node:http';
import type { Test } from 'tap';
import { createApp } from '../../api/app';
import type { RecordUse } from '../../api/auth/authorize';
import { insertOrganization } from '../../api/orgs/orgs.repository';
import { loadConfig } from '../../shared/config';
import type { Db } from '../../shared/db';
import { closeServer, listen } from '../../shared/process';
import { freshDatabase } from './database';
import { capturingLogger } from './logLines';
import type { Outcome } from '../../shared/usageWire';
import type { Lookup } from '../../shared/webhookTarget';

export interface RecordedUse {
  keyId: string;
  orgId: string;
  ip: string;
  outcome: Outcome;
  /** Present, true, only for a use of the key's previous secret. */
  previousSecret?: true;
}

export interface TestResponse {
  status: number;
  headers: Headers;
  body: any;
  text: string;
}

// Collects every log line and response body (but the one-time key reveals) a test produces, so a test can assert that no key
// material ever left the process.
export class Evidence {
  readonly logLines: string[] = [];
  readonly bodies: string[] = [];
  readonly datagrams: string[] = [];

  leaksOf(secrets: Iterable<string>): string[] {
    const everything = [...this.logLines, ...this.bodies, ...this.datagrams];
    return [...secrets].filter((secret) => everything.some((text) => text.includes(secret)));
  }
}

export interface TestApiOptions {
  env?: Record<string, string>;
  now?: () => number;
  /** The cache's and throttle's clock (AppDeps.elapsed): `now` when a test gives one, so moving it ages them too. */
  elapsed?: () => number;
  recordUse?: RecordUse;
  /** The webhook URL checks' resolver; the system's unless given. */
  webhookLookup?: Lookup;
  /** False: an API started with USAGE_TRACKING=false (its uses are still captured here). */
  usageTracking?: boolean;
}

export async function startTestApi(t: Test, db: Db, options: TestApiOptions = {}) {
  const evidence = new Evidence();
  const uses: RecordedUse[] = [];
  // Tests send many failures from 127.0.0.1 to count outcomes; the throttle (on by default) would
  // answer some of them 429. test/authThrottle.test.ts turns it on.
  const config = loadConfig({
    NODE_ENV: 'test',
    LOG_LEVEL: 'info',
    AUTH_THROTTLE_MAX_FAILURES_PER_IP: '0',
    AUTH_THROTTLE_MAX_FAILURES_PER_KEY: '0',
    ...options.env,
  });
  const logger = capturingLogger(evidence.logLines, 'api-test', config.logLevel);
  const recordUse: RecordUse =
    options.recordUse ??
    ((keyId, orgId, ip, outcome, previousSecret) => uses.push(previousSecret ? { keyId, orgId, ip, outcome, previousSecret } : { keyId, orgId, ip, outcome }));
  // Uses authorized and not recorded yet (a change's, until it is answered): the API's stop waits for them.
  let pendingUses = 0;
  const { app, services, verifier, throttle, orgTurns } = createApp({
    db,
    logger,
    config: config.api,
    webhooks: { ...config.webhooks, lookup: options.webhookLookup },
    privacy: config.privacy,
    recordUse,
    pendingUses: { begin: () => void (pendingUses += 1), end: () => void (pendingUses -= 1) },
    usageTracking: options.usageTracking,
    now: options.now,
    elapsed: options.elapsed ?? options.now,
  });
  const server = http.createServer(app);
  const port = await listen(server, '127.0.0.1', 0, 'PORT');
  t.teardown(() => closeServer(server));
  const baseUrl = `http://127.0.0.1:${port}`;

  async function request(
    method: string,
    path: string,
    init: { key?: string; header?: 'bearer' | 'x-api-key'; body?: unknown; headers?: Record<string, string> } = {},
  ): Promise<TestResponse> {
    const headers: Record<string, string> = { ...init.headers };
    if (init.key !== undefined) {
      if (init.header === 'x-api-key') headers['x-api-key'] = init.key;
      else headers.authorization = `Bearer ${init.key}`;
    }
    if (init.body !== undefined) headers['content-type'] = 'application/json';
    const response = await fetch(baseUrl + path, {
      method,
      headers,
      body: init.body === undefined ? undefined : typeof init.body === 'string' ? init.body : JSON.stringify(init.body),
    });
    const text = await response.text();
    // The create and rotate responses are the one place a plaintext key may appear, and a
    // webhook's create and rotate-secret responses the one place its signing secret may.
    const reveal = method === 'POST' && response.ok && /\/(api-keys(\/[^/]+\/rotate)?|webhooks(\/[^/]+\/rotate-secret)?)$/.test(path);
    if (!reveal) evidence.bodies.push(text);
    let body: any;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    return { status: response.status, headers: response.headers, body, text };
  }

  // GET from another local address (the whole of 127.0.0.0/8 is loopback on Linux), so the API
  // sees a second client address without TRUST_PROXY.
  function getFrom(localAddress: string, path: string, key: string): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path, localAddress, headers: { authorization: `Bearer ${key}` } }, (response) => {
        let text = '';
        response.setEncoding('utf8').on('data', (chunk) => (text += chunk));
        response.on('end', () => {
          evidence.bodies.push(text);
          resolve({ status: response.statusCode ?? 0, text });
        });
      });
      req.on('error', reject);
    });
  }

  return { app, baseUrl, port, request, getFrom, evidence, uses, pendingUses: () => pendingUses, services, verifier, throttle, orgTurns, config };
}

// An org and a key with every scope, created through the service as the CLI does.
export async function seedOrg(api: Awaited<ReturnType<typeof startTestApi>>, db: Db, name = 'acme') {
  const org = await insertOrganization(db, name);
  const admin = await api.services.apiKeys.create(org.id, { name: 'admin', scopes: ['keys:read', 'keys:write'], expiresAt: null });
  return { org, adminKey: admin.plaintext, adminKeyId: admin.key.id };
}

/** A fresh database and API on a clock the test moves (`clock.now`), with two orgs, acme and globex, each with an admin key. */
export async function twoOrgWorld(t: Test, start: number) {
  const { db } = await freshDatabase(t);
  const clock = { now: start };
  const api = await startTestApi(t, db, { now: () => clock.now });
  const acme = await seedOrg(api, db, 'acme');
  const globex = await seedOrg(api, db, 'globex');
  return { db, api, clock, acme, globex };
}

/**
 * Counts the key verifications the API completes from now on: a change's key is checked before its
 * body is read, and before it takes its org's turn (api/auth/authorize.ts, readBody), so a test
 * that holds a body back waits for this to know the key was checked.
 */
export function verificationsOf(api: Pick<Awaited<ReturnType<typeof startTestApi>>, 'verifier'>): () => number {
  let verified = 0;
  const verify = api.verifier.verify.bind(api.verifier);
  api.verifier.verify = async (...args) => {
    const verdict = await verify(...args);
    verified += 1;
    return verdict;
  };
  return () => verified;
}
