// N puppeteer sessions, each: connect, a page of the embedded site, close — in P streams of
// back-to-back sessions (default 1). Prints one JSON line with how many succeeded.
// Usage: node many.js WS_ENDPOINT SITE N [P]
const puppeteer = require('puppeteer-core');

const [endpoint, site, n, p] = process.argv.slice(2);

async function stream(count, first) {
  let ok = 0;
  for (let i = 0; i < count; i++) {
    const browser = await puppeteer.connect({ browserWSEndpoint: endpoint });
    const page = await browser.newPage();
    await page.goto(`${site}/rows`);
    if ((await page.$$eval('tr', (r) => r.length)) === 200) ok++;
    // Alternate the two ways a client ends: Browser.close, and a plain disconnect.
    if ((first + i) % 2 === 0) await browser.close();
    else await browser.disconnect();
  }
  return ok;
}

(async () => {
  const total = Number(n);
  const streams = Math.max(1, Number(p || 1));
  const t0 = Date.now();
  const parts = [];
  for (let s = 0; s < streams; s++) {
    const count = Math.floor(total / streams) + (s < total % streams ? 1 : 0);
    parts.push(stream(count, s));
  }
  const ok = (await Promise.all(parts)).reduce((a, b) => a + b, 0);
  console.log(JSON.stringify({ ok, ms: Date.now() - t0 }));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
