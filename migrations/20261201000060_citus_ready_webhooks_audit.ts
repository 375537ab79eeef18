import type { Knex } from 'knex';

// Citus-ready, part 2 (docs/scaling.md): the tables 20261201000040 left out. Each carries org_id,
// and its primary key, unique constraints and foreign keys between distributed tables include it
// (Citus requires the distribution column in all three), so `citus:distribute` can lay them out
// by org_id, co-located with the usage tables:
// - webhooks, webhook_deliveries: (org_id, id); a delivery's webhook is (org_id, webhook_id), and
//   the outbox trigger's ON CONFLICT target becomes (org_id, webhook_id, event_id).
// - webhook_delivery_attempts: gains org_id (from its delivery); (org_id, id).
// - audit_log: (org_id, id), which also serves the per-org listing (the old (org_id, id) index goes).
// - api_key_ip_history: gains org_id (from its key); (org_id, key_id, prefix).
//
// Rolling deploy: processes of the previous version keep running against this schema until they
// are replaced. They insert attempts and IP history without org_id, and upsert the history ON
// CONFLICT (key_id, prefix). So, for now, a trigger fills a missing org_id (only when it is
// missing: WHEN is checked without calling the function, so the new version's inserts pay
// nothing), and the history keeps a unique index on (key_id, prefix). Both go once no previous
// process runs; `citus:distribute` drops them itself (moving to Citus stops the collectors) —
// LEGACY_FOR_ROLLING_DEPLOY in scripts/citus/distribute.ts.

async function replacePrimaryKey(knex: Knex, table: string, columns: string[]) {
  await knex.raw(`alter table ?? drop constraint ??`, [table, `${table}_pkey`]);
  await knex.raw(`alter table ?? add constraint ?? primary key (${columns.map(() => '??').join(', ')})`, [table, `${table}_pkey`, ...columns]);
}

// The outbox trigger of 20261201000020 with the new conflict target.
export const enqueueDeliveries = (conflictTarget: string) => `
  create or replace function keyusage_enqueue_webhook_deliveries() returns trigger language plpgsql as $$
  begin
    insert into webhook_deliveries (webhook_id, org_id, event_id, event_type, payload)
    select w.id, new.org_id, new.id, new.type,
           jsonb_build_object('id', new.id, 'type', new.type, 'orgId', new.org_id, 'keyId', new.key_id,
                              'occurredAt', to_char(new.occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                              'details', new.details)
      from webhooks w
     where w.org_id = new.org_id and (new.type = any (w.event_types) or '*' = any (w.event_types))
    on conflict (${conflictTarget}) do nothing;
    return null;
  end $$`;

// table gains a not-null org_id, backfilled from `parent` (joined on `via`), and a trigger that
// fills it for writers of the previous version.
async function addOrgId(knex: Knex, table: string, parent: string, via: string) {
  await knex.schema.alterTable(table, (t) => t.uuid('org_id'));
  await knex.raw(`update ?? c set org_id = p.org_id from ?? p where p.id = c.??`, [table, parent, via]);
  await knex.schema.alterTable(table, (t) => t.dropNullable('org_id'));
  await knex.raw(`
    create function ${table}_fill_org_id() returns trigger language plpgsql as $$
    begin
      select org_id into new.org_id from ${parent} where id = new.${via};
      return new;
    end $$`);
  await knex.raw(
    `create trigger ${table}_fill_org_id before insert on ${table} for each row when (new.org_id is null) execute function ${table}_fill_org_id()`,
  );
}

async function dropOrgId(knex: Knex, table: string) {
  await knex.raw(`drop trigger if exists ${table}_fill_org_id on ${table}`);
  await knex.raw(`drop function if exists ${table}_fill_org_id()`);
  await knex.schema.alterTable(table, (t) => t.dropColumn('org_id'));
}

export async function up(knex: Knex): Promise<void> {
  await addOrgId(knex, 'webhook_delivery_attempts', 'webhook_deliveries', 'delivery_id');
  await addOrgId(knex, 'api_key_ip_history', 'api_keys', 'key_id');

  // Foreign keys first: they depend on the primary keys being replaced.
  await knex.schema.alterTable('webhook_delivery_attempts', (t) => t.dropForeign(['delivery_id']));
  await knex.schema.alterTable('webhook_deliveries', (t) => {
    t.dropForeign(['webhook_id']);
    t.dropUnique(['webhook_id', 'event_id']);
  });
  await replacePrimaryKey(knex, 'webhooks', ['org_id', 'id']);
  await replacePrimaryKey(knex, 'webhook_deliveries', ['org_id', 'id']);
  await replacePrimaryKey(knex, 'webhook_delivery_attempts', ['org_id', 'id']);
  await knex.schema.alterTable('webhook_deliveries', (t) => {
    t.unique(['org_id', 'webhook_id', 'event_id']);
    t.foreign(['org_id', 'webhook_id']).references(['org_id', 'id']).inTable('webhooks').onDelete('CASCADE');
  });
  await knex.schema.alterTable('webhook_delivery_attempts', (t) =>
    t.foreign(['org_id', 'delivery_id']).references(['org_id', 'id']).inTable('webhook_deliveries').onDelete('CASCADE'),
  );
  await knex.raw(enqueueDeliveries('org_id, webhook_id, event_id'));

  await replacePrimaryKey(knex, 'audit_log', ['org_id', 'id']);
  await knex.raw('drop index audit_log_org_id_idx');

  await knex.raw('create unique index api_key_ip_history_key_prefix_legacy on api_key_ip_history (key_id, prefix)');
  await replacePrimaryKey(knex, 'api_key_ip_history', ['org_id', 'key_id', 'prefix']);
}

export async function down(knex: Knex): Promise<void> {
  await replacePrimaryKey(knex, 'api_key_ip_history', ['key_id', 'prefix']);
  await knex.raw('drop index if exists api_key_ip_history_key_prefix_legacy');

  await knex.raw('create index audit_log_org_id_idx on audit_log (org_id, id)');
  await replacePrimaryKey(knex, 'audit_log', ['id']);

  await knex.schema.alterTable('webhook_delivery_attempts', (t) => t.dropForeign(['org_id', 'delivery_id']));
  await knex.schema.alterTable('webhook_deliveries', (t) => {
    t.dropForeign(['org_id', 'webhook_id']);
    t.dropUnique(['org_id', 'webhook_id', 'event_id']);
  });
  await replacePrimaryKey(knex, 'webhook_delivery_attempts', ['id']);
  await replacePrimaryKey(knex, 'webhook_deliveries', ['id']);
  await replacePrimaryKey(knex, 'webhooks', ['id']);
  await knex.schema.alterTable('webhook_deliveries', (t) => {
    t.unique(['webhook_id', 'event_id']);
    t.foreign('webhook_id').references('id').inTable('webhooks').onDelete('CASCADE');
  });
  await knex.schema.alterTable('webhook_delivery_attempts', (t) => t.foreign('delivery_id').references('id').inTable('webhook_deliveries').onDelete('CASCADE'));
  await knex.raw(enqueueDeliveries('webhook_id, event_id'));

  await dropOrgId(knex, 'api_key_ip_history');
  await dropOrgId(knex, 'webhook_delivery_attempts');
}
