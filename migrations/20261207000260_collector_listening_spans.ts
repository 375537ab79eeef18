import type { Knex } from 'knex';

// When collectors listened (shared/collectorUptime.ts): one row per collector process from its
// start, moved forward by its heartbeat. A use sent while no collector listened is lost without a
// word, and the key looks dormant; the revoke-dormant clean-up reads the gaps between these rows.
// A span also ends where its collector refused uses (lost_until).
// `collector` names the process for operators (host:port/receiver); nothing of an org is here, so
// on Citus the table stays on the coordinator, where both the collectors and the API reach it.
// The heartbeat writes the times its collector read, as the collectors write every other time:
// the gaps are compared with the API's clock (keep both synchronised).
export async function up(knex: Knex): Promise<void> {
  await knex.schema.createTable('collector_listening_spans', (table) => {
    table.bigIncrements('id');
    table.text('collector').notNullable();
    table.timestamp('started_at', { useTz: true }).notNullable();
    table.timestamp('heard_at', { useTz: true }).notNullable();
    // Closed by its collector because it refused uses (its aggregator full, its replay cache): they
    // were lost after heard_at, by lost_until, a gap whatever other collectors did, however short.
    table.timestamp('lost_until', { useTz: true });
    // The gap query walks spans reaching into a window by their end, in order of their start.
    table.index(['heard_at'], 'collector_listening_spans_heard_idx');
    table.index(['started_at'], 'collector_listening_spans_started_idx');
  });
  // Losses are found by their end, a few rows among the spans.
  await knex.raw('create index collector_listening_spans_lost_idx on collector_listening_spans (lost_until) where lost_until is not null');
  // One constraint a statement, as Citus wants on a table it may come to hold.
  await knex.raw('alter table collector_listening_spans add constraint collector_listening_spans_order_check check (heard_at >= started_at)');
  await knex.raw('alter table collector_listening_spans add constraint collector_listening_spans_lost_check check (lost_until >= heard_at)');
}

export async function down(knex: Knex): Promise<void> {
  await knex.schema.dropTable('collector_listening_spans');
}
