import { setText } from './dom.js';
import { serverNow } from './format.js';

// How fresh the numbers are: when the server read them (generatedAt) and how far they can lag
// the requests (the API's drain plus the collector's flush, plus one flush in flight).
export function createFreshness(node) {
  let latest;
  const render = () => {
    if (!latest) return;
    const age = Math.max(0, Math.round((serverNow() - Date.parse(latest.generatedAt)) / 1000));
    const { drainIntervalMs, flushIntervalMs } = latest.delay;
    const lag = (drainIntervalMs + 2 * flushIntervalMs) / 1000;
    setText(
      node,
      `Numbers read ${age} s ago (${latest.generatedAt}); a request shows up within about ${lag} s (drain ${drainIntervalMs} ms + flush ${flushIntervalMs} ms). Refreshing every 5 s.`,
    );
  };
  setInterval(render, 1000);
  return {
    update(usageResponse) {
      latest = usageResponse;
      node.hidden = false;
      render();
    },
    // Signed out or another view shown: nothing of the last numbers is kept, nor shown again by
    // the timer.
    clear() {
      latest = undefined;
      node.hidden = true;
      setText(node, '');
    },
  };
}
