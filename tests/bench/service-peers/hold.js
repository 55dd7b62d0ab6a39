// A session that stays open: connect (or launch), load the index, print "ready", then do
// nothing, holding its socket, until it is killed. The service bench's scenarios SIGKILL it
// (client killed), leave it hanging (client hangs), or kill or stop the service under it.
// usage: node hold.js puppeteer|playwright ENDPOINT|launch BASE CHROMIUM
'use strict';
const { FLAGS } = require('../runner-peers/common.js');

const [lib, endpoint, base, chromium] = process.argv.slice(2);
const launch = endpoint === 'launch';

(async () => {
  let page;
  if (lib === 'puppeteer') {
    const puppeteer = require('puppeteer-core');
    const b = launch
      ? await puppeteer.launch({ executablePath: chromium, headless: true, args: FLAGS })
      : await puppeteer.connect({ browserWSEndpoint: endpoint });
    page = await b.newPage();
  } else {
    const { chromium: pw } = require('playwright-core');
    const b = launch
      ? await pw.launch({ executablePath: chromium, headless: true, args: FLAGS })
      : await pw.connectOverCDP(endpoint);
    page = await (launch ? await b.newContext() : b.contexts()[0]).newPage();
  }
  await page.goto(base + '/index.html');
  console.log('ready');
  setInterval(() => {}, 1 << 30);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
