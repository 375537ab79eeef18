import type { Knex } from 'knex';

// A webhook outlived the key that created it: a leaked key's holder made one pointing at their
// own receiver, the owner revoked the key, and the org's events (other keys' addresses among
// them) kept going there. Only the audit log's webhook.create entry named the key. Each webhook
// now keeps the key that created it (null: not known), shown with it and filtered on
// (GET …/webhooks?createdByKeyId=), so a leak's clean-up finds what the key left behind.
// Webhooks made before take it from their audit entry. No foreign key: keys are never deleted,
// and on Citus the two tables are distributed apart from api_keys (a reference table).
//
// Outside a transaction: in one, the ADD COLUMN's ACCESS EXCLUSIVE lock on webhooks lasted through
// the backfill's scan of the whole audit log, and the previous version, still running (CHANGELOG
// upgrade notes), could not list a webhook, send a delivery or write any key event (the outbox
// trigger reads the event's org's webhooks) meanwhile. Each step commits on its own, the backfill
// holding no lock that stops a reader, and a run cut between two is run again whole (each step
// finds its work done).
export const config = { transaction: false };

export async function up(knex: Knex): Promise<void> {
  await knex.raw('alter table webhooks add column if not exists created_by_key_id uuid');
  await knex.raw(
    `update webhooks w set created_by_key_id = a.actor_key_id
       from audit_log a
      where w.created_by_key_id is null
        and a.org_id = w.org_id and a.action = 'webhook.create' and a.actor_type = 'key' and a.details ->> 'webhookId' = w.id::text`,
  );
  await knex.raw('create index if not exists webhooks_created_by_idx on webhooks (org_id, created_by_key_id) where created_by_key_id is not null');
}

export async function down(knex: Knex): Promise<void> {
  await knex.raw('alter table webhooks drop column created_by_key_id');
}
