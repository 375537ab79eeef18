import t from 'tap';
import { citusTapArguments, FILES } from '../scripts/citus/test';

// `npm run test:citus -- <args>`: an option alone ran the whole plain suite against Citus and
// left out test/citus/distributed.citus.ts.

t.test('options keep the default files; a file or folder replaces them', async (t) => {
  t.ok(FILES.includes('test/citus/distributed.citus.ts'), 'the Citus cases are among the defaults');
  const chosen = ['--jobs=1', '--allow-incomplete-coverage'];
  t.strictSame(citusTapArguments([]), [...FILES, ...chosen]);
  t.strictSame(citusTapArguments(['--bail']), [...FILES, '--bail', ...chosen], '--bail: the default files, and the option');
  t.strictSame(citusTapArguments(['test/citus/distributed.citus.ts', '--disable-coverage']), [
    'test/citus/distributed.citus.ts',
    '--disable-coverage',
    ...chosen,
  ]);
  t.strictSame(citusTapArguments(['test/citus']), ['test/citus', ...chosen], 'a folder');
  t.strictSame(citusTapArguments(['--reporter', 'terse']), [...FILES, '--reporter', 'terse', ...chosen], "an option's value is not a file");
});
