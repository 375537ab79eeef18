import fs from 'node:fs';
import t from 'tap';
import { freshDatabase } from './helpers/database';
import { startTestCollector } from './helpers/collector';

// The kernel caps the collector's UDP receive buffer at net.core.rmem_max without an error; the
// collector says so at start, with the sysctl that lifts the cap, since a capped buffer drops
// datagrams in bursts and nothing else would tell the operator.

const RMEM_MAX = '/proc/sys/net/core/rmem_max';
const WARNING =
  /the kernel granted a UDP receive buffer of \d+ bytes of the (\d+) that COLLECTOR_RECV_BUFFER_BYTES asks for; raise net\.core\.rmem_max \(sysctl -w net\.core\.rmem_max=(\d+)\)/;

t.test(
  'a receive buffer capped by net.core.rmem_max is reported with the sysctl that lifts the cap',
  { skip: !fs.existsSync(RMEM_MAX) && 'not Linux' },
  async (t) => {
    const rmemMax = Number(fs.readFileSync(RMEM_MAX, 'utf8'));
    const { url } = await freshDatabase(t);

    const requested = rmemMax * 2;
    const capped = await startTestCollector(t, url, { COLLECTOR_RECV_BUFFER_BYTES: String(requested) });
    t.equal(capped.receiver.recvBufferBytes, rmemMax, 'Linux grants rmem_max (and reports it doubled, which is halved)');
    const warning = capped.logLines.map((line) => JSON.parse(line)).find((entry) => WARNING.test(entry.msg));
    t.ok(warning, 'the capped buffer is reported');
    t.equal(warning?.level, 40, 'as a warning');
    t.same(WARNING.exec(warning?.msg)?.slice(1), [String(requested), String(requested)], 'with the size asked for and the sysctl to grant it');
    t.same({ requested: warning?.requestedBytes, granted: warning?.grantedBytes }, { requested, granted: rmemMax });
    await capped.stop();

    const granted = await startTestCollector(t, url, { COLLECTOR_RECV_BUFFER_BYTES: String(64 * 1024) });
    t.equal(granted.receiver.recvBufferBytes, 64 * 1024, 'a size under the cap is granted');
    t.notOk(
      granted.logLines.some((line) => WARNING.test(line)),
      'and nothing is reported',
    );
    await granted.stop();
  },
);

// The receivers of a cluster share one socket, so one of them reports its buffer.
t.test('a capped receive buffer is reported by the first receiver of a cluster only', { skip: !fs.existsSync(RMEM_MAX) && 'not Linux' }, async (t) => {
  const { url } = await freshDatabase(t);
  const env = { COLLECTOR_RECV_BUFFER_BYTES: String(Number(fs.readFileSync(RMEM_MAX, 'utf8')) * 2) };
  const reports = (lines: string[]) => lines.filter((line) => WARNING.test(line)).length;
  const first = await startTestCollector(t, url, env, { receiverIndex: 0 });
  t.equal(reports(first.logLines), 1, 'the first receiver reports it');
  await first.stop();
  const second = await startTestCollector(t, url, env, { receiverIndex: 1 });
  t.equal(reports(second.logLines), 0, 'the others do not');
  await second.stop();
});
