// Fault injection for the reliability battery (test/faults/): a TCP proxy in front of PostgreSQL that
// can refuse connections or cut one at a chosen protocol message, the collector as a real process
// (harness/collectorProcess.ts: the Procfile's process, from its source) with a probe preloaded and
// its memory sampled, a paced UDP load generator that remembers when it sent what, and a leak scan
// over everything a test produced. Loopback only; every loop is bounded.
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { Test } from 'tap';
import { createApiKeysService } from '../../api/keys/apiKeys.service';
import { insertOrganization } from '../../api/orgs/orgs.repository';
import type { DatagramSink } from '../../api/usage/usageRecorder';
import { startCollectorProcess, type CollectorProcess } from '../../harness/collectorProcess';
import { processMemory } from '../../harness/processMemory';
import type { Child, ExitStatus } from '../../harness/processes';
import { sleep } from '../../harness/wait';
import { freeTcpPort } from '../../scripts/lib/freePort';
import { loadConfig } from '../../shared/config';
import type { Db } from '../../shared/db';
import { OUTCOMES, encodeUsageLine, packDatagrams, parsePacket, zeroOutcomes, type Outcome, type UsageSample } from '../../shared/usageWire';
import { freshDatabase, hourRows } from './database';

const PROBE = path.join(__dirname, 'collectorProbe.ts');

/** The long variants (PostgreSQL down 10–30 s, a 1,000,000-key flood, sustained load) run with FAULTS_LONG=1. */
export const LONG = process.env.FAULTS_LONG === '1';

// ---------------------------------------------------------------------------------------------
// PostgreSQL through a proxy

export type CutMode =
  /** Forward the matching message, then cut: the server runs it, the client never sees the reply. */
  | 'after-forward'
  /** Cut instead of forwarding the matching message: the server never sees it and rolls back. */
  | 'before-forward'
  /**
   * Forward the matching message, then pass nothing more either way, the sockets left open: a
   * network gone silent (no FIN, no RST), the server's reply never arriving, nor the client's close.
   */
  | 'silence'
  /**
   * Forward the matching statement whole (through its Sync), then pass nothing more either way:
   * the server runs it and waits, in its transaction, for a next statement that never comes, and
   * the client never hears back (a NAT that dropped the connection's state).
   */
  | 'silence-after';

interface Link {
  client: net.Socket;
  upstream: net.Socket;
  silent?: boolean;
  /** 'silence-after': forwarding the statement's remaining messages, silent once its Sync went. */
  silentAfterSync?: () => void;
}

export interface ProxyStats {
  connections: number;
  /** Connections this proxy cut on purpose (down(), cutAll() or an armed cut). */
  cuts: number;
  commitsForwarded: number;
}

/**
 * A TCP proxy between a client and PostgreSQL that reads the frontend protocol (startup packet,
 * then type byte + int32 length messages) so it can act on one particular message: the simple
 * query `COMMIT;` that knex sends at the end of a transaction, or the Parse/Query of any statement.
 */
const QUERY = 0x51; // 'Q'
const SYNC = 0x53; // 'S'

function goSilent(link: Link): void {
  const hit = link.silentAfterSync;
  link.silentAfterSync = undefined;
  link.silent = true;
  hit?.();
}

export class PgProxy {
  readonly stats: ProxyStats = { connections: 0, cuts: 0, commitsForwarded: 0 };
  private server: net.Server | undefined;
  private readonly links = new Set<Link>();
  private armed: { pattern: RegExp; mode: CutMode; remaining: number; hit: () => void } | undefined;

  private constructor(
    private readonly target: { host: string; port: number },
    readonly port: number,
    readonly url: string,
  ) {}

  static async start(databaseUrl: string): Promise<PgProxy> {
    const target = new URL(databaseUrl);
    const port = await freeTcpPort();
    const proxied = new URL(databaseUrl);
    proxied.hostname = '127.0.0.1';
    proxied.port = String(port);
    const proxy = new PgProxy({ host: target.hostname, port: Number(target.port) }, port, proxied.toString());
    await proxy.up();
    return proxy;
  }

