import type { Knex } from 'knex';
import { createIndexConcurrently, withoutLockTimeout } from './20261203000120_api_keys_created_at_index';

// The webhook worker finds the orgs with due deliveries, then claims each org's oldest
// (collector/webhookStore.ts). Both read webhook_deliveries_due_idx (next_attempt_at) before: the
// first read every due delivery of every org on each poll, the second walked past every other
// org's due deliveries to reach this org's, so one org's backlog (a receiver that never answers,
// 100,000 keys' events × 20 webhooks) made every poll read all of it. With (org_id,
// next_attempt_at) over the pending ones, whether an org has a due delivery is one probe, and an
// org's claim reads the rows it claims. The index over next_attempt_at alone goes: nothing else
// reads it, and the planner kept choosing it for an org's claim, filtering out the rows of other
// orgs one by one (it cannot know that one org's deliveries are the oldest).
//
// Built CONCURRENTLY, outside a transaction, as 20261203000120: the previous version's collector
// keeps inserting and claiming deliveries while the migration runs.
export const config = { transaction: false };

/** The index this migration builds, and the one it drops (the benchmark's "before" builds it again). */
export const DUE_PER_ORG = { name: 'webhook_deliveries_org_due_idx', on: `webhook_deliveries (org_id, next_attempt_at) where status = 'pending'` };
export const DUE_ALONE = { name: 'webhook_deliveries_due_idx', on: `webhook_deliveries (next_attempt_at) where status = 'pending'` };

export async function up(knex: Knex): Promise<void> {
  await createIndexConcurrently(knex, DUE_PER_ORG.name, DUE_PER_ORG.on);
  await withoutLockTimeout(knex, [knex.raw('drop index concurrently if exists ??', [DUE_ALONE.name]).toQuery()]);
}

export async function down(knex: Knex): Promise<void> {
  await createIndexConcurrently(knex, DUE_ALONE.name, DUE_ALONE.on);
  await withoutLockTimeout(knex, [knex.raw('drop index concurrently if exists ??', [DUE_PER_ORG.name]).toQuery()]);
}
