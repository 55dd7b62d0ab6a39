"""Playwright for Python peer: one browser, a new context per session, asyncio + semaphore.

usage: playwright_peer.py SESSIONS CONCURRENCY BASE_URL OUT_DIR CHROMIUM
Prints one JSON line per session: {"i", "ok", "ms", "title", "elements", "error"}.
"""

import asyncio
import json
import sys
import time

from playwright.async_api import async_playwright

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-gpu",
    "--disable-dev-shm-usage",
]
JS = "({ title: document.title, elements: document.getElementsByTagName('*').length })"


async def session(browser, sem, i, base, out):
    async with sem:
        t0 = time.monotonic()
        rec = {"i": i, "ok": False}
        try:
            ctx = await browser.new_context()
            try:
                page = await ctx.new_page()
                await page.goto(base + "/index.html")
                await page.goto(base + "/rows.html")
                await page.goto(base + "/late-title.html")
                await page.wait_for_selector("#ready")
                r = await page.evaluate(JS)
                await page.screenshot(path=f"{out}/playwright-{i}.png", type="png")
                rec.update(ok=True, title=r["title"], elements=r["elements"])
            finally:
                await ctx.close()
        except Exception as e:  # noqa: BLE001 - a failed session is counted, not fatal
            rec["error"] = str(e).splitlines()[0][:200]
        rec["ms"] = round((time.monotonic() - t0) * 1000)
        print(json.dumps(rec), flush=True)


async def main():
    n, c, base, out, chromium = sys.argv[1:6]
    sem = asyncio.Semaphore(int(c))
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
        try:
            await asyncio.gather(*(session(browser, sem, i, base, out) for i in range(int(n))))
        finally:
            await browser.close()


asyncio.run(main())
