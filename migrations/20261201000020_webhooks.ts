import type { Knex } from 'knex';

// Webhooks, their outbox (webhook_deliveries) and the log of every attempt.
//
// The outbox is filled by a trigger on key_events, so a delivery row commits in the same
// transaction as its event whoever inserts the event (the collector's flush, its sweep, a test):
// an event cannot exist without its deliveries, and a crash loses neither. The payload is a
// snapshot, so a delivery does not depend on the event row outliving it (event retention).
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('webhooks', (table) => {
    table.uuid('id').primary().defaultTo(knex.raw('gen_random_uuid()'));
    table.uuid('org_id').notNullable().references('id').inTable('organizations').onDelete('CASCADE');
    table.text('url').notNullable();
    // Event types, or '*' for every type.
    table.specificType('event_types', 'text[]').notNullable();
    // AES-256-GCM of the signing secret under a key derived from KEY_PEPPER (shared/secretBox.ts):
    // the worker needs the plaintext to sign, so it cannot be a one-way hash.
    table.binary('secret_box').notNullable();
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.index(['org_id', 'created_at', 'id'], 'webhooks_org_created_idx');
  });

  await knex.schema.createTable('webhook_deliveries', (table) => {
    table.uuid('id').primary().defaultTo(knex.raw('gen_random_uuid()'));
    table.uuid('webhook_id').notNullable().references('id').inTable('webhooks').onDelete('CASCADE');
    table.uuid('org_id').notNullable();
    // The key event's id (or a ping's own id): the receiver's idempotency key.
    table.uuid('event_id').notNullable();
    table.text('event_type').notNullable();
    table.jsonb('payload').notNullable();
    table.text('status').notNullable().defaultTo('pending');
    table.integer('attempts').notNullable().defaultTo(0);
    // When a pending delivery is due; while an attempt is in flight, when its lease ends.
    table.timestamp('next_attempt_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.timestamp('completed_at', { useTz: true });
    table.unique(['webhook_id', 'event_id']);
    table.index(['webhook_id', 'created_at', 'id'], 'webhook_deliveries_webhook_created_idx');
  });
  await knex.raw(`alter table webhook_deliveries add constraint webhook_deliveries_status_check check (status in ('pending', 'succeeded', 'failed'))`);
  await knex.raw(`create index webhook_deliveries_due_idx on webhook_deliveries (next_attempt_at) where status = 'pending'`);

  await knex.schema.createTable('webhook_delivery_attempts', (table) => {
    table.bigIncrements('id');
    table.uuid('delivery_id').notNullable().references('id').inTable('webhook_deliveries').onDelete('CASCADE');
    table.integer('attempt').notNullable();
    table.timestamp('started_at', { useTz: true }).notNullable();
    table.integer('duration_ms').notNullable();
    table.integer('status_code');
    table.text('error');
    table.boolean('succeeded').notNullable();
    table.index(['delivery_id', 'attempt'], 'webhook_delivery_attempts_delivery_idx');
  });

  await knex.raw(`
    create function keyusage_enqueue_webhook_deliveries() returns trigger language plpgsql as $$
    begin
      insert into webhook_deliveries (webhook_id, org_id, event_id, event_type, payload)
      select w.id, new.org_id, new.id, new.type,
             jsonb_build_object('id', new.id, 'type', new.type, 'orgId', new.org_id, 'keyId', new.key_id,
                                'occurredAt', to_char(new.occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                                'details', new.details)
        from webhooks w
       where w.org_id = new.org_id and (new.type = any (w.event_types) or '*' = any (w.event_types))
      on conflict (webhook_id, event_id) do nothing;
      return null;
    end $$`);
  await knex.raw(`
    create trigger key_events_enqueue_webhooks after insert on key_events
    for each row execute function keyusage_enqueue_webhook_deliveries()`);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop trigger key_events_enqueue_webhooks on key_events');
  await knex.raw('drop function keyusage_enqueue_webhook_deliveries()');
  await knex.schema.dropTable('webhook_delivery_attempts');
  await knex.schema.dropTable('webhook_deliveries');
  await knex.schema.dropTable('webhooks');
}
