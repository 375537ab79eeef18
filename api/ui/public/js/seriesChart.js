import { el } from './dom.js';
import { stackedChart } from './stackedChart.js';

// A usage series (a key's or the org's) charted by outcome over a range the person chooses.

// A range is whole buckets: the current one so far and those before it, the hours "Uses 24 h" and
// "7 d" count. From `now - 24 h` the API read the whole hour holding it too, and the chart added
// up 25 hours beside the page's 24. Days are UTC days, as the chart's axis says.
const RANGES = {
  '24h': { label: 'Last 24 hours, hourly', buckets: 24, granularity: 'hour' },
  '7d': { label: 'Last 7 days, hourly', buckets: 24 * 7, granularity: 'hour' },
  '30d': { label: 'Last 30 UTC days, daily', buckets: 30, granularity: 'day' },
  '90d': { label: 'Last 90 UTC days, daily', buckets: 90, granularity: 'day' },
};
const BUCKET_MS = { hour: 3_600_000, day: 86_400_000 };

// `readAt`: when the server read the facts shown beside the chart (a usage answer's
// generatedAt). Taken from the browser's clock, 11 minutes slow, the range ended an hour early:
// "Uses 24 h" said 3 and the 24-hour chart 0.
function seriesQuery(rangeName, readAt) {
  const range = RANGES[rangeName];
  const step = BUCKET_MS[range.granularity];
  // The end of the bucket under way: the range is [to - buckets × step, to).
  const to = (Math.floor(readAt / step) + 1) * step;
  const from = to - range.buckets * step;
  return new URLSearchParams({
    from: new Date(from).toISOString(),
    to: new Date(to).toISOString(),
    granularity: range.granularity,
    byOutcome: 'true',
  });
}

/**
 * `read(query)` answers the series for a query string; `readAt()` is the server time its range
 * ends with; `onSeries(series)` is told each answer of the chosen range, and `null` when its read
 * failed (what stands beside the chart was the previous range's). `refresh` draws the chosen
 * range again and rejects with the API's error (the chart then says what was not read).
 */
export function createSeriesChart({ ids, read, readAt, onSeries = () => {} }) {
  const range = el(
    'select',
    { id: ids.range, 'aria-label': 'Chart range' },
    Object.entries(RANGES).map(([value, r]) => el('option', { value, text: r.label, selected: value === '7d' })),
  );
  const chart = el('div', { id: ids.chart, class: 'chart-box' });
  let shown = '';

  async function refresh() {
    const asked = range.value;
    // Another range was chosen while this one was on its way: its answer (or error) is not shown
    // under that range's name; the request for the new range draws it.
    let series;
    try {
      series = await read(seriesQuery(asked, readAt()));
    } catch (e) {
      if (range.value !== asked) return;
      // The figure shown was another range's (a range switch that failed) or an older reading:
      // it goes, and the next answer draws whatever it holds.
      shown = '';
      onSeries(null);
      chart.replaceChildren(el('p', { class: 'chart-failed', text: `${RANGES[asked].label}: not read (${e.message})` }));
      throw e;
    }
    if (range.value !== asked) return;
    onSeries(series);
    // The range's edges move with the clock; redraw only when they or the counts did.
    const signature = JSON.stringify([asked, series.buckets[0]?.start, series.buckets.map((b) => b.outcomes)]);
    if (signature === shown) return;
    shown = signature;
    chart.replaceChildren(stackedChart(series));
  }
  return { range, chart, refresh };
}
