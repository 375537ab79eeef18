// A keyusage webhook receiver: verifies the signature, then handles each event once.
// Node 18+, no dependencies: KEYUSAGE_WEBHOOK_SECRET=whsec_… PORT=4000 node webhook-receiver.js
const crypto = require('node:crypto');
const http = require('node:http');

const TOLERANCE_SECONDS = 300; // refuse deliveries signed more than 5 minutes from now (replays)

function verifySignature(secret, header, body, nowSeconds = Math.floor(Date.now() / 1000)) {
  const pairs = String(header).split(',');
  const parts = Object.fromEntries(pairs.map((part) => part.split('=', 2)));
  const timestamp = Number(parts.t);
  if (!Number.isInteger(timestamp) || Math.abs(nowSeconds - timestamp) > TOLERANCE_SECONDS) return false;
  const expected = crypto.createHmac('sha256', secret).update(`${parts.t}.${body}`).digest();
  const given = Buffer.from(parts.v1 ?? '', 'hex');
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

const handled = new Set(); // delivery is at least once: dedupe on the verified body's id, not a header (use a table in production)

if (require.main === module) {
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8'); // verify the raw bytes, before any parsing
      if (!verifySignature(process.env.KEYUSAGE_WEBHOOK_SECRET, req.headers['keyusage-signature'], body)) return res.writeHead(400).end();
      const event = JSON.parse(body);
      if (!handled.has(event.id)) {
        handled.add(event.id);
        console.log(event.type, event.keyId, event.details);
      }
      res.writeHead(204).end(); // answer fast; slow work belongs in a queue
    });
  });
  server.listen(Number(process.env.PORT ?? 4000));
}

module.exports = { verifySignature };
