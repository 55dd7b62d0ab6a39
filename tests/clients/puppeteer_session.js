// One normal session with puppeteer-core: connect (browserWSEndpoint for a ws:// argument,
// browserURL for http://), two pages of the embedded site, then browser.close() (or
// disconnect()). Prints one JSON line. Usage: node puppeteer_session.js ENDPOINT SITE [close|disconnect]
const puppeteer = require('puppeteer-core');

const [endpoint, site, how = 'close'] = process.argv.slice(2);

(async () => {
  const t0 = Date.now();
  const opts = endpoint.startsWith('ws') ? { browserWSEndpoint: endpoint } : { browserURL: endpoint };
  const browser = await puppeteer.connect(opts);
  const connectedMs = Date.now() - t0;
  const page = await browser.newPage();
  await page.goto(`${site}/late-title`);
  await page.waitForSelector('#ready');
  const title = await page.title();
  await page.goto(`${site}/rows`);
  const rows = await page.$$eval('tr', (r) => r.length);
  const version = await browser.version();
  if (how === 'close') await browser.close();
  else await browser.disconnect();
  console.log(JSON.stringify({ title, rows, version, connectedMs, totalMs: Date.now() - t0 }));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
