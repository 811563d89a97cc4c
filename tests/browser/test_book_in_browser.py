"""Open every built page of the book in headless Chromium with the network disabled.

Run after `jupyter-book build .` (``.ci/run`` does): ``pytest -m browser tests/browser``. Skipped where no
Chromium/chromedriver is installed or the book has not been built. Screenshots of every page are saved
under ``_build/screenshots/`` so a person can look at them.

Checks per page: MathJax typeset every formula (``mjx-container`` elements present when the page has
math, no raw ``$$`` or ``\\(`` left in the text), every ``<img>`` loaded (``naturalWidth > 0``), no
traceback in the executed outputs, and no console errors (severity SEVERE).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"

pytestmark = pytest.mark.browser

#: Console messages that are not errors of this book: pydata-sphinx-theme's inline head script sets
#: an empty theme mode when localStorage is empty (a reader's first visit) and its main script then
#: logs this at error level before falling back to "auto"; the page renders normally.
KNOWN_BENIGN = ("Got invalid theme mode: . Resetting to auto.",)


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _pages() -> list[Path]:
    if not HTML.exists():
        return []
    return sorted(p for p in (HTML / "book").glob("*.html"))


@pytest.fixture(scope="module")
def driver():
    found = _chromium()
    if found is None:
        pytest.skip("headless Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    if not _pages():
        pytest.skip("the book is not built; run `jupyter-book build .` first")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1200,900",
                 # No network: every host name fails to resolve, so only file:// content can load.
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
                 "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(found[1]), options=opts)
    drv.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield drv
    drv.quit()


def _wait_for_mathjax(drv) -> None:
    drv.execute_async_script(
        """const done = arguments[arguments.length - 1];
        if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) { done(null); return; }
        MathJax.startup.promise.then(() => done(true)).catch(() => done(false));"""
    )


@pytest.mark.parametrize("page", [p.name for p in _pages()] or ["(book not built)"])
def test_page_renders(driver, page):
    path = HTML / "book" / page
    driver.get(path.as_uri())
    _wait_for_mathjax(driver)
    # Full-page screenshot: grow the window to the page's height (capped), shoot, restore.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1200, min(int(height) + 100, 16000))
    driver.save_screenshot(str(SHOTS / page.replace(".html", ".png")))
    driver.set_window_size(1200, 900)

    html_src = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://[^\"' ]*(cdn|jsdelivr|unpkg|googleapis)", html_src), "page references a CDN"

    has_math = 'class="math' in html_src or "\\(" in html_src
    n_typeset = driver.execute_script("return document.querySelectorAll('mjx-container').length")
    if has_math:
        assert n_typeset > 0, "the page has math but MathJax typeset none of it"
    text = driver.execute_script("return document.querySelector('main') ? document.querySelector('main').innerText : document.body.innerText")
    assert "$$" not in text, "raw $$ left in the rendered text: a formula was not typeset"
    assert "Traceback (most recent call last)" not in text, "an executed cell shows a traceback"
    assert "PLACEHOLDER" not in text, "the page is still a placeholder"

    broken = driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    assert not broken, f"images that did not load: {broken}"

    errors = [
        e for e in driver.get_log("browser")
        if e.get("level") == "SEVERE" and not any(k in e.get("message", "") for k in KNOWN_BENIGN)
    ]
    assert not errors, f"console errors: {[e['message'] for e in errors]}"
