import type { Knex } from 'knex';

// What event detection needs beside key_events (created empty by 20261201000002):
// - api_keys.expected_networks: optional CIDRs a key is expected to be used from
//   (key.outside_networks); null means "anywhere", so no event.
// - organizations.dormancy_days: the per-org threshold of key.dormant.
// - api_key_ip_history: a key's longer memory of the networks it was used from (key.new_ip),
//   one row per /24 (IPv4) or /64 (IPv6), bounded per key by the collector's prune.
// api_keys is touched last, after the backfill: its lock is held until the commit, and the previous
// version's API serves beside the migration. Adding the column (ACCESS EXCLUSIVE) first would stop
// every key read for the backfill's length, and the history's foreign key (SHARE ROW EXCLUSIVE)
// every key create, rotation and revocation.
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('api_key_ip_history', (table) => {
    table.uuid('key_id').notNullable();
    table.specificType('prefix', 'cidr').notNullable();
    table.text('first_ip').notNullable();
    table.timestamp('first_seen', { useTz: true }).notNullable();
    table.timestamp('last_seen', { useTz: true }).notNullable();
    table.primary(['key_id', 'prefix']);
    table.index(['key_id', 'last_seen'], 'api_key_ip_history_key_seen_idx');
  });
  // Keys used before this migration already "know" their recent addresses: without this their
  // first flush after the deploy would report every current network as new.
  await knex.raw(`
    insert into api_key_ip_history (key_id, prefix, first_ip, first_seen, last_seen)
    select key_id, prefix, (array_agg(ip order by first_seen))[1], min(first_seen), max(last_seen)
      from (select key_id, ip, first_seen, last_seen,
                   network(set_masklen(cast(ip as inet), case family(cast(ip as inet)) when 4 then 24 else 64 end)) as prefix
              from api_key_recent_ips) r
     group by key_id, prefix`);
  await knex.schema.alterTable('key_events', (table) => {
    table.index(['occurred_at'], 'key_events_occurred_at_idx');
  });
  await knex.schema.alterTable('organizations', (table) => {
    table.integer('dormancy_days').notNullable().defaultTo(30);
  });
  await knex.schema.alterTable('api_keys', (table) => {
    table.specificType('expected_networks', 'cidr[]');
  });
  // NOT VALID: checking the backfilled rows would read the whole history with api_keys locked, and
  // their keys come from api_key_recent_ips, whose own foreign key stands (only a key deleted by SQL
  // during the backfill could leave rows, which IP retention erases; the API never deletes keys).
  // Rows written from now on are checked.
  await knex.raw(`alter table api_key_ip_history add constraint api_key_ip_history_key_id_foreign
    foreign key (key_id) references api_keys (id) on delete cascade not valid`);
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.alterTable('key_events', (table) => {
    table.dropIndex(['occurred_at'], 'key_events_occurred_at_idx');
  });
  await knex.schema.dropTable('api_key_ip_history');
  await knex.schema.alterTable('organizations', (table) => {
    table.dropColumn('dormancy_days');
  });
  await knex.schema.alterTable('api_keys', (table) => {
    table.dropColumn('expected_networks');
  });
}
