import type { Knex } from 'knex';
import { enqueueDeliveries } from './20261201000060_citus_ready_webhooks_audit';

// The outbox trigger (20261201000020, 060) runs once per inserted key event. Its INSERT … SELECT
// from webhooks costs the same whether or not a webhook matches: an INSERT with ON CONFLICT is
// started and ended per row, opening webhook_deliveries and its indexes, so 100 k key.new_ip
// events of an org without any webhook spent ≈ 2.3 s in it (docs/benchmarks.md §4). It now asks
// first whether the org has a webhook for this type, one index lookup on webhooks' primary key
// (org_id, id), and inserts only then. Still a row trigger: it runs on the event's shard on
// Citus, where a statement-level trigger is refused, and every writer of key_events (the flush,
// the sweep, an operator) keeps getting its deliveries in the same transaction.

const MATCHING_WEBHOOKS = `from webhooks w where w.org_id = new.org_id and (new.type = any (w.event_types) or '*' = any (w.event_types))`;

/** This migration's trigger function; 20261205000180 gives its INSERT … SELECT a `rowLock`. */
export const enqueueWhenSubscribed = (rowLock = '') => `
  create or replace function keyusage_enqueue_webhook_deliveries() returns trigger language plpgsql as $$
  begin
    if exists (select 1 ${MATCHING_WEBHOOKS}) then
      insert into webhook_deliveries (webhook_id, org_id, event_id, event_type, payload)
      select w.id, new.org_id, new.id, new.type,
             jsonb_build_object('id', new.id, 'type', new.type, 'orgId', new.org_id, 'keyId', new.key_id,
                                'occurredAt', to_char(new.occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                                'details', new.details)
        ${MATCHING_WEBHOOKS} ${rowLock}
      on conflict (org_id, webhook_id, event_id) do nothing;
    end if;
    return null;
  end $$`;

/** The trigger function of 20261201000060: down(), and the benchmark's "outbox-insert-always" variant. */
export const ENQUEUE_ALWAYS = enqueueDeliveries('org_id, webhook_id, event_id');

export async function up(knex: Knex): Promise<void> {
  await knex.raw(enqueueWhenSubscribed());
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw(ENQUEUE_ALWAYS);
}
