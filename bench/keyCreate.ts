import { performance } from 'node:perf_hooks';
import { createApiKeysService } from '../api/keys/apiKeys.service';
import { loadConfig } from '../shared/config';
import { createKeysInOrgs, openBenchDatabase } from './lib/database';
import { interleavedSchedule, median } from './lib/stats';

// What KEYS_MAX_PER_ORG costs a key's create: the per-org lock and the count of the org's keys, up
// to the cap, beside the insert and its audit entry. An org holding N keys (default 100,000, the
// default cap less the keys this run creates) in a throwaway PostgreSQL; rounds alternate the
// create with the cap and without it (the CLI's), each round R creates one after the other.
// Run: npx tsx bench/keyCreate.ts [keys in the org] [rounds] [creates a round]
const [keys = '99000', rounds = '5', creates = '100'] = process.argv.slice(2);

async function run() {
  const bench = await openBenchDatabase(() => undefined);
  try {
    const { orgIds } = await createKeysInOrgs(bench.db, Number(keys), 1, 'cap');
    await bench.db.raw('vacuum analyze api_keys');
    const base = { db: bench.db, pepper: loadConfig({ NODE_ENV: 'test' }).api.keyPepper, defaultGraceSeconds: 0, now: Date.now };
    const arms = { capped: createApiKeysService({ ...base, maxKeysPerOrg: 100_000 }), uncapped: createApiKeysService(base) };
    const perCreateMs: Record<keyof typeof arms, number[]> = { capped: [], uncapped: [] };
    for (const order of interleavedSchedule(['capped', 'uncapped'] as const, Number(rounds))) {
      for (const arm of order) {
        const started = performance.now();
        for (let i = 0; i < Number(creates); i++) await arms[arm].create(orgIds[0], { name: `bench-${arm}`, scopes: ['keys:read'], expiresAt: null });
        perCreateMs[arm].push((performance.now() - started) / Number(creates));
      }
    }
    const figures = (values: number[]) => ({
      roundsMs: values.map((v) => +v.toFixed(2)),
      medianMs: +median(values).toFixed(2),
      worstMs: +Math.max(...values).toFixed(2),
    });
    console.log(JSON.stringify({ keysInOrg: Number(keys), capped: figures(perCreateMs.capped), uncapped: figures(perCreateMs.uncapped) }));
  } finally {
    await bench.close();
  }
}

run().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
