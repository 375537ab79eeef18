/**
 * The end of a command's entry point: the number its run resolves to becomes the exit code. A
 * failure it did not turn into a number itself (a connection that fails to close) is reported as
 * `error: …` and exits 1, rather than as an unhandled rejection's stack trace.
 */
export function exitWhenDone(run: Promise<number>, err: (line: string) => void): void {
  run.then(
    (code) => {
      process.exitCode = code;
    },
    (error: Error) => {
      err(`error: ${error.message}`);
      process.exitCode = 1;
    },
  );
}
