import type { Knex } from 'knex';

// An audit entry's id was its place in one sequence shared by every org, and the API showed it: an
// org reading its own log could count the key and webhook changes of every other org between two
// of its entries (a side channel across tenants). Each entry gets `seq`, its place in its own org's
// log (1, 2, 3, …, no gaps: a writer numbers under the org's audit lock, and a rollback gives its
// numbers back), which the API shows as the id and pages by; `id` stays the row's key, unseen.
//
// Existing entries are numbered in id order, which is their org's commit order (the audit lock).
// The append-only trigger is lifted for that one statement, in this transaction.
//
// A process of the previous version (a rolling deploy) inserts without seq: a trigger numbers its
// rows the same way, under the same lock (both versions take it). On Citus it runs on the org's
// shard, as the append-only trigger does (checked on a cluster distributed before this migration).
const FILL_SEQ_TRIGGER = 'audit_log_fill_seq';

export async function up(knex: Knex): Promise<void> {
  await sequentialOnCitus(knex);
  await knex.raw('alter table audit_log add column seq bigint');
  await knex.raw('alter table audit_log disable trigger audit_log_append_only');
  await knex.raw(`
    update audit_log a set seq = numbered.seq
      from (select org_id, id, row_number() over (partition by org_id order by id) as seq from audit_log) numbered
     where a.org_id = numbered.org_id and a.id = numbered.id`);
  await knex.raw('alter table audit_log enable trigger audit_log_append_only');
  await knex.raw('alter table audit_log alter column seq set not null');
  await knex.raw('create unique index audit_log_org_seq_idx on audit_log (org_id, seq)');
  await knex.raw(`
    create function ${FILL_SEQ_TRIGGER}() returns trigger language plpgsql as $$
    begin
      new.seq := coalesce((select max(seq) from audit_log where org_id = new.org_id), 0) + 1;
      return new;
    end $$`);
  await knex.raw(`create trigger ${FILL_SEQ_TRIGGER} before insert on audit_log for each row when (new.seq is null) execute function ${FILL_SEQ_TRIGGER}()`);
}

// On a Citus cluster where audit_log is already distributed (an upgrade), the function command
// after the column's DDL and the numbering on every shard is refused unless the transaction uses
// one connection per node. On plain PostgreSQL the setting is an unused placeholder.
const sequentialOnCitus = (knex: Knex) => knex.raw(`set local citus.multi_shard_modify_mode to 'sequential'`);

export async function down(knex: Knex): Promise<void> {
  await sequentialOnCitus(knex);
  await knex.raw(`drop trigger if exists ${FILL_SEQ_TRIGGER} on audit_log`);
  await knex.raw(`drop function if exists ${FILL_SEQ_TRIGGER}()`);
  await knex.raw('alter table audit_log drop column seq');
}
