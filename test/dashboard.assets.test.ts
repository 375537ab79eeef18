import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';

// The page asks for every module at once (modulepreload) instead of discovering them import by
// import; a module added without its preload line would bring the waterfall back.
const PUBLIC = path.join(__dirname, '..', 'api', 'ui', 'public');

t.test('index.html preloads every dashboard module, and only those', async (t) => {
  const html = fs.readFileSync(path.join(PUBLIC, 'index.html'), 'utf8');
  const preloaded = [...html.matchAll(/<link rel="modulepreload" href="\/ui\/js\/([\w.]+)" ?\/?>/g)].map((m) => m[1]).sort();
  const modules = fs
    .readdirSync(path.join(PUBLIC, 'js'))
    .filter((name) => name.endsWith('.js') && name !== 'main.js')
    .sort();
  t.strictSame(preloaded, modules);
});
