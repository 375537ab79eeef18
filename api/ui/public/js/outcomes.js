// The outcomes of shared/usageWire.ts in stacking order, uses first, the failed attempt last,
// with Okabe–Ito colours (distinguishable with every common colour-vision deficiency).
export const OUTCOMES = [
  { name: 'ok', label: 'ok', colour: '#009E73' },
  { name: 'forbidden', label: 'forbidden (scope)', colour: '#E69F00' },
  { name: 'cross_org', label: 'other org', colour: '#CC79A7' },
  { name: 'expired', label: 'expired', colour: '#56B4E9' },
  { name: 'revoked', label: 'revoked', colour: '#D55E00' },
  { name: 'bad_secret', label: 'failed attempt (wrong secret)', colour: '#0072B2' },
];
