import type { RequestHandler } from 'express';
import { databaseAnswers, type Db } from '../shared/db';

// Load balancers and probes may ask every instance many times a second, and /healthz needs no key:
// without a cache anyone could turn it into a query per request. One answer serves every probe for
// this long, and probes arriving while the query runs share it.
export const HEALTH_CACHE_MS = 1000;

export function healthHandler(db: Db, now: () => number): RequestHandler {
  let last: { at: number; up: Promise<boolean> } | undefined;
  return async (_req, res) => {
    const at = now();
    if (last === undefined || at - last.at >= HEALTH_CACHE_MS) last = { at, up: databaseAnswers(db) };
    const up = await last.up;
    res.status(up ? 200 : 503).json({ status: up ? 'ok' : 'unavailable', database: up ? 'up' : 'down' });
  };
}
