import t from 'tap';
import { sumSamples } from '../collector/receivers';
import type { MetricSample } from '../shared/metrics';

// The primary's /metrics over several receivers: counters add up; a gauge that every receiver
// reads off one shared thing (the usage log's backlog) is that thing's, so the largest, not a sum.
t.test("the receivers' samples: counters summed, the shared log's gauges the largest", async (t) => {
  const worker = (flushes: number, backlog: number, running: number): MetricSample[] => [
    { name: 'keyusage_collector_flushes_total', help: '', type: 'counter', value: flushes },
    { name: 'keyusage_collector_usage_log_backlog_rows', help: '', type: 'gauge', value: backlog },
    { name: 'keyusage_collector_fold_running_seconds', help: '', type: 'gauge', value: running },
  ];
  const summed = sumSamples([worker(3, 100, 30), worker(4, 100, 0), worker(5, 90, 2)]);
  t.strictSame(
    summed.map((s) => [s.name.replace('keyusage_collector_', ''), s.value]),
    [
      ['flushes_total', 12],
      ['usage_log_backlog_rows', 100],
      ['fold_running_seconds', 30],
    ],
  );
});

// Every receiver of a cluster reads the one socket they share from the kernel's table: summed, the
// primary reported each drop once per receiver.
t.test("the receivers' kernel drops are the shared socket's, not a sum (fails without the fix)", async (t) => {
  const worker = (drops: number): MetricSample[] => [{ name: 'keyusage_collector_kernel_dropped_datagrams_total', help: '', type: 'counter', value: drops }];
  t.equal(sumSamples([worker(40), worker(40), worker(41)])[0].value, 41, 'the latest read');
});
