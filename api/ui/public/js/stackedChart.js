import { el, svg } from './dom.js';
import { count } from './format.js';
import { OUTCOMES } from './outcomes.js';

// Every request naming the key per bucket, stacked by outcome, in SVG: no library, no canvas,
// nothing the CSP must allow, and every bar has a <title> a screen reader or a hover can read.
const WIDTH = 720;
const HEIGHT = 220;
const PAD = { left: 44, right: 8, top: 10, bottom: 24 };

const bucketTotal = (bucket) => OUTCOMES.reduce((sum, o) => sum + Number(bucket.outcomes[o.name]), 0);

function bars(buckets, max) {
  const plotHeight = HEIGHT - PAD.top - PAD.bottom;
  const slot = (WIDTH - PAD.left - PAD.right) / buckets.length;
  return buckets.flatMap((bucket, i) => {
    let y = HEIGHT - PAD.bottom;
    return OUTCOMES.filter((o) => Number(bucket.outcomes[o.name]) > 0).map((o) => {
      const n = Number(bucket.outcomes[o.name]);
      const h = Math.max(1, (n / max) * plotHeight);
      y -= h;
      return svg(
        'rect',
        {
          x: (PAD.left + i * slot + slot * 0.1).toFixed(2),
          y: y.toFixed(2),
          width: Math.max(1, slot * 0.8).toFixed(2),
          height: h.toFixed(2),
          fill: o.colour,
          'data-outcome': o.name,
        },
        [svg('title', { text: `${bucket.start}: ${count(bucket.outcomes[o.name])} ${o.label}` })],
      );
    });
  });
}

function axes(buckets, max) {
  const label = (x, y, text, anchor) => svg('text', { x, y, 'text-anchor': anchor, class: 'axis', text });
  const baseline = HEIGHT - PAD.bottom;
  const day = (iso) => iso.slice(0, iso.endsWith('T00:00:00.000Z') ? 10 : 16).replace('T', ' ');
  return [
    svg('line', { x1: PAD.left, x2: WIDTH - PAD.right, y1: baseline, y2: baseline, class: 'axis-line' }),
    label(PAD.left - 4, PAD.top + 8, count(max), 'end'),
    label(PAD.left - 4, baseline, '0', 'end'),
    label(PAD.left, HEIGHT - 6, day(buckets[0].start), 'start'),
    label(WIDTH - PAD.right, HEIGHT - 6, `${day(buckets[buckets.length - 1].start)} UTC`, 'end'),
  ];
}

// The legend is the chart's numbers as text: each outcome's total over the range.
function legend(buckets) {
  return el(
    'ul',
    { class: 'legend' },
    OUTCOMES.map((o) => {
      const total = buckets.reduce((sum, bucket) => sum + Number(bucket.outcomes[o.name]), 0);
      return el('li', { 'data-outcome': o.name }, [
        svg('svg', { class: 'swatch', viewBox: '0 0 10 10', 'aria-hidden': 'true' }, [svg('rect', { width: 10, height: 10, fill: o.colour })]),
        el('span', { text: `${o.label}: ` }),
        el('strong', { class: 'legend-count', text: count(total) }),
      ]);
    }),
  );
}

export function stackedChart(series) {
  const max = Math.max(1, ...series.buckets.map(bucketTotal));
  const uses = `${count(series.total)} uses`;
  const chart = svg(
    'svg',
    { class: 'chart', viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: 'img', 'aria-label': `Requests per ${series.granularity} by outcome: ${uses}` },
    [...axes(series.buckets, max), ...bars(series.buckets, max)],
  );
  return el('figure', { class: 'chart-figure', 'data-total': series.total }, [
    chart,
    el('figcaption', {}, [el('p', { class: 'chart-total', text: `${uses} in range (proven secrets; failed attempts listed apart)` }), legend(series.buckets)]),
  ]);
}
