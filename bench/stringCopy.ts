import { ownCopy } from '../shared/usageWire';
import { median } from './lib/stats';

// What a string of its own costs for a 36-byte id read from a datagram (shared/usageDatagram.ts
// makes its strings from the bytes, shared/usageWire.ts's line parser joins and slices), beside
// the slice they replaced, which keeps its whole datagram alive. The results are kept in a
// 100,000-string ring, as pending keys keep their ids. CPU ns per string, each variant's median
// and worst of `passes` passes, the variants alternated pass by pass.
// Run: npx tsx bench/stringCopy.ts [passes]
const passes = Number(process.argv[2] ?? '5');
const PER_PASS = 2_000_000;
const packet = Buffer.from(`${'x'.repeat(100)}3f0c6b7e-8a1d-4c2b-9e5f-0a1b2c3d4e5f${'y'.repeat(30_000)}`, 'latin1');
const text = packet.toString('latin1');
const ring = new Array<string>(100_000);

const variants: Record<string, () => string> = {
  'slice (keeps the datagram)': () => text.slice(100, 136),
  'joined and sliced (the line parser)': () => ownCopy(text.slice(100, 136)),
  'from the bytes (the byte parser)': () => packet.toString('latin1', 100, 136),
};

const nsOf: Record<string, number[]> = Object.fromEntries(Object.keys(variants).map((name) => [name, []]));
for (let pass = -1; pass < passes; pass++) {
  for (const [name, make] of Object.entries(variants)) {
    const before = process.cpuUsage();
    for (let i = 0; i < PER_PASS; i++) ring[i % ring.length] = make();
    const used = process.cpuUsage(before);
    // Pass -1 warms up.
    if (pass >= 0) nsOf[name].push(((used.user + used.system) * 1000) / PER_PASS);
  }
}
for (const [name, ns] of Object.entries(nsOf)) console.log(`${name}: ${median(ns).toFixed(0)} ns median, ${Math.max(...ns).toFixed(0)} ns worst of ${passes}`);
