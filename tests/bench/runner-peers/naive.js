// Naive puppeteer baseline: a new browser per session (puppeteer.launch → steps → browser.close),
// CONCURRENCY sessions at once.
// usage: node naive.js SESSIONS CONCURRENCY BASE_URL OUT_DIR CHROMIUM
'use strict';
const puppeteer = require('puppeteer-core');
const { FLAGS, JS } = require('./common.js');

async function session(i, base, out, chromium) {
  const t0 = Date.now();
  const rec = { i, ok: false };
  try {
    const browser = await puppeteer.launch({ executablePath: chromium, headless: true, args: FLAGS });
    try {
      const page = await browser.newPage();
      await page.goto(base + '/index.html');
      await page.goto(base + '/rows.html');
      await page.goto(base + '/late-title.html');
      await page.waitForSelector('#ready');
      const r = await page.evaluate(JS);
      await page.screenshot({ path: `${out}/naive-${i}.png`, type: 'png' });
      Object.assign(rec, { ok: true, title: r.title, elements: r.elements });
    } finally {
      await browser.close();
    }
  } catch (e) {
    rec.error = String(e).split('\n')[0].slice(0, 200);
  }
  rec.ms = Date.now() - t0;
  console.log(JSON.stringify(rec));
}

async function main() {
  const [n, c, base, out, chromium] = process.argv.slice(2);
  let next = 0;
  const worker = async () => {
    while (next < Number(n)) await session(next++, base, out, chromium);
  };
  await Promise.all(Array.from({ length: Number(c) }, worker));
}

main().catch((e) => { console.error(e); process.exit(1); });
