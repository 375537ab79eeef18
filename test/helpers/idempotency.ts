import type { Test } from 'tap';

/**
 * Five concurrent first requests with one Idempotency-Key: every answer 201 with one resource's id,
 * one of them carrying what is shown once (`revealed`: the key's plaintext, the webhook's secret),
 * the four others replays without it.
 */
export function oneMadeFourReplayed(t: Test, answers: Array<{ status: number; body: any }>, revealed: 'key' | 'secret'): void {
  t.same(
    answers.map((answer) => answer.status),
    [201, 201, 201, 201, 201],
  );
  t.equal(new Set(answers.map((answer) => answer.body.id)).size, 1, 'one id in every answer');
  t.equal(answers.filter((answer) => typeof answer.body[revealed] === 'string').length, 1, `one ${revealed === 'key' ? 'plaintext' : 'secret'}`);
  t.equal(answers.filter((answer) => answer.body.replayed === true).length, 4, 'four replays');
}

/** Retries of first requests made by different orgs or callers with one Idempotency-Key: each a replay of its own first answer. */
export function eachReplaysItsOwn(t: Test, retries: Array<{ body: any }>, firsts: Array<{ body: any }>): void {
  t.same(
    retries.map((retry) => [retry.body.replayed, retry.body.id, retry.body.orgId]),
    firsts.map((first) => [true, first.body.id, first.body.orgId]),
    'replays, each of its own answer',
  );
}
