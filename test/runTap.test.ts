import t from 'tap';
import { tapArguments } from './runTap';

t.test('a run of chosen files does not fail on the whole-suite coverage threshold; the full run does', async (t) => {
  t.strictSame(tapArguments([]), [], 'npm test: the threshold applies');
  t.strictSame(tapArguments(['--reporter=dot']), ['--reporter=dot'], 'options alone: still the whole suite');
  t.strictSame(tapArguments(['test/keyMaterial.test.ts']), ['test/keyMaterial.test.ts', '--allow-incomplete-coverage']);
  t.strictSame(tapArguments(['test/faults']), ['test/faults', '--allow-incomplete-coverage']);
});
