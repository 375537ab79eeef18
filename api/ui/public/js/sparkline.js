import { setAttr, setText, svg } from './dom.js';

// Seven UTC days of uses as a line (the usage row's last7Days, today last), updated in place on
// every refresh. Its header and text say UTC days: beside the "7 d" column, which is the last 168
// hours, "Last 7 days" read as the same uses and added up to another number.
const WIDTH = 70;
const HEIGHT = 18;

export function createSparkline() {
  const title = svg('title');
  const line = svg('polyline', { fill: 'none', stroke: 'currentColor', 'stroke-width': 1.5 });
  const node = svg('svg', { class: 'spark', viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: 'img' }, [title, line]);
  return {
    node,
    update(values) {
      const numbers = values.map(Number);
      const max = Math.max(1, ...numbers);
      const step = WIDTH / Math.max(1, numbers.length - 1);
      const points = numbers.map((n, i) => `${(i * step).toFixed(1)},${(HEIGHT - 1 - (n / max) * (HEIGHT - 2)).toFixed(1)}`).join(' ');
      setAttr(line, 'points', points);
      const text = `Uses per UTC day, last 7 UTC days (oldest first, today last): ${values.join(', ')}`;
      setText(title, text);
      setAttr(node, 'aria-label', text);
    },
  };
}
