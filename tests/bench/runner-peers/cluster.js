// puppeteer-cluster peer: one browser, CONCURRENCY_CONTEXT (a new incognito context per job).
// usage: node cluster.js SESSIONS CONCURRENCY BASE_URL OUT_DIR CHROMIUM
// Prints one JSON line per session. The latency is measured inside the task, so it does not
// include the context's creation and close (puppeteer-cluster does those around the task).
'use strict';
const { Cluster } = require('puppeteer-cluster');
const puppeteer = require('puppeteer-core');
const { FLAGS, JS } = require('./common.js');

async function main() {
  const [n, c, base, out, chromium] = process.argv.slice(2);
  const cluster = await Cluster.launch({
    concurrency: Cluster.CONCURRENCY_CONTEXT,
    maxConcurrency: Number(c),
    puppeteer,
    puppeteerOptions: { executablePath: chromium, headless: true, args: FLAGS },
    retryLimit: 0,
    timeout: 30000,
    monitor: false,
  });
  cluster.on('taskerror', (err, data) => {
    console.log(JSON.stringify({ i: data.i, ok: false, ms: Date.now() - data.t0, error: String(err).split('\n')[0].slice(0, 200) }));
  });
  await cluster.task(async ({ page, data }) => {
    data.t0 = Date.now();
    await page.goto(base + '/index.html');
    await page.goto(base + '/rows.html');
    await page.goto(base + '/late-title.html');
    await page.waitForSelector('#ready');
    const r = await page.evaluate(JS);
    await page.screenshot({ path: `${out}/cluster-${data.i}.png`, type: 'png' });
    console.log(JSON.stringify({ i: data.i, ok: true, ms: Date.now() - data.t0, title: r.title, elements: r.elements }));
  });
  for (let i = 0; i < Number(n); i++) cluster.queue({ i, t0: Date.now() });
  await cluster.idle();
  await cluster.close();
}

main().catch((e) => { console.error(e); process.exit(1); });
