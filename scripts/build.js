// `npm run build`, and the first step of `npm start`, `npm run migrate` and `npm run cli`: brings
// dist/ up to date with an incremental `tsc -b` (about a second when nothing changed), then removes
// compiled files whose source is gone, so a renamed migration never runs twice from dist/.
// Plain JavaScript: it runs before anything is compiled.
//
// --or-use-existing: without TypeScript (a production install, `npm ci --omit=dev`), use the dist/
// that was shipped rather than fail. A release shipped as the README says (package.json, the
// lockfile, the Procfile and dist/) has no scripts/: there `npm run migrate` runs its dist/ as is
// (its check for this file is a `node -e`, not a shell test, so it runs under cmd.exe too).
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const DIST = path.join(ROOT, 'dist');
const CONFIG = path.join(ROOT, 'tsconfig.build.json');
// The dashboard ships as static files, not compiled: copied beside its compiled router.
const STATIC_DIRS = [path.join('api', 'ui', 'public')];

function typescriptCompiler() {
  try {
    return require.resolve('typescript/bin/tsc', { paths: [ROOT] });
  } catch {
    return undefined;
  }
}

function removeOrphans(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name);
    if (STATIC_DIRS.some((staticDir) => file === path.join(DIST, staticDir))) continue;
    if (entry.isDirectory()) removeOrphans(file);
    else if (file.endsWith('.js') && !fs.existsSync(path.join(ROOT, path.relative(DIST, file)).replace(/\.js$/, '.ts'))) fs.rmSync(file);
  }
}

function main() {
  const tsc = typescriptCompiler();
  if (!tsc) {
    if (process.argv.includes('--or-use-existing') && fs.existsSync(path.join(DIST, 'scripts', 'start.js'))) return 0;
    console.error(
      'dist/ is built with TypeScript, a development dependency that is not installed here: run `npm ci` ' +
        '(without --omit=dev) and `npm run build`, or deploy a dist/ built elsewhere with `npm run build`.',
    );
    return 1;
  }
  if (!fs.existsSync(DIST)) console.error('Compiling to dist/ (npm run build); later starts recompile only what changed.');
  const result = spawnSync(process.execPath, [tsc, '-b', CONFIG], { cwd: ROOT, stdio: 'inherit' });
  if (result.status !== 0) return result.status ?? 1;
  removeOrphans(DIST);
  copyStaticFiles(DIST);
  return 0;
}

function copyStaticFiles(dist) {
  for (const staticDir of STATIC_DIRS) {
    fs.rmSync(path.join(dist, staticDir), { recursive: true, force: true });
    fs.cpSync(path.join(ROOT, staticDir), path.join(dist, staticDir), { recursive: true });
  }
}

process.exitCode = main();
