// One normal session with Playwright for Node (playwright-core): connectOverCDP, a page in a new
// context and one in the default context, then browser.close(). Prints one JSON line.
// Usage: node playwright_session.js ENDPOINT SITE
const { chromium } = require('playwright-core');

const [endpoint, site] = process.argv.slice(2);

(async () => {
  const t0 = Date.now();
  const browser = await chromium.connectOverCDP(endpoint);
  const connectedMs = Date.now() - t0;
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${site}/late-title`);
  await page.waitForSelector('#ready');
  const title = await page.title();
  const other = await browser.contexts()[0].newPage();
  await other.goto(`${site}/rows`);
  const rows = await other.locator('tr').count();
  const version = browser.version();
  await browser.close();
  console.log(JSON.stringify({ title, rows, version, connectedMs, totalMs: Date.now() - t0 }));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
