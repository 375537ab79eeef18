// A script shaped like scripts/citus/bench.ts and test.ts, for test/stopOnSignal.test.ts: it
// starts a PostgreSQL that pg_ctl daemonises, and a child it forwards signals to as
// test/runTap.ts forwards them to tap, prints what it started as one JSON line, and runs until
// a signal ends it.
import { spawn } from 'node:child_process';
import { freeTcpPort } from '../../scripts/lib/freePort';
import { postmasterPid, startThrowawayPostgres } from '../../scripts/lib/localPostgres';
import { stopOnSignal } from '../../scripts/lib/stopOnSignal';

async function main() {
  const server = startThrowawayPostgres('keyusage-signalled-', await freeTcpPort());
  stopOnSignal(server.stop);
  const tap = spawn('sleep', ['600'], { stdio: 'ignore' });
  const forward = (signal: NodeJS.Signals) => tap.kill(signal);
  process.on('SIGINT', forward).on('SIGTERM', forward).on('SIGHUP', forward);
  setInterval(() => undefined, 60_000);
  console.log(JSON.stringify({ postmaster: postmasterPid(server.dataDir), scratch: server.scratch, tap: tap.pid }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
