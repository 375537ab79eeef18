import { z } from 'zod';
import { OUTCOMES } from '../../shared/usageWire';
import type { KeyUsageView } from './usage.service';

// The usage list as CSV, one row per key: what an access review reads in a spreadsheet (AWS IAM's
// credential report), with who answers for each key. RFC 4180: CRLF line ends, a field quoted when
// it holds a comma, a quote or a line end.

type Cell = string | number | boolean | null;

// A spreadsheet runs a cell starting with one of these as a formula (CSV injection, OWASP). A key's
// name and owner are whatever a keys:write holder typed: written with a leading ' they are shown
// as the text they are. Every other field is an id, a time, an address, a count or a word of ours.
const FORMULA_START = /^[=+\-@\t\r]/;
const asText = (value: string | null) => (value !== null && FORMULA_START.test(value) ? `'${value}` : value);

const COLUMNS: ReadonlyArray<readonly [header: string, cell: (key: KeyUsageView) => Cell]> = [
  ['id', (key) => key.id],
  ['name', (key) => asText(key.name)],
  ['owner', (key) => asText(key.owner)],
  ['displayPrefix', (key) => key.displayPrefix],
  ['status', (key) => key.status],
  ['scopes', (key) => key.scopes.join(' ')],
  ['createdAt', (key) => key.createdAt],
  ['createdByKeyId', (key) => key.createdByKeyId],
  ['expiresAt', (key) => key.expiresAt],
  ['revokedAt', (key) => key.revokedAt],
  ['restorableUntil', (key) => key.restorableUntil],
  ['lastUsedAt', (key) => key.lastUsedAt],
  ['lastUsedIp', (key) => key.lastUsedIp],
  ['dormant', (key) => key.dormant],
  ['requestCount', (key) => key.requestCount],
  ...OUTCOMES.map((outcome) => [`outcomes.${outcome}`, (key: KeyUsageView) => key.outcomes[outcome] ?? 0] as const),
  ['requests.last24h', (key) => key.requests.last24h],
  ['requests.last7d', (key) => key.requests.last7d],
  ['requests.last30d', (key) => key.requests.last30d],
  ['failedAttempts', (key) => key.failedAttempts],
  ['lastFailedAt', (key) => key.lastFailedAt],
  ['lastFailedIp', (key) => key.lastFailedIp],
  ['lastRevokedUseAt', (key) => key.lastRevokedUseAt],
  ['lastExpiredUseAt', (key) => key.lastExpiredUseAt],
  ['previousSecretExpiresAt', (key) => key.previousSecretExpiresAt],
  ['previousSecretLastUsedAt', (key) => key.previousSecretLastUsedAt],
  ['events.recent', (key) => Object.values(key.events.counts).reduce((sum, n) => sum + (n ?? 0), 0)],
  ['events.latestAt', (key) => key.events.latestAt],
];

function csvField(value: Cell): string {
  if (value === null) return '';
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

const csvLine = (cells: readonly Cell[]) => `${cells.map(csvField).join(',')}\r\n`;

/** The report's first line: the columns' names. */
export const CSV_HEADER = csvLine(COLUMNS.map(([header]) => header));

/** The report as the API document describes it. */
export const usageCsv = z.string().meta({
  id: 'KeyUsageCsv',
  description: `A header line, then one line per key. Columns: ${COLUMNS.map(([header]) => header).join(', ')}. A name or owner starting with =, +, -, @, a tab or a carriage return is written with a leading ' (a spreadsheet would run it as a formula).`,
});

/** Keys as the report's lines, in their order. */
export const csvRows = (keys: readonly KeyUsageView[]) => keys.map((key) => csvLine(COLUMNS.map(([, cell]) => cell(key)))).join('');