  get isUp(): boolean {
    return this.server !== undefined;
  }

  /** Listens again on the same port: PostgreSQL is back. */
  async up(): Promise<void> {
    if (this.server) return;
    const server = net.createServer((client) => this.accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
  }

  /** PostgreSQL is gone: open connections are cut and new ones are refused (the port is closed). */
  async down(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    this.cutAll();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Cuts every open connection, leaving the listener up (a network blip, or a restarted pgbouncer). */
  cutAll(): void {
    for (const link of this.links) this.cut(link, false, true);
  }

  /**
   * Arms a cut at the next `count` client messages (simple Query or extended-protocol Parse) whose
   * SQL matches `pattern`. Resolves when the last armed cut has happened.
   */
  cutAt(pattern: RegExp, mode: CutMode, count = 1): Promise<void> {
    return new Promise((resolve) => {
      this.armed = { pattern, mode, remaining: count, hit: resolve };
    });
  }

  disarm(): void {
    this.armed = undefined;
  }

  async close(): Promise<void> {
    this.disarm();
    await this.down();
  }

  private cut(link: Link, upstreamGracefully = false, deliberate = false): void {
    if (!this.links.delete(link)) return;
    if (deliberate) this.stats.cuts += 1;
    link.client.destroy();
    if (upstreamGracefully) {
      // FIN after the bytes already written, so the server reads them before it sees the end.
      link.upstream.end();
      setTimeout(() => link.upstream.destroy(), 2000).unref();
    } else {
      link.upstream.destroy();
    }
  }

  private accept(client: net.Socket): void {
    this.stats.connections += 1;
    const upstream = net.connect(this.target.port, this.target.host);
    const link: Link = { client, upstream };
    this.links.add(link);
    // Gone silent, the client's close (or reset) does not reach the server either (a NAT that
    // dropped the connection's state): its session stays, until the server gives up on it or down().
    client.on('error', () => !link.silent && this.cut(link));
    upstream.on('error', () => this.cut(link));
    client.on('close', () => !link.silent && this.cut(link, true));
    upstream.on('close', () => this.cut(link));
    upstream.on('data', (chunk: Buffer) => {
      if (this.links.has(link) && !link.silent) client.write(chunk);
    });

    let buffered: Buffer = Buffer.alloc(0);
    let startedUp = false;
    client.on('data', (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      for (;;) {
        if (!this.links.has(link) || link.silent) return;
        const size = messageSize(buffered, startedUp);
        if (size === undefined || buffered.length < size) return;
        const message = buffered.subarray(0, size);
        buffered = buffered.subarray(size);
        if (!startedUp) {
          // SSLRequest / GSSENCRequest are followed by the real startup packet.
          const code = message.readInt32BE(4);
          startedUp = code !== 80877103 && code !== 80877104;
          upstream.write(message);
          continue;
        }
        if (link.silentAfterSync) {
          upstream.write(message);
          if (message[0] === SYNC) goSilent(link);
          continue;
        }
        const sql = sqlOf(message);
        const armed = this.armed;
        if (sql !== undefined && armed && armed.pattern.test(sql)) {
          armed.remaining -= 1;
          if (armed.remaining <= 0) this.armed = undefined;
          const forwarded = armed.mode !== 'before-forward';
          if (forwarded) upstream.write(message);
          if (/^\s*commit\b/i.test(sql) && forwarded) this.stats.commitsForwarded += 1;
          const hit = () => armed.remaining <= 0 && armed.hit();
          // A simple Query is whole; an extended one ends with its Sync.
          if (armed.mode === 'silence-after' && message[0] !== QUERY) {
            link.silentAfterSync = hit;
            continue;
          }
          if (armed.mode === 'silence' || armed.mode === 'silence-after') link.silent = true;
          else this.cut(link, forwarded, true);
          hit();
          return;
        }
        if (sql !== undefined && /^\s*commit\b/i.test(sql)) this.stats.commitsForwarded += 1;
        upstream.write(message);
      }
    });
  }
}

function messageSize(buffer: Buffer, startedUp: boolean): number | undefined {
  if (!startedUp) return buffer.length >= 4 ? buffer.readInt32BE(0) : undefined;
  return buffer.length >= 5 ? 1 + buffer.readInt32BE(1) : undefined;
}

// 'Q' (simple query): the SQL, NUL-terminated. 'P' (Parse): a statement name, NUL, then the SQL.
function sqlOf(message: Buffer): string | undefined {
  const type = String.fromCharCode(message[0]);
  if (type === 'Q') return message.toString('utf8', 5, message.indexOf(0, 5));
  if (type === 'P') {
    const nameEnd = message.indexOf(0, 5);
    return message.toString('utf8', nameEnd + 1, message.indexOf(0, nameEnd + 1));
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// The collector as a real process

/** What the collector's UDP socket handed to the application, counted by a preloaded probe. */
export interface ProbeCounts {
  packets: number;
  usageLines: number;
  uses: number;
  exitCode: number;
}

export interface FaultCollector extends CollectorProcess {
  /** Every stdout/stderr line, for assertions and the leak scan. */
  readonly output: string[];
  /** The pino lines of stdout, parsed. */
  logs(): Array<Record<string, unknown>>;
  /** Peak RSS seen so far (sampled every 50 ms, and VmHWM is itself a high-water mark). */
  peakRssBytes(): number;
  baselineRssBytes: number;
  readonly exited: Promise<ExitStatus>;
  probe(): ProbeCounts | undefined;
  sigterm(): Promise<ExitStatus>;
  sigkill(): Promise<void>;
}

export interface FaultCollectorOptions {
  databaseUrl: string;
  udpPort?: number;
  flushIntervalMs: number;
  maxPendingKeys?: number;
  /** More variables for the collector, e.g. COLLECTOR_RECEIVERS. */
  env?: Record<string, string>;
}

/** The collector process of harness/collectorProcess.ts with the probe preloaded, logging at info, killed at teardown. */
export async function spawnCollector(t: Test, options: FaultCollectorOptions): Promise<FaultCollector> {
  const collector = await startCollectorProcess(options.databaseUrl, {
    udpPort: options.udpPort,
    preload: [PROBE],
    keepOutput: true,
    env: {
      COLLECTOR_FLUSH_INTERVAL_MS: String(options.flushIntervalMs),
      COLLECTOR_MAX_PENDING_KEYS: String(options.maxPendingKeys ?? 100_000),
      LOG_LEVEL: 'info',
      // The child runs under tsx, whose transpiled code does not map onto tap's coverage of the
      // same files; recording it would corrupt the merged report.
      _TAPJS_PROCESSINFO_COVERAGE_: '0',
      ...options.env,
    },
  });
  const { child } = collector;
  const memory = memorySampler(child);
  const sigkill = async () => {
    memory.sample();
    child.proc.kill('SIGKILL');
    await child.exited;
  };
  t.teardown(sigkill);
  return {
    ...collector,
    output: child.lines,
    logs: () => jsonLines(child.lines),
    baselineRssBytes: memory.baseline,
    peakRssBytes: memory.peak,
    exited: child.exited,
    probe: () => probeCounts(child.lines),
    sigterm: async () => {
      memory.sample();
      child.proc.kill('SIGTERM');
      const result = await child.exited;
      await sleep(20); // the stderr line the probe wrote at exit
      return result;
    },
    sigkill,
  };
}

function jsonLines(lines: readonly string[]): Array<Record<string, unknown>> {
  return lines.flatMap((line) => {
    if (!line.startsWith('{')) return [];
    try {
      return [JSON.parse(line) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
}

// One line per process: with COLLECTOR_RECEIVERS > 1 the workers' counts add up (the primary's
// are 0), and any non-zero exit code is the one reported.
function probeCounts(lines: readonly string[]): ProbeCounts | undefined {
  const probes = lines.filter((l) => l.startsWith('{"collectorProbe"')).map((l) => (JSON.parse(l) as { collectorProbe: ProbeCounts }).collectorProbe);
  if (probes.length === 0) return undefined;
  return probes.reduce((sum, p) => ({
    packets: sum.packets + p.packets,
    usageLines: sum.usageLines + p.usageLines,
    uses: sum.uses + p.uses,
    exitCode: sum.exitCode || p.exitCode,
  }));
}

// The peak resident set of a child, sampled every 50 ms until it exits and on demand.
function memorySampler(child: Child) {
  let peak = 0;
  const sample = () => {
    try {
      const memory = processMemory(child.proc.pid!);
      // A process that is exiting has no Vm* lines any more (NaN): keep what was seen.
      for (const value of [memory.peakRss, memory.rss]) if (Number.isFinite(value)) peak = Math.max(peak, value);
    } catch {
      // Gone: keep what was seen.
    }
  };
  sample();
  const baseline = peak === 0 ? 0 : processMemory(child.proc.pid!).rss;
  const sampler = setInterval(sample, 50).unref();
  void child.exited.then(() => clearInterval(sampler));
  return {
    sample,
    baseline,
    peak: () => {
      sample();
      return peak;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// UDP load

export interface Shipment {
  datagram: string;
  uses: number;
}

/**
 * Sends datagrams over one socket, remembering the cumulative uses sent and when, so a test can ask
 * how many uses were sent before a given instant.
 */
export class UdpSender {
  private readonly socket = dgram.createSocket('udp4');
  readonly timeline: Array<{ at: number; uses: number }> = [];
  sentUses = 0;
  datagrams = 0;
  errors = 0;

  constructor(public port: number) {
    this.socket.on('error', () => (this.errors += 1));
  }

  async send(shipments: readonly Shipment[]): Promise<void> {
    for (const { datagram, uses } of shipments) {
      await new Promise<void>((resolve) =>
        this.socket.send(datagram, this.port, '127.0.0.1', (error) => {
          if (error) this.errors += 1;
          resolve();
        }),
      );
      this.sentUses += uses;
      this.datagrams += 1;
    }
    this.timeline.push({ at: Date.now(), uses: this.sentUses });
  }

  /** Uses whose datagram had been sent at or before `at`. */
  usesSentBy(at: number): number {
    let uses = 0;
    for (const point of this.timeline) {
      if (point.at > at) break;
      uses = point.uses;
    }
    return uses;
  }

  /**
   * Sends `next()` shipments every `tickMs` until `stop()` is true or `maxMs` has passed; resolves
   * with the number of ticks. A paced stream, not a flood: loopback must not drop what we count.
   */
  async stream(next: (tick: number) => Shipment[], options: { tickMs: number; maxMs: number; stop?: () => boolean }): Promise<number> {
    const deadline = Date.now() + options.maxMs;
    let tick = 0;
    while (Date.now() < deadline && !options.stop?.()) {
      const started = Date.now();
      await this.send(next(tick));
      tick += 1;
      await sleep(Math.max(0, options.tickMs - (Date.now() - started)));
    }
    return tick;
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}

/** Uses in a packet as the collector counts them (the parser is the oracle). */
export function usesIn(packet: string): number {
  let uses = 0;
  parsePacket(packet, (sample) => (uses += sample.count));
  return uses;
}

/** A DatagramSink that keeps a copy of every datagram the API produced before handing it on. */
export function recordingSink(inner: DatagramSink, into: string[]): DatagramSink {
  return {
    send(datagram, done) {
      into.push(datagram);
      inner.send(datagram, done);
    },
    close: () => inner.close(),
  };
}

// ---------------------------------------------------------------------------------------------
// Figures and the leak scan

/**
 * Prints the figures a test measured as one `# FIGURES <name> {json}` comment, for docs/reliability.md,
 * and appends them to $FAULTS_FIGURES_FILE when set.
 */
export function reportFigures(t: Test, name: string, figures: Record<string, unknown>): void {
  const line = `FIGURES ${name} ${JSON.stringify({ long: LONG, ...figures })}`;
  t.comment(line);
  if (process.env.FAULTS_FIGURES_FILE) fs.appendFileSync(process.env.FAULTS_FIGURES_FILE, `${line}\n`);
}

/** Every encoding in which a stored hash could show up in text. */
function hashForms(hash: Buffer): string[] {
  return [hash.toString('hex'), `\\x${hash.toString('hex')}`, hash.toString('base64'), hash.toString('base64url'), JSON.stringify(hash.toJSON().data)];
}

/**
 * Everything a test file produced — response bodies, log lines, datagrams — searched at the end for
 * any plaintext key, its secret part, and any stored hash (current or previous) in any encoding.
 */
export class LeakScan {
  private readonly sources: Array<{ name: string; texts: () => readonly string[] }> = [];
  private readonly plaintexts = new Set<string>();
  private readonly hashes = new Set<string>();

  /** A source is read at scan time, so it may keep growing until then. */
  watch(name: string, texts: () => readonly string[]): void {
    this.sources.push({ name, texts });
  }

  plaintext(key: string): void {
    this.plaintexts.add(key);
  }

  /** Reads every stored hash (current and previous) of a database now, before the test drops it. */
  async hashesFrom(db: Db): Promise<void> {
    const rows: Array<{ secret_hash: Buffer; previous_secret_hash: Buffer | null }> = await db('api_keys').select('secret_hash', 'previous_secret_hash');
    for (const row of rows) {
      for (const hash of [row.secret_hash, row.previous_secret_hash]) if (hash) for (const form of hashForms(hash)) this.hashes.add(form);
    }
  }

  secrets(): string[] {
    const secrets = new Set<string>(this.hashes);
    for (const key of this.plaintexts) {
      secrets.add(key);
      secrets.add(key.slice(36, 79)); // the secret alone, without ku_<id>_ and the checksum
    }
    return [...secrets];
  }

  scan(): { texts: number; bytes: number; secrets: number; hits: Array<{ source: string; secret: string }> } {
    const secrets = this.secrets();
    const hits: Array<{ source: string; secret: string }> = [];
    let texts = 0;
    let bytes = 0;
    for (const source of this.sources) {
      for (const text of source.texts()) {
        texts += 1;
        bytes += text.length;
        for (const secret of secrets) if (text.includes(secret)) hits.push({ source: source.name, secret: `${secret.slice(0, 6)}…` });
      }
    }
    return { texts, bytes, secrets: secrets.length, hits };
  }
}

// ---------------------------------------------------------------------------------------------
// Seeding and traffic

export interface SeededKey {
  id: string;
  plaintext: string;
}

/** An org with `count` keys, created through the service as the API and the CLI do. */
export async function seedKeys(db: Db, name: string, count: number): Promise<{ orgId: string; keys: SeededKey[] }> {
  const org = await insertOrganization(db, name);
  const service = createApiKeysService({ db, pepper: loadConfig({ NODE_ENV: 'test' }).api.keyPepper, defaultGraceSeconds: 60, now: Date.now });
  const keys: SeededKey[] = [];
  for (let i = 0; i < count; i += 1) {
    const created = await service.create(org.id, { name: `${name}-${i}`, scopes: ['keys:read'], expiresAt: null });
    keys.push({ id: created.key.id, plaintext: created.plaintext });
  }
  return { orgId: org.id, keys };
}

/**
 * A fresh database holding an org of `count` keys made through the service: the setup of every
 * fault test that drives a collector. With `leaks`, every key's plaintext and stored hash are
 * known to it.
 */
export async function databaseWithKeys(t: Test, name: string, count: number, options: { poolMax?: number; leaks?: LeakScan } = {}) {
  const { db, url } = await freshDatabase(t, { poolMax: options.poolMax });
  const { orgId, keys } = await seedKeys(db, name, count);
  if (options.leaks) {
    await options.leaks.hashesFrom(db);
    for (const key of keys) options.leaks.plaintext(key.plaintext);
  }
  return { db, url, orgId, keys };
}

/** Encodes samples the way the API does and packs them into ≤ 1432-byte datagrams. */
export function shipmentsOf(samples: readonly UsageSample[]): Shipment[] {
  return packDatagrams(samples.map(encodeUsageLine)).map((datagram) => ({ datagram, uses: usesIn(datagram) }));
}

/** Expected per-key totals, kept beside the traffic that produces them. */
export class Ledger {
  readonly byKey = new Map<string, number>();
  readonly byKeyOutcome = new Map<string, Record<Outcome, number>>();
  total = 0;

  add(samples: readonly UsageSample[]): readonly UsageSample[] {
    for (const s of samples) {
      this.byKey.set(s.keyId, (this.byKey.get(s.keyId) ?? 0) + s.count);
      const outcomes = this.byKeyOutcome.get(s.keyId) ?? zeroOutcomes();
      outcomes[s.outcome] += s.count;
      this.byKeyOutcome.set(s.keyId, outcomes);
      this.total += s.count;
    }
    return samples;
  }
}

// Every outcome, proven or failed: the fault battery checks that each line sent is counted once,
// whichever of the two kinds it is.
const everyOutcome = (row: Record<string, unknown>) => OUTCOMES.reduce((sum, outcome) => sum + Number(row[`${outcome}_count`]), 0);

/** Per-key totals (every outcome), outcome counts, hourly and IP sums as PostgreSQL holds them. */
export async function persistedUsage(db: Db, keyIds: readonly string[]) {
  const rows: Array<Record<string, number | string>> = await db('api_key_usage').whereIn('key_id', keyIds);
  const hourly = new Map<string, number>();
  for (const row of await hourRows(db, keyIds)) hourly.set(row.key_id, (hourly.get(row.key_id) ?? 0) + everyOutcome(row));
  const ips: Array<{ key_id: string; total: number; ips: number }> = await db
    .from(
      db('api_key_recent_ips')
        .select('key_id', 'ip', 'request_count as n')
        .unionAll(db('api_key_failed_ips').select('key_id', 'ip', 'attempt_count as n'))
        .as('both'),
    )
    .whereIn('key_id', keyIds)
    .groupBy('key_id')
    .select('key_id', db.raw('sum(n) as total'), db.raw('count(distinct ip)::int as ips'));
  const byKey = new Map(rows.map((row) => [String(row.key_id), row]));
  const outcomes = (keyId: string) => Object.fromEntries(OUTCOMES.map((o) => [o, Number(byKey.get(keyId)?.[`${o}_count`] ?? 0)])) as Record<Outcome, number>;
  const count = (keyId: string) => Object.values(outcomes(keyId)).reduce((sum, n) => sum + n, 0);
  return {
    total: [...byKey.keys()].reduce((sum, keyId) => sum + count(keyId), 0),
    count,
    outcomes,
    hourly,
    ips: new Map(ips.map((row) => [row.key_id, { total: Number(row.total), ips: row.ips }])),
    rows: rows.length,
  };
}

/** Keys whose persisted count differs from the ledger, as `id: persisted≠expected`. */
export async function countMismatches(db: Db, ledger: Ledger): Promise<string[]> {
  const persisted = await persistedUsage(db, [...ledger.byKey.keys()]);
  const wrong: string[] = [];
  for (const [keyId, expected] of ledger.byKey) {
    if (persisted.count(keyId) !== expected) wrong.push(`${keyId}: ${persisted.count(keyId)}≠${expected}`);
  }
  return wrong;
}

/**
 * A full garbage collection, so heap figures measure what is retained rather than what is merely
 * not collected yet (the test runner does not start node with --expose-gc).
 */
export function collectGarbage(): void {
  v8.setFlagsFromString('--expose-gc');
  (vm.runInNewContext('gc') as () => void)();
}
