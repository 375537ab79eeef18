import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { loadConfig, loadDatabaseConfig } from '../shared/config';
import { AUDIT_ACTIONS } from '../api/audit/audit.repository';
import { TABLE } from '../shared/tables';

// Statements of README.md and docs/ that name what the code does, checked against the code: each
// had drifted from it once (a table left out of the backup list, a variable out of migrate's).

const readDoc = (file: string) => fs.readFileSync(path.join(__dirname, '..', file), 'utf8');

// The lines of the first Markdown table after `heading`.
function tableAfter(text: string, heading: string): string[] {
  const lines = text.slice(text.indexOf(heading)).split('\n');
  const start = lines.findIndex((line) => line.startsWith('|'));
  const end = lines.findIndex((line, index) => index > start && !line.startsWith('|'));
  return lines.slice(start, end);
}

const backticked = (text: string) => [...text.matchAll(/`([^`]+)`/g)].map((match) => match[1]);

// The variables a loader reads from the environment it is given.
function variablesRead(load: (env: NodeJS.ProcessEnv) => unknown): Set<string> {
  const read = new Set<string>();
  const env = new Proxy<NodeJS.ProcessEnv>(
    { NODE_ENV: 'test' },
    {
      get(target, name) {
        if (typeof name === 'string') read.add(name);
        return Reflect.get(target, name);
      },
    },
  );
  load(env);
  return read;
}

// A README name, or a pattern such as `DATABASE_*`, as a regular expression.
const namePattern = (entry: string) => new RegExp(`^${entry.replace(/\*/g, '[A-Z0-9_]*')}$`);

t.test("deployment.md's backup table has a row for every table", async (t) => {
  const rows = tableAfter(readDoc('docs/deployment.md'), '## Backups');
  const named = new Set(rows.flatMap((row) => backticked(row.split('|')[1])));
  t.same(
    Object.values(TABLE).filter((table) => !named.has(table)),
    [],
    'every table of shared/tables.ts says what it holds and what losing it means',
  );
});

t.test("the README's list of what `npm run migrate` reads is what it reads", async (t) => {
  const sentence = /`npm run migrate`\s+reads only the database ones \(([^)]*)\)/.exec(readDoc('README.md'));
  t.ok(sentence, 'the README says what migrate reads');
  const listed = backticked(sentence![1]).map(namePattern);
  const everyVariable = [...variablesRead(loadConfig)];
  const documented = everyVariable.filter((name) => listed.some((pattern) => pattern.test(name)));
  t.same(documented.sort(), [...variablesRead(loadDatabaseConfig)].sort(), 'the variables the README names are those migrate validates');
});

// The old sample read `dormant true` for them: idle time counts from creation (shared/dormancy.ts),
// and every key of the demo is created seconds before the table is printed.
t.test("the README's demo-traffic sample shows never-used keys as not dormant", async (t) => {
  const sample = /```\n(key +status .+\n(?:.+\n)+)/.exec(readDoc('README.md'))![1].trim().split('\n');
  const header = sample[0].trim().split(/\s+/);
  const cells = sample.slice(1).map((row) => row.trim().split(/\s+/));
  const neverUsed = cells.filter((row) => row[header.indexOf('uses')] === '0');
  t.ok(neverUsed.length >= 2, 'the sample has the wrong-secret and unused keys');
  t.same(
    neverUsed.map((row) => row[header.indexOf('dormant')]),
    neverUsed.map(() => 'false'),
    'a key created seconds ago has not been idle for its dormancy days',
  );
});

// 0 binds the collector to any free port; the API needs the real one (api/usage/createUsageRecorder.ts).
t.test("the README's COLLECTOR_PORT row says 0 is for the collector only", async (t) => {
  const row = tableAfter(readDoc('README.md'), '## Configuration').find((line) => line.includes('`COLLECTOR_PORT`'));
  t.match(row, /port 0–65535, 0: any free port\)/, 'the collector takes 0');
  t.match(row, /the API refuses 0 at start/, 'the API does not');
});

