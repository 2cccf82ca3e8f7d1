"""Open every page of the built book in headless Chromium and check that it rendered and reads.

Every page of ``_toc.yml`` is opened twice, at a desktop width (1400 px) and a phone width (390 px).
A page fails when

* it did not render: no title, a broken image, math that MathJax did not typeset, a traceback or an
  error in a cell's output, a failed request, a request that leaves localhost, a console error, or an
  uncaught JavaScript exception (Playwright's ``pageerror``: a script that throws, or does not even
  parse, such as a ``const`` declared twice by a script included twice);
* its HTML includes the same script twice (the cause of the error above, caught without a browser);
* at 390 px the page scrolls sideways (``document.documentElement.scrollWidth > clientWidth + 1``;
  the message names the widest elements);
* at 390 px a display equation can be clipped: its box ``div.math`` does not scroll sideways
  (pydata-sphinx-theme gives it ``overflow: hidden``), its MathJax container sticks out of a box that
  hides or cannot scroll to it (on the left, for the theme's row-reverse flex row), or its content is
  wider than the container and the container does not scroll (``overflow-x`` neither ``auto`` nor
  ``scroll``); book/_static/energybook.css makes both scroll;
* at 390 px a content image (a figure of the page, not the theme's icons or logos, nor an image
  under 100 px wide) is shown at less than 0.6 of its natural width: its labels would then be a few
  pixels tall (a figure 4.6 in wide at 100 dpi is shown at about 0.74 of its size there);
* any ``<img>`` has no alt text, or an empty one;
* its HTML holds a local absolute path (``/root/``, ``/home/``, ``/tmp/``, ``/work/``, ``.venv``,
  ``site-packages``): a sign that a cell printed where the build ran.

Without a browser: every exercise of the book has one number, in one sequence across the book (no two
pages show "Exercise 1"), the full build holds every solution (which tests/test_students_build.py then
looks for in the students' build), and every admonition title written in a page's source is rendered as
the box's title (``:::{important} Title`` would put it into the body).

And no page of a local build (``repository.url`` of ``_config.yml`` still the committed placeholder)
links to the placeholder repository, nor has a repository, issues or launch button; a build for a
real repository (CI's Pages build) has them, pointing at it.

Needs the built book (``make book``; ``EB_BOOK_HTML`` names another built ``html`` folder) and Debian's
Chromium at /usr/bin/chromium; skipped without them, except under ``make test``
(``EB_REQUIRE_BOOK=1``), where their absence is a failure.
The site is served from a local HTTP server, as file:// URLs can block scripts such as MathJax.
"""

from __future__ import annotations

import functools
import html
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from scripts import make_notebooks
from tests.test_book_text import TITLELESS, directives

