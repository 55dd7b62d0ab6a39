// N puppeteer sessions in a row, each: connect, a page of the embedded site, close. Prints one
// JSON line with how many succeeded. Usage: node many.js WS_ENDPOINT SITE N
const puppeteer = require('puppeteer-core');

const [endpoint, site, n] = process.argv.slice(2);

(async () => {
  let ok = 0;
  const t0 = Date.now();
  for (let i = 0; i < Number(n); i++) {
    const browser = await puppeteer.connect({ browserWSEndpoint: endpoint });
    const page = await browser.newPage();
    await page.goto(`${site}/rows`);
    if ((await page.$$eval('tr', (r) => r.length)) === 200) ok++;
    // Alternate the two ways a client ends: Browser.close, and a plain disconnect.
    if (i % 2 === 0) await browser.close();
    else await browser.disconnect();
  }
  console.log(JSON.stringify({ ok, ms: Date.now() - t0 }));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
