import t from 'tap';
import type { Logger } from '../shared/logger';
import { rateLimitedWarn } from '../shared/rateLimitedLog';

// A logger that keeps what it was given, and a clock the test moves.
function recording() {
  const lines: Array<{ fields: Record<string, unknown>; message: string }> = [];
  const logger = { warn: (fields: Record<string, unknown>, message: string) => void lines.push({ fields, message }) } as unknown as Logger;
  const clock = { at: 0 };
  return { lines, logger, clock, now: () => clock.at };
}

t.test('one line per kind per interval, with the number suppressed since the last', async (t) => {
  const { lines, logger, clock, now } = recording();
  const warn = rateLimitedWarn(logger, 1000, now);
  for (let i = 0; i < 5; i += 1) warn('a', { i }, 'failed');
  warn('b', {}, 'other');
  clock.at = 1000;
  warn('a', { i: 5 }, 'failed');
  t.same(
    lines.map((line) => [line.fields.kind, line.fields.suppressed]),
    [
      ['a', 0],
      ['b', 0],
      ['a', 4],
    ],
  );
});

// One kind per webhook: a tenant that made and deleted webhooks whose sends failed grew the
// collector's memory for as long as it ran.
t.test('kinds gone quiet are forgotten: an open-ended set of kinds does not grow without bound', async (t) => {
  const { lines, logger, clock, now } = recording();
  const warn = rateLimitedWarn(logger, 1000, now);
  for (let round = 0; round < 50; round += 1) {
    for (let i = 0; i < 100; i += 1) warn(`webhook_${round}_${i}`, {}, 'failed');
    clock.at += 1000;
  }
  t.equal(lines.length, 5000, 'every first warning of a kind is logged');
  t.ok(warn.trackedKinds() <= 100, `kinds remembered: ${warn.trackedKinds()} of 5,000 seen (the last interval's)`);

  warn('busy', {}, 'failed');
  warn('busy', {}, 'failed');
  clock.at += 2000;
  warn('other', {}, 'failed');
  clock.at += 1;
  warn('busy', {}, 'failed');
  t.equal(lines.at(-1)?.fields.suppressed, 1, 'a kind with suppressed warnings keeps its count across a sweep');
});