ROOT = Path(__file__).resolve().parent.parent
HTML = Path(os.environ.get("EB_BOOK_HTML") or ROOT / "_build" / "html")
CHROMIUM = os.environ.get("EB_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REQUIRED = os.environ.get("EB_REQUIRE_BOOK") == "1"

pytestmark = pytest.mark.book


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (EB_REQUIRE_BOOK=1: the browser check must run)")
    pytest.skip(reason)


toc_pages = make_notebooks.toc_pages  # every page of _toc.yml, one list for the notebooks and this test


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def site():
    """Base URL of the built book served on localhost."""
    if not (HTML / "index.html").is_file():
        _missing(f"{HTML} has no built book: run `make book` first")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by playwright."""
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _missing(f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def test_toc_pages_were_built():
    missing = [p for p in toc_pages() if not (HTML / f"{p}.html").is_file()]
    if not HTML.is_dir():
        _missing(f"{HTML} has no built book: run `make book` first")
    assert not missing, f"pages in _toc.yml without HTML in {HTML}: {missing}"


#: Widths the pages are read at (CSS pixels): a desktop browser and a phone.
WIDTHS = {"desktop": 1400, "phone": 390}
#: Local absolute paths that must never reach the published HTML.
LOCAL_PATH = re.compile(r"/root/|/home/|/tmp/|/work/|\.venv\b|site-packages")


@pytest.mark.parametrize("page", toc_pages())
def test_page_has_no_local_paths(page):
    path = HTML / f"{page}.html"
    if not path.is_file():
        _missing(f"{path} was not built: run `make book` first")
    text = path.read_text(encoding="utf-8")
    hits = sorted({text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ") for m in LOCAL_PATH.finditer(text)})
    assert not hits, f"{page}: local paths in the HTML: {hits[:5]}"


# Every <script> element of a page, with its attributes and its inline body.
SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S)


@pytest.mark.parametrize("page", toc_pages())
def test_page_includes_each_script_once(page):
    """A script included twice runs twice: a `const` it declares then throws a SyntaxError (sphinx-thebe's
    THEBE_JS_URL did, through Sphinx 7's double inline scripts; book/_ext/eb_book.py removes the copies)."""
    path = HTML / f"{page}.html"
    if not path.is_file():
        _missing(f"{path} was not built: run `make book` first")
    scripts = [re.sub(r"\s+", " ", m.group(0)) for m in SCRIPT.finditer(path.read_text(encoding="utf-8"))]
    twice = sorted({s[:160] for s in scripts if scripts.count(s) > 1})
    assert not twice, f"{page}: scripts included more than once: {twice}"


def _links(text: str) -> list[str]:
    return re.findall(r"""\bhref\s*=\s*["']([^"']+)["']""", text)


def test_no_link_goes_nowhere():
    """While repository.url is the committed placeholder (a local build), no page links to it and none has
    a repository, issues or launch button; a build for a real repository links to it from every page."""
    if not (HTML / "index.html").is_file():
        _missing(f"{HTML} has no built book: run `make book` first")
    cfg = make_notebooks.book_config()
    owner_name = urlparse(cfg["url"]).path.strip("/")
    pages = sorted(HTML.rglob("*.html"))
    buttons = re.compile(r"source-repository-button|source-issues-button|source-edit-button|launch-buttons")
    if not cfg["published"]:
        found = {}
        for path in pages:
            text = path.read_text(encoding="utf-8")
            bad = [u for u in _links(text) if owner_name in u] + buttons.findall(text)
            if bad:
                found[str(path.relative_to(HTML))] = sorted(set(bad))[:3]
        assert not found, (f"a local build (repository.url is the placeholder {cfg['url']}) links to it or shows "
                           f"repository/launch buttons: {dict(list(found.items())[:5])}")
    else:
        physics = (HTML / "book" / "physics.html").read_text(encoding="utf-8")
        links = _links(physics)
        assert cfg["url"] in links, f"the repository button does not point at {cfg['url']}"
        assert any(u.startswith("https://colab.research.google.com/github/" + owner_name + "/") for u in links)
        assert any(u.startswith("https://mybinder.org/v2/gh/" + owner_name + "/") for u in links)


# --- exercises, solutions and admonition titles, read from the built HTML ---------------------------
# sphinx-exercise's numbered exercise: <div class="exercise admonition" id="LABEL"> and its title
# <p class="admonition-title"><span class="caption-number">Exercise N </span> (its title)</p>.
EXERCISE_DIV = re.compile(r'<div class="exercise\b[^"]*" id="([^"]+)">\s*<p class="admonition-title">(.*?)</p>', re.S)
EXERCISE_NUMBER = re.compile(r'<span class="caption-number">Exercise (\d+) </span>')
SOLUTION_DIV = re.compile(r'<div class="solution\b[^"]*"')
ADMONITION_TITLE = re.compile(r'<p class="admonition-title">(.*?)</p>', re.S)


def _page_html(page: str) -> str:
    path = HTML / f"{page}.html"
    if not path.is_file():
        _missing(f"{path} was not built: run `make book` first")
    return path.read_text(encoding="utf-8")


def _source(page: str) -> str | None:
    path = ROOT / f"{page}.md"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def plain(fragment: str) -> str:
    """The text of an HTML fragment or of a MyST title: no tags, entities, markup or curly quotes."""
    text = html.unescape(re.sub(r"<[^>]+>", "", fragment))
    text = text.translate(str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'}))
    return " ".join(text.replace("`", "").replace("*", "").split())


def exercise_numbers() -> dict[str, tuple[str, int | None]]:
    """Every exercise of the built book: its label, the page and its number (None: unnumbered)."""
    found = {}
    for page in toc_pages():
        for label, title in EXERCISE_DIV.findall(_page_html(page)):
            m = EXERCISE_NUMBER.search(title)
            found[label] = (page, int(m.group(1)) if m else None)
    return found


def test_exercises_are_numbered_once_across_the_book():
    """One sequence, 1 to n, in the order of the table of contents: no two pages show the same number."""
    numbers = exercise_numbers()
    sources = [d["options"].get("label") for page in toc_pages() for d in directives(_source(page) or "")
               if d["name"] in ("exercise", "exercise-start")]
    assert sorted(numbers) == sorted(sources), "the built exercises are not the sources' exercises"
    unnumbered = sorted(label for label, (_, n) in numbers.items() if n is None)
    assert not unnumbered, f"exercises without a number: {unnumbered}"
    in_order = [n for _, n in sorted(numbers.values(), key=lambda v: (toc_pages().index(v[0]), v[1]))]
    assert in_order == list(range(1, len(numbers) + 1)), f"not one sequence 1..n across the book: {in_order}"


def test_the_full_build_holds_every_solution():
    """The book (not the students' edition) shows a solution for every solution directive of the sources."""
    for page in toc_pages():
        wanted = sum(d["name"] in ("solution", "solution-start") for d in directives(_source(page) or ""))
        shown = len(SOLUTION_DIV.findall(_page_html(page)))
        assert shown == wanted, f"{page}: {wanted} solutions in the source, {shown} in the HTML"


@pytest.mark.parametrize("page", toc_pages())
def test_admonition_titles_are_rendered_as_titles(page):
    """Each title written after an admonition's name is the box's title, not the start of its body (MyST puts
    the text after ``{important}``, which takes no title, into the body under the title "Important")."""
    source = _source(page)
    if source is None:
        pytest.skip(f"{page} has no MyST source")
    rendered = {plain(t) for t in ADMONITION_TITLE.findall(_page_html(page))}
    written = [d["arg"] for d in directives(source)
               if d["name"] in ("admonition", *TITLELESS) and d["arg"] and "{" not in d["arg"]]
    missing = [t for t in written if plain(t) not in rendered]
    assert not missing, f"{page}: titles written in the source but not shown as a box's title: {missing}"


# The elements that stick out furthest to the right of the viewport, for the horizontal-scroll message.
OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= width + 1) continue;
    let hidden = false;
    for (let p = el; p && p !== document.body; p = p.parentElement) {
      const s = getComputedStyle(p);
      if (s.position === 'fixed' || s.display === 'none' || s.visibility === 'hidden' ||
          (p !== el && ['auto', 'scroll', 'hidden', 'clip'].includes(s.overflowX))) { hidden = true; break; }
    }
    if (hidden) continue;
    const cls = (el.className && el.className.baseVal === undefined) ? el.className : '';
    out.push({right: Math.round(r.right), what: el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
              (cls ? '.' + cls.trim().split(/\\s+/).slice(0, 3).join('.') : '')});
  }
  out.sort((a, b) => b.right - a.right);
  return out.slice(0, 5);
}"""

#: The smallest share of its natural width at which a content image may be shown on a phone, and the
#: natural width (px) under which an image counts as an icon and is not checked.
MIN_PHONE_SCALE = 0.6
ICON_PX = 100
# Content images (inside the article, not the header's launch-button logos): natural and shown width.
SHRUNK_JS = """() => Array.from(document.querySelectorAll('article.bd-article img'))
  .map(img => ({src: (img.getAttribute('src') || '').slice(-60), natural: img.naturalWidth,
                shown: img.getBoundingClientRect().width}))"""

# Display equations that cannot be read whole: their box (div.math) does not scroll (the theme hides its
# overflow), the MathJax container sticks out of an ancestor that hides its overflow (or, scrolling, of its
# left edge, where no scroll bar reaches), or its content is wider than the container and the container
# does not scroll. Each with the start of its TeX and the reason.
CLIPPED_MATH_JS = """() => {
  const out = [];
  for (const box of document.querySelectorAll('div.math')) {
    const mjx = box.querySelector('mjx-container');
    if (!mjx) continue;
    const tex = (box.getAttribute('data-tex') || mjx.getAttribute('aria-label') ||
                 (mjx.querySelector('mjx-assistive-mml') || {}).textContent || '').slice(0, 50);
    const boxOverflow = getComputedStyle(box).overflowX;
    if (!['auto', 'scroll'].includes(boxOverflow)) {
      out.push({why: `div.math with overflow-x ${boxOverflow}: a long equation is cut at its edge`, tex}); continue;
    }
    const r = mjx.getBoundingClientRect();
    const own = getComputedStyle(mjx).overflowX;
    if (mjx.scrollWidth > mjx.clientWidth + 1 && !['auto', 'scroll'].includes(own)) {
      out.push({why: `content ${mjx.scrollWidth} px in a container of ${mjx.clientWidth} px that does not scroll`,
                tex}); continue;
    }
    if (!['auto', 'scroll'].includes(own)) {
      out.push({why: `display math container with overflow-x ${own}, not auto`, tex}); continue;
    }
    for (let p = mjx.parentElement; p && p !== document.body; p = p.parentElement) {
      const s = getComputedStyle(p).overflowX;
      if (s === 'visible') continue;
      const pr = p.getBoundingClientRect();
      const scrolls = ['auto', 'scroll'].includes(s);
      if (r.left < pr.left - 1 || (!scrolls && r.right > pr.right + 1)) {
        out.push({why: `${Math.round(r.width)} px wide, cut by ${p.tagName.toLowerCase()}.${(p.className || '')
                   .toString().trim().split(/\\s+/).join('.')} (${Math.round(pr.width)} px, overflow-x ${s})`, tex});
        break;
      }
    }
  }
  return out;
}"""

# pydata-sphinx-theme logs this on a first visit, before any theme mode is stored: harmless.
BENIGN_CONSOLE = re.compile(r"^Got invalid theme mode: \. Resetting to auto\.$")
ERROR_NAME = re.compile(r"\b\w*(Error|Exception)\b:|Traceback \(most recent call last\)")


@pytest.mark.parametrize("width", list(WIDTHS), ids=list(WIDTHS))
@pytest.mark.parametrize("page", toc_pages())
def test_page_renders(site, browser, page, width):
    pixels = WIDTHS[width]
    context = browser.new_context(viewport={"width": pixels, "height": 900})
    tab = context.new_page()
    failures: list[str] = []
    console_errors: list[str] = []
    page_errors: list[str] = []
    external: list[str] = []

    def on_request(request):
        host = urlparse(request.url).hostname
        if request.url.startswith("http") and host not in ("127.0.0.1", "localhost"):
            external.append(request.url)

    def on_response(response):
        if response.status >= 400:
            failures.append(f"{response.status} {response.url}")

    tab.on("request", on_request)
    tab.on("response", on_response)
    tab.on("requestfailed", lambda r: failures.append(f"failed {r.url}") if "127.0.0.1" in r.url else None)
    tab.on("console", lambda m: console_errors.append(m.text)
           if m.type == "error" and not BENIGN_CONSOLE.match(m.text) else None)
    # An uncaught exception (a script that throws or does not parse) is a "pageerror", not a console message.
    tab.on("pageerror", lambda error: page_errors.append(f"{error.name}: {error.message}"))
    # Nothing may depend on the network: CI has none.
    tab.route(re.compile(r"^https?://(?!127\.0\.0\.1)"), lambda route: route.abort())
    try:
        tab.goto(f"{site}/{page}.html", wait_until="load")
        tab.wait_for_load_state("networkidle")

        h1 = tab.locator("main h1, article h1").first
        assert h1.count() == 1 and h1.inner_text().strip(), f"{page}: no h1 title"

        images = tab.evaluate("""() => Array.from(document.querySelectorAll('article img, main img'))
            .map(img => ({src: img.currentSrc || img.src, ok: img.complete && img.naturalWidth > 0}))""")
        broken = [i["src"][:120] for i in images if not i["ok"]]
        assert not broken, f"{page}: images that did not load: {broken}"

        n_math = tab.locator(".math").count()
        if n_math:
            tab.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                  timeout=20_000)
            tab.evaluate("() => MathJax.startup.promise")
            rendered = tab.locator(".math mjx-container").count()
            assert rendered == n_math, f"{page}: MathJax rendered {rendered} of {n_math} math elements"
            assert tab.locator("mjx-merror").count() == 0, f"{page}: MathJax reported a TeX error"

        assert tab.locator(".output.traceback").count() == 0, f"{page}: a cell shows a traceback"
        for text in tab.locator(".output.stderr").all_inner_texts():
            assert not re.search(r"Traceback|Error|Exception", text), f"{page}: error on stderr: {text[:300]}"
        for text in tab.locator(".cell_output").all_inner_texts():
            assert not ERROR_NAME.search(text), f"{page}: a cell output shows an error: {text[:300]}"

        no_alt = tab.evaluate("""() => Array.from(document.querySelectorAll('img'))
            .filter(img => !(img.getAttribute('alt') || '').trim())
            .map(img => (img.getAttribute('src') || '').slice(0, 100))""")
        assert not no_alt, f"{page}: images without alt text: {no_alt[:5]}"

        if pixels <= 400:
            scroll, client = tab.evaluate(
                "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            if scroll > client + 1:
                widest = tab.evaluate(OVERFLOW_JS)
                pytest.fail(f"{page}: scrolls sideways at {pixels} px (page {scroll} px wide); widest: {widest}")
            if n_math:
                clipped = tab.evaluate(CLIPPED_MATH_JS)
                assert not clipped, (f"{page}: at {pixels} px display equations are clipped instead of scrolling "
                                     f"(book/_static/energybook.css): {clipped[:3]}")
            shown = tab.evaluate(SHRUNK_JS)
            assert shown or not tab.locator("article img").count(), f"{page}: no article.bd-article around the images"
            shrunk = [f"{i['src']} ({i['natural']} px shown at {i['shown']:.0f} px, {i['shown'] / i['natural']:.2f})"
                      for i in shown if i["natural"] >= ICON_PX and i["shown"] < MIN_PHONE_SCALE * i["natural"]]
            assert not shrunk, (f"{page}: at {pixels} px these images are shown below {MIN_PHONE_SCALE} of their "
                                f"size, so their labels do not read (draw them narrower): {shrunk}")

        assert not failures, f"{page}: failed requests: {failures}"
        assert not external, f"{page}: requests left localhost (no network in CI): {external[:5]}"
        assert not console_errors, f"{page}: console errors: {console_errors[:5]}"
        assert not page_errors, f"{page}: uncaught JavaScript errors: {page_errors[:5]}"
    finally:
        context.close()
