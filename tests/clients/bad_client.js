// A client that misbehaves on the wire, through the same WebSocket library puppeteer uses.
//   garbage — a text frame that is not JSON
//   binary  — a binary frame (CDP is text)
//   huge    — one 100 MB text frame
//   noread  — attach to a page, stop reading the socket, then ask for 20 replies of 8 MB each
// Prints one JSON line when the service closes the connection (code, ms), or, for noread,
// "flooding" once the requests are out (then waits to be killed).
// Usage: node bad_client.js WS_ENDPOINT MODE
const WebSocket = require('ws');

const [endpoint, mode] = process.argv.slice(2);
const ws = new WebSocket(endpoint, { maxPayload: 512 * 1024 * 1024 });
let t0 = 0;

function call(id, method, params, sessionId) {
  ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
}

ws.on('open', () => {
  t0 = Date.now();
  if (mode === 'garbage') ws.send('this is not a CDP command');
  else if (mode === 'binary') ws.send(Buffer.from('{"id":1,"method":"Browser.getVersion"}'));
  else if (mode === 'huge') ws.send('x'.repeat(100 * 1024 * 1024));
  else if (mode === 'noread') call(1, 'Target.createTarget', { url: 'about:blank' });
});

ws.on('message', (data) => {
  if (mode !== 'noread') return;
  const msg = JSON.parse(data);
  if (msg.id === 1) call(2, 'Target.attachToTarget', { targetId: msg.result.targetId, flatten: true });
  if (msg.id === 2) {
    const session = msg.result.sessionId;
    ws._socket.pause();
    for (let i = 0; i < 20; i++) {
      call(10 + i, 'Runtime.evaluate', { expression: "'x'.repeat(8 * 1024 * 1024)", returnByValue: true }, session);
    }
    console.log('flooding');
    // A paused socket alone does not keep node running.
    setInterval(() => {}, 1000);
  }
});

ws.on('close', (code, reason) => {
  console.log(JSON.stringify({ code, reason: reason.toString(), ms: Date.now() - t0 }));
  process.exit(0);
});
ws.on('error', (e) => {
  console.error(`error: ${e.message}`);
});
