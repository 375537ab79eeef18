// Building and updating the page without innerHTML: every value from the API goes in as text,
// so a key named `<img src=x onerror=…>` is shown, never parsed.

export function el(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'text') node.textContent = String(value);
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

export function svg(tag, attributes = {}, children = []) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === 'text') node.textContent = String(value);
    else node.setAttribute(name, String(value));
  }
  node.append(...children);
  return node;
}

// A name from the API quoted inside a sentence, between U+2068 and U+2069 (first-strong isolate,
// pop directional isolate), so that its direction marks cannot reorder the rest of the sentence,
// such as a confirmation's "will be refused with 401". The bidirectional controls a name may hold
// (stored before the API refused them) are dropped first: a U+2069 in it closed the isolate early,
// and an override after it reversed the rest of the sentence. So are line and paragraph
// separators (refused since 2026-12-08), which broke the sentence's line as a newline does.
const UNSAFE_IN_SENTENCE = /[\u202A-\u202E\u2066-\u2069\u2028\u2029]/gu;

export function isolate(name) {
  return `\u2068${String(name).replace(UNSAFE_IN_SENTENCE, '')}\u2069`;
}

// Writes only what changed: a refresh leaves untouched nodes alone (no flicker, selection kept).
export function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

// An alert is announced when its text changes: the same refusal twice (Save clicked again) was
// shown but told once. Emptied, then refilled a moment later, it is told again. An action's
// outcome only: a refresh's error repeated every 5 s is not told every 5 s.
const RETELL_AFTER_MS = 100;
export function tellAgain(node, text) {
  const value = String(text);
  if (node.textContent !== value) {
    node.textContent = value;
    return;
  }
  node.textContent = '';
  setTimeout(() => {
    // Something else was shown meanwhile: it stays.
    if (node.textContent === '') node.textContent = value;
  }, RETELL_AFTER_MS);
}

export function setAttr(node, name, value) {
  if (value === null || value === undefined) node.removeAttribute(name);
  else if (node.getAttribute(name) !== String(value)) node.setAttribute(name, String(value));
}
