// Counts may arrive as decimal strings (beyond 2^53); they are shown exactly either way.
export const count = (value) => (typeof value === 'number' ? value.toLocaleString('en-US') : String(value));

const UNITS = [
  [86_400_000, 'd'],
  [3_600_000, 'h'],
  [60_000, 'min'],
  [1000, 's'],
];

export function relative(iso, now = Date.now()) {
  if (!iso) return 'never';
  const ms = now - Date.parse(iso);
  if (ms < 1000) return 'just now';
  const [size, unit] = UNITS.find(([size]) => ms >= size);
  return `${Math.floor(ms / size)} ${unit} ago`;
}

export const exact = (iso) => (iso ? `${iso} (${new Date(iso).toLocaleString()})` : null);
