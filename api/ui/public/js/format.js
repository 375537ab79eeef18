// Counts may arrive as decimal strings (beyond 2^53); they are shown exactly either way.
export const count = (value) => (typeof value === 'number' ? value.toLocaleString('en-US') : String(value));

const UNITS = [
  [86_400_000, 'd'],
  [3_600_000, 'h'],
  [60_000, 'min'],
  [1000, 's'],
];

// Now on the server's clock. The browser's own may be minutes off (no time sync, a laptop
// resumed): measured against it, a use 10 s old read "5 min ago" (or "just now" for minutes),
// the freshness line "300 s ago" on every refresh, and the key page's chart asked for hours the
// server had not reached or left out the current one. The offset is the last usage answer's
// `generatedAt` less the moment its request was sent (api.js). The server stamps `generatedAt`
// before its queries, so measured from the answer's arrival, a slow answer's whole trip was taken
// for the clocks' difference, and the freshness line said "0 s ago" of numbers 12 s old. From the
// send, the page's times are too old by at most the round trip: never told fresher than they are.
let serverOffsetMs = 0;

/** `iso`, the server's time of an answer to a request sent at `sentAt` on this browser's clock. */
export function noteServerTime(iso, sentAt) {
  const at = Date.parse(iso);
  if (Number.isFinite(at)) serverOffsetMs = at - sentAt;
}

export const serverNow = () => Date.now() + serverOffsetMs;

export function relative(iso, now = serverNow()) {
  if (!iso) return 'never';
  const ms = now - Date.parse(iso);
  if (ms < 1000) return 'just now';
  const [size, unit] = UNITS.find(([size]) => ms >= size);
  return `${Math.floor(ms / size)} ${unit} ago`;
}

const pad = (n) => String(n).padStart(2, '0');

// The wall-clock time `east` minutes east of UTC, with its offset: "2026-12-06 09:41:12 UTC+01:00".
function wallClock(date, east) {
  const shifted = new Date(date.getTime() + east * 60_000);
  const offset = `${east < 0 ? '-' : '+'}${pad(Math.floor(Math.abs(east) / 60))}:${pad(Math.abs(east) % 60)}`;
  return `${shifted.toISOString().slice(0, 19).replace('T', ' ')} UTC${offset}`;
}

// Each time names its zone: the ISO string's "Z" read as no zone at all to most people, and the
// browser's local time said nothing of which zone it was in.
export function exact(iso) {
  if (!iso) return null;
  const date = new Date(iso);
  const utc = `${date.toISOString()} UTC`;
  const east = -date.getTimezoneOffset();
  return east === 0 ? utc : `${utc} (${wallClock(date, east)})`;
}
