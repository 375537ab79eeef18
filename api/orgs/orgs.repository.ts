import { referenceRowNow, type Db } from '../../shared/db';
import { TABLE } from '../../shared/tables';

export interface Organization {
  id: string;
  name: string;
  createdAt: Date;
}

interface OrganizationRow {
  id: string;
  name: string;
  created_at: Date;
}

const toOrganization = (row: OrganizationRow): Organization => ({ id: row.id, name: row.name, createdAt: row.created_at });

export async function insertOrganization(db: Db, name: string): Promise<Organization> {
  const [row] = await db<OrganizationRow>(TABLE.organizations)
    .insert({ name, created_at: referenceRowNow(db) })
    .returning('*');
  return toOrganization(row);
}

export async function findOrganizationById(db: Db, id: string): Promise<Organization | undefined> {
  const row = await db<OrganizationRow>(TABLE.organizations).where({ id }).first();
  return row && toOrganization(row);
}

export async function findOrganizationByName(db: Db, name: string): Promise<Organization | undefined> {
  const row = await db<OrganizationRow>(TABLE.organizations).where({ name }).orderBy('created_at').first();
  return row && toOrganization(row);
}

export async function listOrganizations(db: Db): Promise<Organization[]> {
  const rows = await db<OrganizationRow>(TABLE.organizations).orderBy([{ column: 'created_at' }, { column: 'id' }]);
  return rows.map(toOrganization);
}

// A cap on what an org holds (its keys, its webhooks, a webhook's pending pings) counts before it
// inserts: one such change of an org at a time, so concurrent requests cannot all pass the same
// count. The audit log takes its own (api/audit/audit.repository.ts). Held to the transaction's end.
export async function lockOrgFor(trx: Db, what: 'keys' | 'webhooks' | 'audit', orgId: string): Promise<void> {
  await trx.raw(`select pg_advisory_xact_lock(hashtextextended('keyusage.' || ? || ':' || ?::text, 0))`, [what, orgId]);
}
