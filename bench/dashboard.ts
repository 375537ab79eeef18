import { performance } from 'node:perf_hooks';
import { openChromium } from '../harness/browser';
import { HEADINGS } from './headings';
import type { BenchContext } from './lib/context';
import { createCallableKey, createOrg } from './lib/database';
import { startBenchServer } from './lib/benchServer';
import { stopChild } from '../harness/processes';
import { fmt, type BenchResult } from './lib/report';
import { summarize } from './lib/stats';
import { seedTenants } from './lib/usageSeed';

// Benchmark 7. The dashboard opened by a signed-in person (the key already in the tab's
// sessionStorage) on an org of 10 k keys with the endpoint benchmark's density, in headless
// Chromium with a cold cache each run: the time from navigation to the first page of the table
// drawn, and every byte the page fetched to get there (files and API answers, uncompressed).

const FULL = { keys: 10_000, runs: 7 };
const QUICK = { keys: 500, runs: 2 };

export async function runDashboard(ctx: BenchContext): Promise<BenchResult> {
  const plan = ctx.quick ? QUICK : FULL;
  const orgId = await createOrg(ctx.db, 'bench-dashboard');
  const admin = await createCallableKey(ctx.db, orgId, ctx.pepper, 'bench-dashboard-admin', ['keys:read', 'keys:write']);
  await seedTenants(ctx.db, [orgId], plan.keys - 1, { prefix: 'endpoint-', budgetMs: 300_000, log: ctx.log });
  const server = await startBenchServer('off', { DATABASE_URL: ctx.databaseUrl, KEY_PEPPER: ctx.pepper, KEY_CACHE_TTL_MS: '60000' });
  const times: number[] = [];
  const weights: number[] = [];
  try {
    for (let run = 0; run < plan.runs; run++) {
      const { context, close } = await openChromium();
      try {
        // The key reaches the page as a returning tab holds it: in sessionStorage, not in a URL.
        await context.addInitScript({ content: `sessionStorage.setItem('keyusage.apiKey', ${JSON.stringify(admin.plaintext)})` });
        const page = await context.newPage();
        const sizes: Array<Promise<number>> = [];
        page.on('response', (response) =>
          sizes.push(
            response.body().then(
              (body) => body.length,
              () => 0,
            ),
          ),
        );
        const started = performance.now();
        await page.goto(`${server.url}/`);
        await page.locator('#keys-table tbody tr').nth(49).waitFor();
        times.push(performance.now() - started);
        weights.push((await Promise.all(sizes)).reduce((sum, n) => sum + n, 0));
      } finally {
        await close();
      }
      ctx.log(`dashboard: run ${run + 1}/${plan.runs}: ${fmt.ms(times[run], 0)}, ${fmt.int(weights[run])} bytes`);
    }
  } finally {
    await stopChild(server.child);
  }
  const time = summarize(times);
  const weight = summarize(weights);
  return {
    heading: HEADINGS.dashboard,
    tables: [
      {
        title: `Dashboard, first page of the table (50 rows) for an org of ${fmt.int(plan.keys)} keys; ${plan.runs} cold runs, a fresh Chromium profile each`,
        columns: ['measure', 'runs', 'median', 'worst'],
        rows: [
          ['navigation → 50th row drawn', time.n, fmt.ms(time.p50, 0), fmt.ms(time.max, 0)],
          ['bytes fetched (HTML, CSS, JS, API JSON; uncompressed)', weight.n, fmt.int(weight.p50), fmt.int(weight.max)],
        ],
      },
    ],
    notes: [`Target: the first page visible in under 1 s: ${fmt.verdict(time.max < 1000)} (worst ${fmt.ms(time.max, 0)}).`],
    raw: { plan, times, weights },
  };
}
