"""The Python form of hold.js: connect_over_cdp, load a page, print "navigating", then navigate
to a page that answers only after 30 s. Usage: python hold.py ENDPOINT SITE"""
import sys

from playwright.sync_api import sync_playwright

endpoint, site = sys.argv[1], sys.argv[2]
with sync_playwright() as p:
    browser = p.chromium.connect_over_cdp(endpoint)
    page = browser.contexts[0].new_page()
    page.goto(f"{site}/rows")
    print("navigating", flush=True)
    page.goto(f"{site}/slow?ms=30000", timeout=0)
    print("navigation finished (the test should have killed this client)", flush=True)
