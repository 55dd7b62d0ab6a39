"""One normal session with Playwright for Python: connect_over_cdp, a page in the default
context and one in a new context, then browser.close(). Prints one JSON line.
Usage: python playwright_session.py ENDPOINT SITE"""
import json
import sys
import time

from playwright.sync_api import sync_playwright

endpoint, site = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
with sync_playwright() as p:
    browser = p.chromium.connect_over_cdp(endpoint)
    connected_ms = (time.monotonic() - t0) * 1000
    page = browser.contexts[0].new_page()
    page.goto(f"{site}/late-title")
    page.wait_for_selector("#ready")
    title = page.title()
    context = browser.new_context()
    other = context.new_page()
    other.goto(f"{site}/rows")
    rows = other.locator("tr").count()
    version = browser.version
    browser.close()
print(json.dumps({"title": title, "rows": rows, "version": version,
                  "connectedMs": connected_ms, "totalMs": (time.monotonic() - t0) * 1000}))
