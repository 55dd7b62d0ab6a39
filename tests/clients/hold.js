// A client that is in the middle of a navigation when the test SIGKILLs it: connect, load a
// page, print "navigating", then navigate to a page that answers only after 30 s.
// Usage: node hold.js ENDPOINT SITE
const puppeteer = require('puppeteer-core');

const [endpoint, site] = process.argv.slice(2);

(async () => {
  const browser = await puppeteer.connect({ browserWSEndpoint: endpoint });
  const page = await browser.newPage();
  await page.goto(`${site}/rows`);
  console.log('navigating');
  await page.goto(`${site}/slow?ms=30000`, { timeout: 0 });
  console.log('navigation finished (the test should have killed this client)');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
