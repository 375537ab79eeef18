import type { Db } from '../../shared/db';

// The API and the collector read and write rows; they never need DDL, other databases or a
// superuser, so a flaw in either cannot drop a table or read pg_authid. Migrations keep running
// as the owner (`db` here), and default privileges extend the grants to the tables that later
// migrations create. README ("A role for the API and the collector") gives the same SQL for an
// external database.

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

// CREATE/ALTER ROLE take no bind parameters: let PostgreSQL quote the name and the password.
async function setRolePassword(db: Db, role: string, password: string) {
  const { rows: existing } = await db.raw('select 1 from pg_roles where rolname = ?', [role]);
  const verb = existing.length > 0 ? 'alter' : 'create';
  const { rows } = await db.raw(
    `select format('${verb} role %I with login nosuperuser nocreatedb nocreaterole noinherit password %L', ?::text, ?::text) as sql`,
    [role, password],
  );
  await db.raw(rows[0].sql);
}

/** Run after the migrations, as the owner; idempotent (it resets the password each time). */
export async function ensureAppRole(db: Db, role: string, password: string): Promise<void> {
  if (!IDENTIFIER.test(role)) throw new RangeError(`not a plain role name: ${role}`);
  await setRolePassword(db, role, password);
  for (const statement of [
    `grant usage on schema public to ${role}`,
    `grant select, insert, update, delete on all tables in schema public to ${role}`,
    `grant usage, select on all sequences in schema public to ${role}`,
    `alter default privileges in schema public grant select, insert, update, delete on tables to ${role}`,
    `alter default privileges in schema public grant usage, select on sequences to ${role}`,
    // knex's bookkeeping belongs to whoever migrates.
    `revoke all on knex_migrations, knex_migrations_lock from ${role}`,
    `revoke all on sequence knex_migrations_id_seq, knex_migrations_lock_index_seq from ${role}`,
  ]) {
    await db.raw(statement);
  }
}
