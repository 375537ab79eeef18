import { spawn } from 'node:child_process';
import { freeTcpPort } from '../shared/freePort';
import path from 'node:path';
import { createDb, migrateLatest } from '../shared/db';
import { startThrowawayPostgres } from '../shared/localPostgres';
import { TEMPLATE_DATABASE } from './helpers/database';

// `npm test`: uses DATABASE_URL when set, else starts a throwaway PostgreSQL; migrates a template
// database once; runs tap with the given arguments; stops the server it started.

async function prepareTemplate(adminUrl: string) {
  const admin = createDb(adminUrl, { poolMax: 1 });
  await admin.raw(`drop database if exists ${TEMPLATE_DATABASE} with (force)`);
  await admin.raw(`create database ${TEMPLATE_DATABASE}`);
  await admin.destroy();
  const templateUrl = new URL(adminUrl);
  templateUrl.pathname = `/${TEMPLATE_DATABASE}`;
  const template = createDb(templateUrl.toString(), { poolMax: 1 });
  await migrateLatest(template);
  await template.destroy();
}

async function main() {
  let local: ReturnType<typeof startThrowawayPostgres> | undefined;
  let adminUrl = process.env.DATABASE_URL;
  if (!adminUrl) {
    local = startThrowawayPostgres('keyusage-test-', await freeTcpPort());
    adminUrl = local.url;
    console.log(`# throwaway PostgreSQL at 127.0.0.1:${new URL(adminUrl).port} (${local.scratch})`);
  }
  let exitCode = 1;
  try {
    await prepareTemplate(adminUrl);
    const tap = spawn(process.execPath, [path.join(path.dirname(require.resolve('tap/package.json')), 'dist', 'esm', 'run.mjs'), ...process.argv.slice(2)], {
      stdio: 'inherit',
      // Tests say what they are, so the production guards of shared/config.ts stand aside.
      env: { ...process.env, NODE_ENV: process.env.NODE_ENV || 'test', TEST_ADMIN_DATABASE_URL: adminUrl },
    });
    const forward = (signal: NodeJS.Signals) => tap.kill(signal);
    process.on('SIGINT', forward).on('SIGTERM', forward);
    exitCode = await new Promise<number>((resolve) => tap.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0))));
  } finally {
    local?.stop();
  }
  process.exit(exitCode);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
