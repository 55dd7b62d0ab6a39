// Two puppeteer sessions on one service. A opens a page with a secret in its URL; B, over its
// own connection, lists every target it can see, then tries to attach to, activate and close
// A's page by its id, and asks for the browser's windows. Prints what B saw and how each
// attempt ended, and whether A's page is still there. Usage: node isolation.js WS_ENDPOINT SITE
const puppeteer = require('puppeteer-core');

const [endpoint, site] = process.argv.slice(2);

async function attempt(fn) {
  try {
    await fn();
    return 'succeeded';
  } catch (e) {
    return `failed: ${e.message}`;
  }
}

(async () => {
  const a = await puppeteer.connect({ browserWSEndpoint: endpoint });
  const b = await puppeteer.connect({ browserWSEndpoint: endpoint });
  const secret = `secret-${process.pid}-${Date.now()}`;
  const pa = await a.newPage();
  await pa.goto(`${site}/rows?${secret}`);
  const sa = await a.target().createCDPSession();
  const aTargets = (await sa.send('Target.getTargets')).targetInfos;
  const aPage = aTargets.find((t) => t.url.includes(secret));
  if (!aPage) throw new Error('A cannot see its own page');

  const sb = await b.target().createCDPSession();
  await sb.send('Target.setDiscoverTargets', { discover: true });
  const bTargets = (await sb.send('Target.getTargets')).targetInfos;
  const bPuppeteer = b.targets().map((t) => t.url());
  const seenByB = bTargets.filter((t) => t.url.includes(secret) || t.targetId === aPage.targetId);
  const attach = await attempt(() => sb.send('Target.attachToTarget', { targetId: aPage.targetId, flatten: true }));
  const activate = await attempt(() => sb.send('Target.activateTarget', { targetId: aPage.targetId }));
  const close = await attempt(() => sb.send('Target.closeTarget', { targetId: aPage.targetId }));
  const aStillThere = (await pa.evaluate(() => location.href)).includes(secret);
  await a.close();
  await b.close();
  console.log(JSON.stringify({
    aTargetId: aPage.targetId,
    bTargetCount: bTargets.length,
    seenByB: seenByB.length,
    bPuppeteerUrls: bPuppeteer,
    attach,
    activate,
    close,
    aStillThere,
  }));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