// deployment.md's restore, followed literally by a review: the steps must be doable in their order
// and say what a restore gives back that the operator must take away again.
const restoreSection = () => {
  const text = readDoc('docs/deployment.md');
  const start = text.indexOf('**What a restore loses.**');
  return text.slice(start, text.indexOf('\n## ', start));
};
const restoreSteps = () => restoreSection().slice(restoreSection().indexOf('**How to restore.**'));

t.test("deployment.md's restore: rotated secrets come back, and are rotated again", async (t) => {
  t.match(restoreSection(), /\*\*a key rotated after the backup takes back its old secret as its\s+current one, with full key management\*\*/);
  t.match(restoreSteps(), /\*\*rotate again, with `gracePeriodSeconds: 0`, every key rotated after it\*\* \(`key\.rotate`\)/);
  t.match(restoreSteps(), /set again the expected networks changed since \(`key\.update`\)/);
});

t.test("deployment.md's restore: the API alone for the keys and webhooks, the collectors after", async (t) => {
  const steps = restoreSteps();
  const order = ['Start the API alone', 'rotate again', 'Delete again any webhook', 'Start the collectors'].map((step) => steps.indexOf(step));
  t.notOk(order.includes(-1), 'every step is there');
  t.same(
    order,
    [...order].sort((a, b) => a - b),
    'in this order',
  );
});

t.test("deployment.md's restore: --no-acl on a server without the app role, whose grants step 3 makes", async (t) => {
  const steps = restoreSteps();
  t.match(steps, /server without the app role \(a new one\), add `--no-acl`/);
  t.match(steps, /a dump never holds roles/);
  t.notMatch(steps, /if it is not part of the dump/, 'roles never are');
});

// The newer database's audit log lists what to redo: a revocation by the dormant clean-up and an
// erasure of IP addresses were left out, and came back unredone.
t.test("deployment.md's restore: every audited change is listed to redo, and the steps redo it", async (t) => {
  const listed = /lists what to redo \(([^)]*)\)/.exec(restoreSection())?.[1] ?? '';
  t.same(
    AUDIT_ACTIONS.filter((action) => !backticked(listed).includes(action)),
    [],
    'each audit action in the list',
  );
  t.same(
    AUDIT_ACTIONS.filter((action) => !restoreSteps().includes(`\`${action}\``)),
    [],
    'each in a step',
  );
});

t.test('audit log ids repeat after a restore: deployment.md and api-keys.md say so', async (t) => {
  t.match(restoreSection(), /\*\*Audit log ids repeat\.\*\*/);
  t.match(restoreSteps(), /export its audit log first/);
  t.match(readDoc('docs/api-keys.md'), /1, 2, 3, … in commit order without gaps[^]*?restored from a backup numbers on from the backup's last entry/);
});

// An operator upgrading from 0.1.0 reads the upgrade notes for what each migration does while the
// previous version still serves: the migrations after 190 were in none of them, the restore's
// (…270, which a previous version's revoke silently undoes the finality of) among them (a review).
t.test("the 0.1.0 → 0.2.0 upgrade notes name every migration since 0.1.0, and …270's roll-out rule", async (t) => {
  const changelog = readDoc('CHANGELOG.md');
  const notes = changelog.slice(changelog.indexOf('### Upgrade notes (0.1.0 → 0.2.0)'), changelog.indexOf('\n## 0.1.0'));
  const firstRelease = ['20261125000001_organizations_and_api_keys', '20261125000002_api_key_usage'];
  const migrations = fs
    .readdirSync(path.join(__dirname, '..', 'migrations'))
    .map((file) => file.replace(/\.ts$/, ''))
    .filter((name) => !firstRelease.includes(name));
  t.same(
    migrations.filter((name) => !notes.includes(`\`${name}\``)),
    [],
    'each named',
  );
  t.match(notes, /revoke keys\s+and run clean-ups only through APIs \(or a CLI\) of this version/);
});
