// `npm run lint`. typescript-eslint's type-checked recommended rules on the TypeScript (among them
// no-floating-promises, no-misused-promises and await-thenable: a promise nobody awaits or handles),
// ESLint's recommended rules on the plain JavaScript. Layout is Prettier's job (`npm run format:check`).
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import globals from 'globals';
import tseslint from 'typescript-eslint';

const UNTYPED_VALUE_RULES = {
  '@typescript-eslint/no-unsafe-argument': 'off',
  '@typescript-eslint/no-unsafe-assignment': 'off',
  '@typescript-eslint/no-unsafe-call': 'off',
  '@typescript-eslint/no-unsafe-member-access': 'off',
  '@typescript-eslint/no-unsafe-return': 'off',
};

export default defineConfig(
  { ignores: ['dist/', 'coverage/', '.tap/', 'bench/results/', '.data/', '.citus/', 'node_modules/'] },
  js.configs.recommended,
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.recommendedTypeChecked],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      // Off until raw SQL results are typed at the repository boundary (issue 12): knex's `raw` returns `any`,
      // the source of most of these findings; no-explicit-any stays on, so no new `any` is written by hand.
      ...UNTYPED_VALUE_RULES,
      // A CommonJS project: the few require() calls load plain JavaScript or a computed path on purpose.
      '@typescript-eslint/no-require-imports': 'off',
      // `_name` marks a parameter a signature needs but the body does not (Express's error handler's
      // `next`); `const { omitted, ...rest } = row` is how a field is left out.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', ignoreRestSiblings: true }],
      // The only control characters in regular expressions are in the sanitisers that remove them.
      'no-control-regex': 'off',
      // A variable that a closure (a teardown, a handler) reads before its assignment has to stay `let`.
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // tap queues subtests itself and runs them in order; its `t.test()` promise needs no await.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafePromises: [{ from: 'package', name: 'PromiseWithSubtest', package: '@tapjs/core' }] },
      ],
      // An `async (t) => …` test body without an await is harmless: tap awaits whatever it returns.
      '@typescript-eslint/require-await': 'off',
      // Tests read untyped JSON bodies and rows and assert on their shape; typing each one adds nothing.
      '@typescript-eslint/no-explicit-any': 'off',
      // Tests save a method to put it back after patching it (process.stdout.write, Socket#emit).
      '@typescript-eslint/unbound-method': 'off',
    },
  },
  {
    // The raw rows of hand-written SQL, and the demo's API responses: `any` until the repositories type
    // their raw results (issue 12, with the no-unsafe-* rules above).
    files: ['api/usage/usage.repository.ts', 'collector/eventStore.ts', 'collector/webhookStore.ts', 'scripts/demoTraffic.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    // The dashboard: ES modules served as they are to the browser.
    files: ['api/ui/public/**/*.js'],
    languageOptions: { sourceType: 'module', globals: globals.browser },
  },
  {
    // Build script, the webhook receiver example and the statsd preload: plain CommonJS for Node.js.
    files: ['scripts/**/*.js', 'docs/examples/**/*.js', 'bench/**/*.cjs'],
    languageOptions: { sourceType: 'commonjs', globals: globals.node },
  },
  {
    files: ['*.mjs'],
    languageOptions: { globals: globals.node },
  },
);
