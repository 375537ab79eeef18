import type { Db } from '../shared/db';

// EXPLAIN of what a repository function really sends, for the plan checks of the tests and the
// endpoint benchmark.

export interface CapturedStatement {
  sql: string;
  bindings: unknown[];
}

const COUNT_STATEMENT = /^\s*select count\(\*\)/i;

/** The first statement `run` sends through `db` that is not a count: a listing's page statement. */
export async function captureMainStatement(db: Db, run: () => Promise<unknown>): Promise<CapturedStatement> {
  const captured: CapturedStatement[] = [];
  const capture = (query: CapturedStatement) => captured.push({ sql: query.sql, bindings: query.bindings });
  db.on('query', capture);
  try {
    await run();
  } finally {
    db.off('query', capture);
  }
  const main = captured.find((query) => !COUNT_STATEMENT.test(query.sql));
  if (!main) throw new Error('the call sent no statement besides a count');
  return main;
}

/** Runs `statement` under EXPLAIN (`options`), e.g. 'analyze, format json'; returns the result rows. */
export async function explainStatement(db: Db, statement: CapturedStatement, options: string): Promise<Array<Record<string, unknown>>> {
  // The event carries the driver's SQL ($1, $2, …): back to knex placeholders, in order.
  const bindings: unknown[] = [];
  const sql = statement.sql.replace(/\$(\d+)/g, (_, n: string) => {
    bindings.push(statement.bindings[Number(n) - 1]);
    return '?';
  });
  const result = await db.raw(`explain (${options}) ${sql}`, bindings as never);
  return result.rows as Array<Record<string, unknown>>;
}

/** A node of EXPLAIN (ANALYZE, FORMAT JSON)'s plan, with the fields the checks read. */
export interface PlanNode {
  'Relation Name'?: string;
  'Actual Rows': number;
  'Actual Loops': number;
  'Rows Removed by Filter'?: number;
  'Shared Hit Blocks'?: number;
  'Shared Read Blocks'?: number;
  Plans?: PlanNode[];
}

/**
 * The rows a node of EXPLAIN (ANALYZE) read, over all its loops: those it returned and those its
 * filter removed. Actual Rows alone counts only what it returned: a lookup that found its row
 * by filtering the org's keys one by one returned as few as an index lookup.
 */
export const rowsRead = (node: PlanNode): number => (node['Actual Rows'] + (node['Rows Removed by Filter'] ?? 0)) * node['Actual Loops'];

/** The pages (index and table) a node of EXPLAIN (ANALYZE, BUFFERS) touched, its children's included. */
export const pagesRead = (node: PlanNode): number => (node['Shared Hit Blocks'] ?? 0) + (node['Shared Read Blocks'] ?? 0);

/** `measure` summed over the nodes of `node`'s plan that read `relation`. */
export function sumOverRelation(node: PlanNode, relation: string, measure: (node: PlanNode) => number): number {
  const own = node['Relation Name'] === relation ? measure(node) : 0;
  return own + (node.Plans ?? []).reduce((sum, child) => sum + sumOverRelation(child, relation, measure), 0);
}
