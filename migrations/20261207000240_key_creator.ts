import type { Knex } from 'knex';
import { createIndexConcurrently } from './20261203000120_api_keys_created_at_index';

// A key outlived the key that created it: a leaked key with keys:write made another, the owner
// revoked the leaked one as the docs said, and nothing led to the second (only the audit log's
// key.create entry named its creator, and the log could not be asked by actor); it stayed active
// and revoked the owner's admin key. Each key now keeps the key that created it (null: made by the
// CLI or the first run, or not known), shown with it and filtered on (GET …/api-keys?createdByKeyId=),
// as webhooks do (20261206000190). Keys made before take it from their key.create entry (the new
// key is the entry's target). No foreign key, as there: keys are revoked, never deleted by the
// application, and a key an operator deletes by SQL must not take its creations' provenance along.
//
// The audit log is read by actor (GET …/audit-log?actorKeyId=), newest first by the org's entry
// number, as its pages go: an index over (org_id, actor_key_id, seq) finds one key's entries
// without reading the org's whole log.
//
// Outside a transaction, as 20261206000190: in one, the ADD COLUMN's ACCESS EXCLUSIVE lock on
// api_keys lasted through the backfill, and the previous version, still serving (CHANGELOG upgrade
// notes), could not authenticate a single request meanwhile. On Citus api_keys is a reference
// table and audit_log is distributed: an UPDATE of the one FROM the other is refused, so the
// pairs are read first and written by value, a page at a time (each page commits on its own). The
// indexes are built concurrently (20261203000120): keys and audit entries keep being written.
// Each step finds its work done when run again.
export const config = { transaction: false };

/** Entries read, and keys written, per statement. */
const PAGE = 1000;

export const CREATOR_INDEX = { name: 'api_keys_created_by_idx', on: 'api_keys (org_id, created_by_key_id) where created_by_key_id is not null' };
export const ACTOR_INDEX = { name: 'audit_log_actor_key_idx', on: 'audit_log (org_id, actor_key_id, seq) where actor_key_id is not null' };

type CreateEntry = { org_id: string; entry: string; key_id: string; creator: string };

// The key.create entries a key wrote after (org_id, seq), in that order: a keyset over the
// (org_id, seq) unique index, so no page rereads the log before it.
function createEntriesAfter(knex: Knex, after: CreateEntry | undefined): Promise<CreateEntry[]> {
  const query = knex('audit_log')
    // Named apart from seq: ORDER BY seq would sort by the text.
    .select('org_id', knex.raw('cast(seq as text) as entry'), 'target_key_id as key_id', 'actor_key_id as creator')
    .where({ action: 'key.create', actor_type: 'key' })
    .whereNotNull('target_key_id')
    .orderBy([{ column: 'org_id' }, { column: 'seq' }])
    .limit(PAGE);
  if (after) query.whereRaw('(org_id, seq) > (?, cast(? as bigint))', [after.org_id, after.entry]);
  return query;
}

async function recordCreators(knex: Knex, entries: readonly CreateEntry[]): Promise<void> {
  await knex.raw(
    `update api_keys k set created_by_key_id = v.creator
       from unnest(cast(? as uuid[]), cast(? as uuid[]), cast(? as uuid[])) as v(org_id, id, creator)
      where k.org_id = v.org_id and k.id = v.id and k.created_by_key_id is null`,
    [entries.map((entry) => entry.org_id), entries.map((entry) => entry.key_id), entries.map((entry) => entry.creator)],
  );
}

export async function up(knex: Knex): Promise<void> {
  await knex.raw('alter table api_keys add column if not exists created_by_key_id uuid');
  let after: CreateEntry | undefined;
  for (;;) {
    const entries = await createEntriesAfter(knex, after);
    if (entries.length > 0) await recordCreators(knex, entries);
    if (entries.length < PAGE) break;
    after = entries[entries.length - 1];
  }
  await createIndexConcurrently(knex, CREATOR_INDEX.name, CREATOR_INDEX.on);
  await createIndexConcurrently(knex, ACTOR_INDEX.name, ACTOR_INDEX.on);
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('drop index concurrently if exists ??', [ACTOR_INDEX.name]);
  await knex.raw('alter table api_keys drop column if exists created_by_key_id');
}
