import type { Knex } from 'knex';

// Who changed which key, when, from where (api/audit/audit.repository.ts). Append-only: the
// application has no update or delete path, and these triggers refuse both to anyone, the app role
// included. Two exceptions: deleting an organization takes its rows (ON DELETE CASCADE), which the
// delete trigger tells apart by the organization being gone already; and erasing an entry's IP
// address (IP_RETENTION_DAYS, `cli key erase-ips`), the one update allowed: ip to null, nothing
// else. No foreign key to api_keys: the entries outlive nothing but their organization, and
// `details` never holds key material (names, scopes, expiry, grace period).
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('audit_log', (table) => {
    table.bigIncrements('id').primary();
    table.uuid('org_id').notNullable().references('id').inTable('organizations').onDelete('CASCADE');
    table.timestamp('occurred_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    table.text('actor_type').notNullable().checkIn(['key', 'cli'], 'audit_log_actor_type_check');
    table.uuid('actor_key_id');
    table.text('actor_display_prefix');
    table.text('action').notNullable();
    table.uuid('target_key_id');
    table.jsonb('details').notNullable().defaultTo('{}');
    table.text('ip');
    table.index(['org_id', 'id'], 'audit_log_org_id_idx');
  });
  await knex.raw(`
    create function audit_log_append_only() returns trigger language plpgsql as $$
    begin
      if tg_op = 'DELETE' and not exists (select 1 from organizations where id = old.org_id) then
        return old;
      end if;
      if tg_op = 'UPDATE' and new.ip is null and to_jsonb(new) - 'ip' = to_jsonb(old) - 'ip' then
        return new;
      end if;
      raise exception 'audit_log is append-only: % refused', tg_op using errcode = 'insufficient_privilege';
    end $$`);
  await knex.raw(`create trigger audit_log_append_only before update or delete on audit_log for each row execute function audit_log_append_only()`);
  await knex.raw(`create trigger audit_log_no_truncate before truncate on audit_log for each statement execute function audit_log_append_only()`);
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('audit_log');
  await knex.raw('drop function audit_log_append_only()');
}
