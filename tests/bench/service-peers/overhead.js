// Per-message proxy overhead: N sequential round trips of a trivial command
// (Browser.getVersion, answered by the browser process itself) over one WebSocket, after a
// warm-up. Run against a browser's own DevTools endpoint and against the same kind of browser
// through a service; the difference of the medians is what the service adds per message.
// Prints one JSON line: median and p95 round trip in microseconds.
// usage: node overhead.js WS_URL N
'use strict';
const WebSocket = require('ws');

const [url, n] = process.argv.slice(2);
const N = Number(n);
const WARMUP = 100;
const ws = new WebSocket(url, { perMessageDeflate: false });
const times = [];
let id = 0;
let sent = 0n;

function send() {
  id += 1;
  sent = process.hrtime.bigint();
  ws.send(JSON.stringify({ id, method: 'Browser.getVersion' }));
}

ws.on('open', send);
ws.on('message', (data) => {
  const m = JSON.parse(data);
  if (m.id !== id) return;
  const us = Number(process.hrtime.bigint() - sent) / 1000;
  if (id > WARMUP) times.push(us);
  if (times.length < N) return send();
  times.sort((a, b) => a - b);
  const at = (p) => times[Math.min(times.length - 1, Math.floor((times.length * p) / 100))];
  console.log(JSON.stringify({ url: url.replace(/token=[^&]*/, 'token=…'), n: times.length, median_us: at(50), p95_us: at(95) }));
  ws.close();
  process.exit(0);
});
ws.on('error', (e) => {
  console.error(String(e));
  process.exit(1);
});
