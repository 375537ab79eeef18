// `npm run openapi`: writes docs/openapi.json, the committed copy of what GET /openapi.json serves.
// test/openapi.test.ts fails when the copy is stale.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { renderOpenApiDocument } from '../api/openapi/document';

const file = path.join(__dirname, '..', 'docs', 'openapi.json');
writeFileSync(file, renderOpenApiDocument());
console.log(`wrote ${path.relative(process.cwd(), file)}`);
