import t from 'tap';
import { main, readArguments, USAGE } from '../scripts/citus/distribute';
import { freshDatabase } from './helpers/database';

// `npm run citus:distribute` read no argument: `--help` with DATABASE_URL set started laying the
// database out, and against a plain PostgreSQL it failed with `relation "pg_dist_partition" does
// not exist`. Here against the test setup's PostgreSQL, which has no Citus; the cases on a cluster
// are in test/citus/distributed.citus.ts.

function captured() {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, io: { out: (line: string) => void out.push(line), err: (line: string) => void err.push(line) } };
}

t.test('the arguments: none lays out, --help or -h asks for the usage, anything else is refused by name', async (t) => {
  t.strictSame(readArguments([]), { kind: 'distribute' });
  t.strictSame(readArguments(['--help']), { kind: 'help' });
  t.strictSame(readArguments(['-h']), { kind: 'help' });
  t.match(readArguments(['--dry-run']), { kind: 'refused', message: /--dry-run/ });
  t.match(readArguments(['keyusage']), { kind: 'refused', message: /keyusage/ }, 'a positional, such as a database name');
  t.match(readArguments(['--help=yes']), { kind: 'refused' }, '--help takes no value');
});

t.test('--help prints the usage and exits 0 without touching the database DATABASE_URL names', async (t) => {
  const { db, url } = await freshDatabase(t);
  const { out, err, io } = captured();
  t.equal(await main(['--help'], { DATABASE_URL: url }, io), 0);
  t.strictSame(out, [USAGE]);
  t.strictSame(err, []);
  t.ok((await db.raw(`select to_regclass('api_key_ip_history_key_prefix_legacy') as index`)).rows[0].index, 'the legacy index citus:distribute drops is there');
});

t.test('an unknown argument exits 2, naming it, with the usage', async (t) => {
  const { out, err, io } = captured();
  t.equal(await main(['--bogus'], { DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none' }, io), 2);
  t.strictSame(out, []);
  t.match(err.join('\n'), /^error: .*--bogus[^]*usage: DATABASE_URL=/);
});

t.test('against a database without the citus extension it exits 1 saying so, and changes nothing', async (t) => {
  const { db, url } = await freshDatabase(t);
  const { out, err, io } = captured();
  t.equal(await main([], { DATABASE_URL: url }, io), 1);
  t.strictSame(out, []);
  t.match(err, [/^error: the citus extension is not installed in this database: DATABASE_URL must name the database on the Citus coordinator/]);
  t.ok((await db.raw(`select to_regclass('api_key_ip_history_key_prefix_legacy') as index`)).rows[0].index, 'the legacy index is still there');
  const settings = await db.raw(`select 1 from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase where d.datname = current_database()`);
  t.strictSame(settings.rows, [], 'no setting was given to the database');
});
