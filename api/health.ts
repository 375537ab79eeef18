import type { RequestHandler } from 'express';
import { z } from 'zod';
import { databaseAnswers, type Db } from '../shared/db';

// Load balancers and probes may ask every instance many times a second, and /healthz needs no key:
// without a cache anyone could turn it into a query per request. One answer serves every probe for
// this long, and probes arriving while the query runs share it.
export const HEALTH_CACHE_MS = 1000;

// 503 answers the same shape: a probe reads the status code, a person the body.
export const healthBody = z.object({ status: z.enum(['ok', 'unavailable']), database: z.enum(['up', 'down']) }).meta({ id: 'Health' });

export function healthHandler(db: Db, now: () => number): RequestHandler {
  let last: { at: number; up: Promise<boolean> } | undefined;
  return async (_req, res) => {
    const at = now();
    if (last === undefined || at - last.at >= HEALTH_CACHE_MS) last = { at, up: databaseAnswers(db) };
    const up = await last.up;
    const body: z.output<typeof healthBody> = up ? { status: 'ok', database: 'up' } : { status: 'unavailable', database: 'down' };
    res.status(up ? 200 : 503).json(body);
  };
}
