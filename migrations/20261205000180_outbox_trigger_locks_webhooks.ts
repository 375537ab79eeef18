import type { Knex } from 'knex';
import { enqueueWhenSubscribed } from './20261201000090_outbox_trigger_skips_orgs_without_webhooks';

// The outbox trigger (20261201000090) read the org's webhooks without a lock. A webhook whose
// DELETE had started but not committed was still read, and the delivery's foreign key check waited
// for the DELETE, then failed (23503) once it committed. The flush takes any 23xxx for bad data:
// a key alone in its batch was quarantined at once, its uses set aside and its event lost.
// FOR KEY SHARE takes, while reading, the lock the foreign key check takes: it waits for the
// DELETE the same way, then skips the deleted webhook, and the event commits without its delivery.
// It blocks nothing the check did not (an update of a webhook's other columns still goes ahead).
// On Citus the trigger runs on the event's shard and reads the org's webhooks on the same shard,
// where a row lock is allowed (checked on a cluster distributed before this migration).

export async function up(knex: Knex): Promise<void> {
  await knex.raw(enqueueWhenSubscribed('for key share of w'));
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw(enqueueWhenSubscribed());
}
