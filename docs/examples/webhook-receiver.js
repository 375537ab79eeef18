// A keyusage webhook receiver: verifies the signature, then handles each event once.
// Node 18+, no dependencies: KEYUSAGE_WEBHOOK_SECRET=whsec_… PORT=4000 node webhook-receiver.js
const crypto = require('node:crypto');
const http = require('node:http');

const TOLERANCE_SECONDS = 300; // refuse deliveries signed more than 5 minutes from now (replays)
const MAX_BODY_BYTES = 64 * 1024; // a delivery is a few hundred bytes: read no more than this from anyone

// During a secret rotation the header has one v1 per secret: accept it if ANY v1 matches yours.
function verifySignature(secret, header, body, nowSeconds = Math.floor(Date.now() / 1000)) {
  const pairs = String(header).split(',');
  const t = pairs.find((pair) => pair.startsWith('t='))?.slice(2);
  if (!Number.isInteger(Number(t)) || Math.abs(nowSeconds - Number(t)) > TOLERANCE_SECONDS) return false;
  const expected = crypto.createHmac('sha256', secret).update(`${t}.${body}`).digest();
  const given = pairs.filter((pair) => pair.startsWith('v1=')).map((pair) => Buffer.from(pair.slice(3), 'hex'));
  return given.some((v1) => v1.length === expected.length && crypto.timingSafeEqual(v1, expected));
}

const handled = new Set(); // delivery is at least once: dedupe on the verified body's id, not a header (use a table in production)

function parseEvent(body) {
  try {
    const event = JSON.parse(body);
    return typeof event?.id === 'string' ? event : undefined;
  } catch {
    return undefined; // signed yet not an event: answer 400, don't crash on it
  }
}

if (require.main === module) {
  const secret = process.env.KEYUSAGE_WEBHOOK_SECRET;
  if (!secret) {
    console.error("KEYUSAGE_WEBHOOK_SECRET is not set: set it to the webhook's secret (whsec_…)");
    process.exit(1);
  }
  const server = http.createServer((req, res) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
      else if (!res.headersSent) res.writeHead(413, { connection: 'close' }).end(); // Node closes the connection once it is sent
    });
    req.on('end', () => {
      if (size > MAX_BODY_BYTES) return; // answered 413 already
      const body = Buffer.concat(chunks).toString('utf8'); // verify the raw bytes, before any parsing
      const event = verifySignature(secret, req.headers['keyusage-signature'], body) && parseEvent(body);
      if (!event) return res.writeHead(400).end();
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
