"""Open every built page of the book in headless Chromium with the network disabled.

Run after `jupyter-book build .` (``.ci/run`` does): ``pytest -m browser tests/browser``. Skipped where no
Chromium/chromedriver is installed or the book has not been built. Screenshots of every page are saved
under ``_build/screenshots/`` so a person can look at them.

Checks per page: MathJax typeset every formula (``mjx-container`` elements present when the page has
math, no raw ``$$`` or ``\\(`` left in the text), every ``<img>`` loaded (``naturalWidth > 0``), no
traceback in the executed outputs, and no console errors (severity SEVERE).

The textbook rules (:func:`test_book_rules`, one report listing every offending page and cell):
every image in the page body sits in a ``<figure>`` with a non-empty caption; no code cell, output or
code block scrolls sideways in a window 1280 pixels wide; no visible code cell contains an ``assert``
statement (hide such checks with the ``remove-cell`` tag); every chapter with code cells has an
"Exercises" section. Reference pages (API, benchmarks, notation, bibliography) follow the same rules
except the one about exercises.
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

#: The window the rules are checked in: a common laptop width.
WINDOW_WIDTH = 1280

#: Pages that are reference material, not chapters: they need no exercises.
REFERENCE_PAGES = {"api.html", "benchmarks.html", "notation.html", "bibliography.html"}


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _pages() -> list[Path]:
    if not HTML.exists():
        return []
    return sorted(p for p in (HTML / "book").glob("*.html"))


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with the network off (skipped where it is not installed)."""
    found = _chromium()
    if found is None:
        pytest.skip("headless Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--window-size={WINDOW_WIDTH},900",
                 # No network: every host name fails to resolve, so only file:// content can load.
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
                 "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(found[1]), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def driver(browser):
    """The browser, for tests of the built book (skipped where the book is not built)."""
    if not _pages():
        pytest.skip("the book is not built; run `jupyter-book build .` first")
    SHOTS.mkdir(parents=True, exist_ok=True)
    return browser


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
    driver.set_window_size(WINDOW_WIDTH, min(int(height) + 100, 16000))
    driver.save_screenshot(str(SHOTS / page.replace(".html", ".png")))
    driver.set_window_size(WINDOW_WIDTH, 900)

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


#: Collects, in the page, every violation of the textbook rules as a list of short strings.
RULES_SCRIPT = r"""
const out = [];
const body = document.querySelector('main article') || document.querySelector('main')
             || document.body;
const visible = el => el.getClientRects().length > 0;
const where = el => {
  const cell = el.closest('.cell');
  const fig = el.closest('figure');
  if (fig && fig.id) return '#' + fig.id;
  let sec = el.closest('section');
  const id = sec && sec.id ? '#' + sec.id : '';
  if (!cell) return id || '(page)';
  const cells = Array.from(document.querySelectorAll('.cell'));
  return `${id} code cell ${cells.indexOf(cell) + 1}`;
};
// 1. Every image of the page body is a captioned figure.
for (const img of body.querySelectorAll('img')) {
  const fig = img.closest('figure');
  const cap = fig && fig.querySelector('figcaption');
  if (!cap || !cap.innerText.trim()) out.push(`image without a caption at ${where(img)}`);
}
// 2. Nothing in a code cell, an output or a code block scrolls sideways.
const boxes = body.querySelectorAll(
  '.cell, .cell *, div.highlight, div.highlight pre, .output, .output *');
const seen = new Set();
for (const el of boxes) {
  if (!visible(el)) continue;
  const style = getComputedStyle(el);
  const scrolls = ['auto', 'scroll'].includes(style.overflowX);
  if (el.scrollWidth > el.clientWidth + 1 && (scrolls || el.tagName === 'PRE')) {
    const key = where(el);
    if (!seen.has(key)) {
      seen.add(key);
      out.push(`scrolls sideways (${el.scrollWidth} px content in ${el.clientWidth} px) `
               + `at ${key}`);
    }
  }
}
// 3. No visible assert statement in a code cell's source.
const cells = Array.from(document.querySelectorAll('.cell'));
cells.forEach((cell, i) => {
  const src = cell.querySelector('.cell_input');
  if (src && visible(src) && /^\s*assert\b/m.test(src.innerText)) {
    out.push(`visible assert in code cell ${i + 1}`);
  }
});
// 4. Chapters with code end with exercises (checked in Python: needs the page name).
const headings = Array.from(body.querySelectorAll('h1, h2, h3'))
  .map(h => h.innerText.replace(/[#¶]/g, '').trim());
return {violations: out, cells: cells.length,
        exercises: headings.some(h => /^Exercises\b/.test(h))};
"""


def page_violations(drv, path: Path) -> list[str]:
    """The textbook-rule violations of one HTML page (see the module docstring)."""
    drv.set_window_size(WINDOW_WIDTH, 900)
    drv.get(path.as_uri())
    _wait_for_mathjax(drv)
    found = drv.execute_script(RULES_SCRIPT)
    problems = list(found["violations"])
    if found["cells"] and not found["exercises"] and path.name not in REFERENCE_PAGES:
        problems.append(f"{found['cells']} code cells but no 'Exercises' section")
    return problems


def test_book_rules(driver):
    """Every page at once, so one run lists every offending page and cell."""
    report = []
    for path in _pages():
        for problem in page_violations(driver, path):
            report.append(f"{path.name}: {problem}")
    assert not report, "pages that break the textbook rules:\n  " + "\n  ".join(report)


#: A page in the built book's markup that breaks each rule once (and a compliant figure).
_BAD_PAGE = """<!DOCTYPE html><html><body><main><article>
<section id="demo"><h1>Demo</h1>
<div class="cell docutils container"><div class="cell_input docutils container">
<div class="highlight"><pre>x = 1
assert x == 1</pre></div></div>
<div class="cell_output docutils container"><img src="data:image/png;base64,{png}"></div></div>
<div class="cell docutils container"><div class="cell_output docutils container">
<figure id="fig-ok"><img src="data:image/png;base64,{png}"><figcaption><p>Fine.</p></figcaption>
</figure></div></div>
<div class="cell docutils container"><div class="cell_input docutils container">
<div class="highlight"><pre style="overflow-x: auto">{long}</pre></div></div></div>
</section></article></main></body></html>"""

_PNG_1X1 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def test_rules_catch_each_violation(browser, tmp_path):
    """The rules fail on an uncaptioned output image, a sideways-scrolling code cell, a visible
    assert and a chapter with code but no exercises, and pass on a captioned figure."""
    page = tmp_path / "demo.html"
    page.write_text(_BAD_PAGE.format(png=_PNG_1X1, long="y = " + "1 + " * 400 + "1"))
    problems = page_violations(browser, page)
    text = "\n".join(problems)
    assert sum("image without a caption" in p for p in problems) == 1, text
    assert any("scrolls sideways" in p for p in problems), text
    assert any("visible assert in code cell 1" in p for p in problems), text
    assert any("no 'Exercises' section" in p for p in problems), text
    assert not any("fig-ok" in p for p in problems), text
