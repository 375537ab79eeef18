import t from 'tap';
import { networkOf } from '../shared/ipTruncation';
import { canonicalIpv6 } from '../shared/ipv6Canonical';

// The network key.new_ip compares, of an address as the collector keeps it: equal strings for
// addresses of one /24 or /64, different ones otherwise, whatever the '::' stands for.
t.test('networkOf: one string per /24 or /64', async (t) => {
  const same = (a: string, b: string) => networkOf(canonicalIpv6(a)) === networkOf(canonicalIpv6(b));
  t.equal(networkOf('203.0.113.7'), networkOf('203.0.113.250'), 'an IPv4 /24');
  t.not(networkOf('203.0.113.7'), networkOf('203.0.114.7'));
  t.ok(same('2001:db8:1:2::1', '2001:db8:1:2:ffff::'), 'four groups written out');
  t.ok(same('2001:db8::1', '2001:db8:0:0:1::'), "'::' in the first four groups, or after them");
  t.ok(same('::1', '0:0:0:0:1::'), 'from the first group');
  t.notOk(same('2001:db8::1', '2001:db8:0:1::1'));
  t.notOk(same('fe80::1', 'fe80:0:0:1::'));
  // Against the /64 read group by group, for addresses with runs of zeros anywhere.
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  for (let i = 0; i < 2000; i++) {
    const groups = Array.from({ length: 8 }, () => (random() < 0.4 ? 0 : Math.floor(random() * 65536)));
    const kept = canonicalIpv6(groups.map((g) => g.toString(16)).join(':'));
    if (!kept.includes(':')) continue; // an IPv4-mapped one, kept as IPv4
    const expected = groups
      .slice(0, 4)
      .map((g) => g.toString(16))
      .join(':');
    if (networkOf(kept) !== expected) t.fail(`${kept}: ${networkOf(kept)}, not ${expected}`);
  }
});
