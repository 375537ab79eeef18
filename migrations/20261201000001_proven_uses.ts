import type { Knex } from 'knex';

const OUTCOME_COUNTS = ['ok_count', 'forbidden_count', 'expired_count', 'revoked_count', 'bad_secret_count', 'cross_org_count'];

// "Used" now means the secret was proven. request_count, last_used_at/ip, the recent IPs and the
// hourly request_count count only outcomes whose secret matched; a wrong secret is a failed
// attempt, kept apart (bad_secret_count, last_failed_*, api_key_failed_ips). Rows written before
// this migration cannot be split exactly: totals lose their bad_secret part (known per key),
// hourly buckets keep their mixed total in request_count with outcome columns of 0, and a
// last_used_at that a wrong secret may have moved is kept unless the key has no proven use.
export async function up(knex: Knex): Promise<void> {
  // Counters saturate at the bigint maximum instead of failing the whole flush: a forged or
  // runaway count must never make "bigint out of range" stall usage for every org. An SQL
  // function of one expression is inlined by the planner, so it costs what the bare CASE costs.
  await knex.raw(`
    create function keyusage_add(a bigint, b bigint) returns bigint
      language sql immutable parallel safe
      as $$ select case when b > 9223372036854775807 - a then 9223372036854775807 else a + b end $$`);

  await knex.schema.alterTable('api_key_usage', (table) => {
    table.timestamp('last_used_at', { useTz: true }).nullable().alter();
    table.text('last_used_ip').nullable().alter();
    table.timestamp('last_failed_at', { useTz: true });
    table.text('last_failed_ip');
    table.timestamp('last_revoked_use_at', { useTz: true });
    table.timestamp('last_expired_use_at', { useTz: true });
  });
  await knex.raw(`update api_key_usage set request_count = greatest(request_count - bad_secret_count, 0)`);
  await knex.raw(`update api_key_usage set last_used_at = null, last_used_ip = null where request_count = 0`);

  await knex.schema.alterTable('api_key_usage_hourly', (table) => {
    for (const column of OUTCOME_COUNTS) table.bigInteger(column).notNullable().defaultTo(0);
  });

  await knex.schema.createTable('api_key_failed_ips', (table) => {
    table.uuid('key_id').notNullable().references('id').inTable('api_keys').onDelete('CASCADE');
    table.text('ip').notNullable();
    table.timestamp('first_seen', { useTz: true }).notNullable();
    table.timestamp('last_seen', { useTz: true }).notNullable();
    table.bigInteger('attempt_count').notNullable();
    table.primary(['key_id', 'ip']);
  });
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('api_key_failed_ips');
  await knex.schema.alterTable('api_key_usage_hourly', (table) => {
    for (const column of OUTCOME_COUNTS) table.dropColumn(column);
  });
  await knex.raw(`update api_key_usage set request_count = keyusage_add(request_count, bad_secret_count)`);
  // 0.1.0 required an address: one erased since (IP retention, `cli key erase-ips`) is written as
  // 0.0.0.0, 0.1.0's own stand-in for none, and a key's failed address is its last one only when
  // it was never used (0.1.0 counted failures as uses).
  await knex.raw(`update api_key_usage
    set last_used_ip = coalesce(case when last_used_at is null then last_failed_ip else last_used_ip end, '0.0.0.0'),
        last_used_at = coalesce(last_used_at, last_failed_at)`);
  await knex.raw(`delete from api_key_usage where last_used_at is null`);
  await knex.schema.alterTable('api_key_usage', (table) => {
    table.dropColumn('last_failed_at');
    table.dropColumn('last_failed_ip');
    table.dropColumn('last_revoked_use_at');
    table.dropColumn('last_expired_use_at');
    table.timestamp('last_used_at', { useTz: true }).notNullable().alter();
    table.text('last_used_ip').notNullable().alter();
  });
  await knex.raw('drop function keyusage_add(bigint, bigint)');
}
