// One puppeteer session on an endpoint URL that carries session options. Reports what the page
// saw: the cookie it found at the start, whether its image loaded, a page through the network
// (maybe a proxy), and a download it started. Then sets a cookie `lw=<MARK>` and closes.
// Usage: node options.js WS_ENDPOINT_WITH_QUERY SITE MARK
const puppeteer = require('puppeteer-core');

const [endpoint, site, mark] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

(async () => {
  const browser = await puppeteer.connect({ browserWSEndpoint: endpoint });
  const page = await browser.newPage();
  await page.goto(`${site}/media`);
  const cookieAtStart = await page.evaluate(() => document.cookie);
  const imgWidth = await page.evaluate(() => {
    const img = document.getElementById('px');
    return img.complete ? img.naturalWidth : -1;
  });
  const rows = await page.goto(`${site}/rows`);
  const rowsStatus = rows.status();
  const title = await page.title();
  await page.evaluate((m) => { document.cookie = `lw=${m}; max-age=3600; path=/`; }, mark);
  let download = 'started';
  try {
    await page.goto(`${site}/download`);
  } catch (e) {
    download = e.message.includes('ERR_ABORTED') ? 'started' : e.message;
  }
  await sleep(1000);
  await browser.close();
  console.log(JSON.stringify({ cookieAtStart, imgWidth, rowsStatus, title, download }));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
