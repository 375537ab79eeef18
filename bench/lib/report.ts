import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface Table {
  title?: string;
  columns: string[];
  rows: Array<Array<string | number>>;
}

export interface BenchResult {
  /** One of bench/headings.ts; the test suite looks for it in the output. */
  heading: string;
  tables: Table[];
  notes: string[];
  /** Everything measured, for bench/results/*.json. */
  raw: unknown;
}

export interface MachineInfo {
  cores: number;
  cpuModel: string;
  node: string;
  platform: string;
  kernel: string;
  memoryGiB: number;
  rmemMax: number | null;
  rmemDefault: number | null;
  loadAverage: number[];
  postgres?: string;
}

function readNumber(file: string): number | null {
  try {
    return Number(fs.readFileSync(file, 'utf8').trim());
  } catch {
    return null;
  }
}

export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    cores: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    node: process.version,
    platform: `${os.platform()}-${os.arch()}`,
    kernel: os.release(),
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    rmemMax: readNumber('/proc/sys/net/core/rmem_max'),
    rmemDefault: readNumber('/proc/sys/net/core/rmem_default'),
    loadAverage: os.loadavg().map((l) => Math.round(l * 100) / 100),
  };
}

export function machineLine(m: MachineInfo): string {
  const load = os
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
  return (
    `Machine: ${m.cores} cores × ${m.cpuModel}, ${m.memoryGiB} GiB, Node ${m.node}, ${m.platform} ${m.kernel}, ` +
    `net.core.rmem_max ${m.rmemMax ?? 'n/a'} B (rmem_default ${m.rmemDefault ?? 'n/a'} B)` +
    `${m.postgres ? `, ${m.postgres}` : ''}, load average now ${load}`
  );
}

export function markdownTable(table: Table): string {
  const cell = (value: string | number) => String(value).replace(/\|/g, '\\|');
  const lines = [
    `| ${table.columns.map(cell).join(' | ')} |`,
    `| ${table.columns.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
    ...table.rows.map((row) => `| ${row.map(cell).join(' | ')} |`),
  ];
  return (table.title ? `**${table.title}**\n\n` : '') + lines.join('\n');
}

export function renderResult(result: BenchResult, machine: MachineInfo): string {
  const parts = [`## ${result.heading}`, machineLine(machine), ...result.tables.map(markdownTable)];
  if (result.notes.length > 0) parts.push(result.notes.map((note) => `- ${note}`).join('\n'));
  return parts.join('\n\n') + '\n';
}

export function writeResults(file: string, content: unknown): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(content, null, 2) + '\n');
}

// Formatting: fixed precision chosen per quantity, so tables line up and stay readable.
export const fmt = {
  int: (v: number) => (Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : 'n/a'),
  fixed: (v: number, digits = 2) => (Number.isFinite(v) ? v.toFixed(digits) : 'n/a'),
  ratio: (v: number) => (Number.isFinite(v) ? v.toFixed(3) : 'n/a'),
  interval: (low: number, high: number) => (Number.isFinite(low) ? `[${low.toFixed(3)}, ${high.toFixed(3)}]` : 'n/a'),
  pct: (v: number, digits = 2) => (Number.isFinite(v) ? `${(v * 100).toFixed(digits)} %` : 'n/a'),
  ms: (v: number, digits = 1) => (Number.isFinite(v) ? `${v.toFixed(digits)} ms` : 'n/a'),
  us: (v: number, digits = 1) => (Number.isFinite(v) ? `${v.toFixed(digits)} µs` : 'n/a'),
  ns: (v: number) => (Number.isFinite(v) ? `${Math.round(v).toLocaleString('en-US')} ns` : 'n/a'),
  mib: (bytes: number) => (Number.isFinite(bytes) ? `${(bytes / 2 ** 20).toFixed(1)} MiB` : 'n/a'),
  verdict: (met: boolean) => (met ? 'met' : 'MISSED'),
};
