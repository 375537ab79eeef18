import type { Db } from '../../shared/db';

export interface BenchContext {
  quick: boolean;
  /** The benchmark database (fresh, migrated) and its URL for child processes. */
  db: Db;
  databaseUrl: string;
  /** KEY_PEPPER given to every API process, so keys made here verify there. */
  pepper: string;
  log: (line: string) => void;
}

export const BENCH_PEPPER = 'keyusage-benchmark-pepper-not-a-secret-0123456789';
