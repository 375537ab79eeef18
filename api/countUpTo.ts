import type { Knex } from 'knex';
import type { Db } from '../shared/db';

/** How many rows `rows` selects, counted up to `upTo` (a caller's cap): no more rows are read. */
export async function countUpTo(db: Db, rows: Knex.QueryBuilder, upTo: number): Promise<number> {
  const [row] = await db.from(rows.select(db.raw('1')).limit(upTo).as('r')).count<{ n: string }[]>({ n: '*' });
  return Number(row.n);
}
