// N raw CDP clients (ws, the WebSocket library puppeteer uses) arriving SPACING_MS apart. Each
// one that gets a session opens a page of the embedded site, keeps the session until every
// client has arrived and then HOLD_MS more, and closes; each one turned away records the HTTP
// status and Retry-After. Prints one JSON array, in arrival order.
// Usage: node admission.js WS_ENDPOINT SITE N SPACING_MS HOLD_MS
const WebSocket = require('ws');

const [endpoint, site, n, spacing, hold] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Resolved once the last client has reached the service's gate. No session closes before: a
// slot freed early (a hold timed from a session's start, on a slow machine) would let a late
// client into the queue that the test means to find full.
let everyoneArrived;
const allArrived = new Promise((r) => { everyoneArrived = r; });

function client(i) {
  return new Promise((resolve) => {
    const r = { i, status: null, session: null, retryAfter: null, ok: false };
    const ws = new WebSocket(endpoint);
    ws.on('upgrade', (res) => {
      r.status = res.statusCode;
      r.session = Number(res.headers['x-leakwarden-session']);
    });
    ws.on('unexpected-response', (req, res) => {
      r.status = res.statusCode;
      r.retryAfter = res.headers['retry-after'] ?? null;
      res.resume();
      req.destroy();
      resolve(r);
    });
    ws.on('open', () => {
      ws.send(JSON.stringify({ id: 1, method: 'Target.createTarget', params: { url: `${site}/rows` } }));
    });
    ws.on('message', (data) => {
      const msg = JSON.parse(data);
      if (msg.id === 1) {
        r.ok = Boolean(msg.result && msg.result.targetId);
        allArrived.then(() => setTimeout(() => ws.close(), Number(hold)));
      }
    });
    ws.on('close', (code) => {
      r.closeCode = code;
      resolve(r);
    });
    ws.on('error', (e) => {
      r.error = e.message;
    });
  });
}

// The service's count of connections that reached its admission gate (/readyz "arrivals").
async function arrivals() {
  const u = new URL(endpoint);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = '/readyz';
  u.search = '';
  try {
    return (await (await fetch(u)).json()).arrivals;
  } catch {
    return -1;
  }
}

(async () => {
  const all = [];
  const first = await arrivals();
  for (let i = 0; i < Number(n); i++) {
    all.push(client(i));
    // Arrival order is the order the service saw: the next client starts only once this one
    // has reached the gate (timers alone bunch up on a busy machine, and two connections that
    // arrive together are admitted in either order).
    const t0 = Date.now();
    while ((await arrivals()) < first + i + 1 && Date.now() - t0 < 10000) await sleep(5);
    await sleep(Number(spacing));
  }
  everyoneArrived();
  console.log(JSON.stringify(await Promise.all(all)));
  process.exit(0);
})();
