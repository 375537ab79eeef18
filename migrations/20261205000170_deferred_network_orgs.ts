import type { Knex } from 'knex';

// The sweep of deferred key.new_ip events (collector/deferredNetworks.ts) read the earliest due
// networks of every org together, over an index on (event_due_at, first_seen). A network without
// room in its hour was postponed to the next hour's start, ahead of every network deferred during
// that hour: one org with more deferred networks than its hourly room (1,000 keys used from new
// networks, each key's history holding up to 1,000) filled every sweep's window with its own,
// rewrote all of them each hour, and the other orgs' networks waited behind them for as many
// hours as its backlog took to pass. Now each org with room is read on its own, over
// (org_id, event_due_at, first_seen), and an org whose hour is full is not read at all.
//
// The orgs to read come from deferred_network_orgs, one row per org that ever had a network
// deferred (the flush adds it in the statement that defers): on Citus, a LATERAL with a LIMIT must
// start from a table distributed by org_id, not from the organizations reference table.
//
// Only collectors write the history, and they are stopped while migrations run
// (CHANGELOG.md, upgrade notes), so the index is built in the transaction and the orgs copied
// from the rows already deferred.
const HISTORY = 'api_key_ip_history';
const ORGS = 'deferred_network_orgs';
const DUE_PER_ORG = { name: 'api_key_ip_history_org_due_idx', columns: '(org_id, event_due_at, first_seen)' };
const DUE_ALONE = { name: 'api_key_ip_history_due_idx', columns: '(event_due_at, first_seen)' };

const createDueIndex = (knex: Knex, index: typeof DUE_PER_ORG) =>
  knex.raw(`create index ${index.name} on ${HISTORY} ${index.columns} where event_due_at is not null`);

export async function up(knex: Knex): Promise<void> {
  await knex.raw(`create table ${ORGS} (org_id uuid primary key references organizations (id) on delete cascade)`);
  await knex.raw(`insert into ${ORGS} (org_id) select distinct org_id from ${HISTORY} where event_due_at is not null`);
  await createDueIndex(knex, DUE_PER_ORG);
  await knex.raw(`drop index ${DUE_ALONE.name}`);
}

export async function down(knex: Knex): Promise<void> {
  await createDueIndex(knex, DUE_ALONE);
  await knex.raw(`drop index ${DUE_PER_ORG.name}`);
  await knex.raw(`drop table ${ORGS}`);
}
