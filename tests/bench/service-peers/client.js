// The bench job for the service bench, with a real client: puppeteer-core or Playwright
// (playwright-core), either connecting to a service (leakwarden-runner serve, browserless) or
// launching Chromium itself. Each session: browser → page → index, rows, late title → wait for
// #ready → evaluate → PNG → close. One JSON line per session: ok, ms (whole session),
// connect_ms (from connect/launch to the first navigation done).
// usage: node client.js puppeteer|playwright ENDPOINT|launch SESSIONS CONCURRENCY BASE OUT CHROMIUM
'use strict';
const path = require('path');
const { FLAGS, JS } = require('../runner-peers/common.js');

const [lib, endpoint, n, c, base, out, chromium] = process.argv.slice(2);
const launch = endpoint === 'launch';

async function open() {
  if (lib === 'puppeteer') {
    const puppeteer = require('puppeteer-core');
    const browser = launch
      ? await puppeteer.launch({ executablePath: chromium, headless: true, args: FLAGS })
      : await puppeteer.connect({ browserWSEndpoint: endpoint });
    return { browser, page: await browser.newPage(), close: () => browser.close() };
  }
  const { chromium: pw } = require('playwright-core');
  const browser = launch
    ? await pw.launch({ executablePath: chromium, headless: true, args: FLAGS })
    : await pw.connectOverCDP(endpoint);
  const context = launch ? await browser.newContext() : browser.contexts()[0];
  return { browser, page: await context.newPage(), close: () => browser.close() };
}

async function session(i) {
  const t0 = Date.now();
  const rec = { i, ok: false };
  let s = null;
  try {
    s = await open();
    await s.page.goto(base + '/index.html');
    rec.connect_ms = Date.now() - t0;
    await s.page.goto(base + '/rows.html');
    await s.page.goto(base + '/late-title.html');
    await s.page.waitForSelector('#ready');
    const r = await s.page.evaluate(JS);
    await s.page.screenshot({ path: path.join(out, `${lib}-${i}.png`), type: 'png' });
    rec.ok = r.title === 'bench: late title';
  } catch (e) {
    rec.error = String(e).split('\n')[0].slice(0, 200);
  } finally {
    if (s) await s.close().catch(() => {});
  }
  rec.ms = Date.now() - t0;
  console.log(JSON.stringify(rec));
}

(async () => {
  let next = 0;
  const worker = async () => {
    while (next < Number(n)) await session(next++);
  };
  await Promise.all(Array.from({ length: Number(c) }, worker));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
