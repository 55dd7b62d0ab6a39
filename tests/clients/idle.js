// A raw CDP client (ws, the WebSocket library puppeteer uses) that stays connected until the
// service ends its session, and reports how: `idle` sends one command, then nothing; `busy`
// sends a command every 200 ms. Prints one JSON line: close code, reason, milliseconds from
// connect to close. Usage: node idle.js WS_ENDPOINT idle|busy
const WebSocket = require('ws');

const [endpoint, mode] = process.argv.slice(2);
const ws = new WebSocket(endpoint);
let t0 = 0;
let id = 0;
let timer = null;
ws.on('open', () => {
  t0 = Date.now();
  ws.send(JSON.stringify({ id: ++id, method: 'Target.getTargets' }));
  if (mode === 'busy') {
    timer = setInterval(() => ws.send(JSON.stringify({ id: ++id, method: 'Browser.getVersion' })), 200);
  }
});
ws.on('close', (code, reason) => {
  if (timer) clearInterval(timer);
  console.log(JSON.stringify({ code, reason: reason.toString(), ms: Date.now() - t0, sent: id }));
  process.exit(0);
});
ws.on('error', (e) => {
  console.error(e);
  process.exit(1);
});
