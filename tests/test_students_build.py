"""The students' edition of the book (``make book-students``) holds every exercise and no solution.

``make book-students`` builds the whole book with ``EB_HIDE_SOLUTIONS=1`` into
``_build/students/_build/html``: sphinx-exercise then drops every ``solution`` directive, and
book/_ext/eb_book.py everything between a ``solution-start`` and its ``solution-end`` (text, code cells and
their outputs). An answer written any other way (a plain box with a drop-down) stays on the page; the
source check of tests/test_book_text.py forbids those, and this file reads the built pages. A page fails when

* it holds a solution box (``class="solution ..."``), a "Solution" title or a drop-down called Solution;
* a paragraph, list item or code block that the full build (``make book``) shows only inside a solution
  is on it (text written elsewhere on the page too is not counted);
* it lost an exercise, or shows one with another number than the full build.

Needs the students' build (``EB_STUDENTS_HTML`` names another built ``html`` folder) and, for the
comparisons, the full build (``make book``; ``EB_BOOK_HTML``). Skipped without them, or when the
students' build is older than a page of the book, except under ``EB_REQUIRE_BOOK=1``, where that is a
failure; with ``EB_BUILD_STUDENTS=1`` a missing or stale students' build is built first (``make
book-students``, a few minutes).
"""

from __future__ import annotations

import html
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from scripts import make_notebooks
from tests.test_book_text import directives

ROOT = Path(__file__).resolve().parent.parent
STUDENTS = Path(os.environ.get("EB_STUDENTS_HTML") or ROOT / "_build" / "students" / "_build" / "html")
FULL = Path(os.environ.get("EB_BOOK_HTML") or ROOT / "_build" / "html")
REQUIRED = os.environ.get("EB_REQUIRE_BOOK") == "1"
BUILD = os.environ.get("EB_BUILD_STUDENTS") == "1"

pytestmark = pytest.mark.book

toc_pages = make_notebooks.toc_pages


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (EB_REQUIRE_BOOK=1: the students' build must be checked)")
    pytest.skip(reason)


def _sources() -> list[Path]:
    """What the students' build is made from: the pages, the configuration and the book's extension."""
    return [*ROOT.joinpath("book").rglob("*.md"), *ROOT.joinpath("book", "_ext").glob("*.py"),
            ROOT / "_config.yml", ROOT / "_toc.yml"]


def _stale(index: Path) -> list[str]:
    built = index.stat().st_mtime
    return sorted(str(p.relative_to(ROOT)) for p in _sources() if "_build" not in p.parts and p.stat().st_mtime > built)


@pytest.fixture(scope="module")
def students() -> Path:
    """The students' built HTML folder, built first under EB_BUILD_STUDENTS=1 when missing or stale."""
    index = STUDENTS / "index.html"
    why = None
    if not index.is_file():
        why = f"{STUDENTS} has no students' build: run `make book-students` first"
    elif "EB_STUDENTS_HTML" not in os.environ and (newer := _stale(index)):
        why = f"the students' build in {STUDENTS} is older than {newer[:3]}: run `make book-students` again"
    if why and BUILD:
        subprocess.run(["make", "book-students"], cwd=ROOT, check=True, timeout=1800)
        why = None
    if why:
        _missing(why)
    return STUDENTS


class _Blocks(HTMLParser):
    """The text of a page's paragraphs, list items and code blocks, each marked in or out of a solution."""

    BLOCKS = {"p", "li", "pre", "dt", "dd", "td", "th"}
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # open elements: (tag, opens a solution)
        self.blocks: list[tuple[bool, str]] = []  # (in a solution, text)
        self.open: list[list[str]] = []  # text of the open blocks, innermost last
        self.solution_titles: list[str] = []
        self._title: list[str] | None = None

    def in_solution(self) -> bool:
        return any(opens for _, opens in self.stack)

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        opens = tag == "div" and "solution" in classes
        self.stack.append((tag, opens))
        if tag in self.BLOCKS:
            self.open.append([])
        if tag in ("summary",) or (tag == "p" and "admonition-title" in classes):
            self._title = []

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        # Close up to the matching open element (the theme's HTML is well formed; this survives a stray tag).
        while self.stack:
            open_tag, _ = self.stack[-1]
            if open_tag in self.BLOCKS and self.open:
                text = " ".join("".join(self.open.pop()).split())
                if text:
                    self.blocks.append((self.in_solution(), text))
            if open_tag in ("summary", "p") and self._title is not None:
                title = " ".join("".join(self._title).split())
                if re.match(r"(solution|answer)s?\b", title, re.I):
                    self.solution_titles.append(title)
                self._title = None
            self.stack.pop()
            if open_tag == tag:
                break

    def handle_data(self, data):
        for block in self.open:
            block.append(data)
        if self._title is not None:
            self._title.append(data)


def blocks(path: Path) -> _Blocks:
    parser = _Blocks()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def answers(full_page: Path) -> list[str]:
    """What the full build shows only inside solutions: blocks of 30 characters or more not found outside."""
    parsed = blocks(full_page)
    outside = {text for inside, text in parsed.blocks if not inside}
    return sorted({text for inside, text in parsed.blocks if inside and len(text) >= 30 and text not in outside})


def test_students_pages_were_built(students):
    missing = [p for p in toc_pages() if not (students / f"{p}.html").is_file()]
    assert not missing, f"pages in _toc.yml without HTML in {students}: {missing}"


@pytest.mark.parametrize("page", toc_pages())
def test_students_page_holds_no_solution(students, page):
    path = students / f"{page}.html"
    if not path.is_file():
        pytest.fail(f"{path} was not built")
    text = path.read_text(encoding="utf-8")
    boxes = re.findall(r'<div class="solution\b[^"]*"[^>]*>', text)
    assert not boxes, f"{page}: solution boxes in the students' build: {boxes[:3]}"
    parsed = blocks(path)
    assert not parsed.solution_titles, f"{page}: titles of solutions in the students' build: {parsed.solution_titles}"
    full = FULL / f"{page}.html"
    if not full.is_file():
        _missing(f"{full} was not built: run `make book` to compare the students' build with it")
    shown = {t for _, t in parsed.blocks}
    leaked = [a for a in answers(full) if a in shown]
    assert not leaked, f"{page}: text of the solutions is in the students' build: {[a[:80] for a in leaked[:3]]}"


def _numbers(root: Path) -> dict[str, str]:
    found = {}
    for page in toc_pages():
        path = root / f"{page}.html"
        if not path.is_file():
            continue
        for label, title in re.findall(r'<div class="exercise\b[^"]*" id="([^"]+)">\s*'
                                       r'<p class="admonition-title">(.*?)</p>', path.read_text(encoding="utf-8"),
                                       re.S):
            found[label] = " ".join(html.unescape(re.sub(r"<[^>]+>", "", title)).split())
    return found


def test_students_build_keeps_every_exercise_with_its_number(students):
    labels = sorted(d["options"].get("label") for page in toc_pages() if (ROOT / f"{page}.md").is_file()
                    for d in directives((ROOT / f"{page}.md").read_text(encoding="utf-8"))
                    if d["name"] in ("exercise", "exercise-start"))
    shown = _numbers(students)
    assert sorted(shown) == labels, f"exercises missing from the students' build: {sorted(set(labels) - set(shown))}"
    if not (FULL / "index.html").is_file():
        _missing(f"{FULL} has no built book: run `make book` to compare the numbers")
    full = _numbers(FULL)
    differ = {k: (full.get(k), v) for k, v in shown.items() if full.get(k) != v}
    assert not differ, f"exercises numbered or titled differently in the two builds: {differ}"


#: A solution in any file of the build: its box, its title, or its directive (in a copy of a page's source).
SOLUTION_ANYWHERE = re.compile(r'class="solution\b|>Solution to |\{solution(-start|-end)?\}')


def test_no_file_of_the_students_build_holds_a_solution(students):
    """Not the pages only: the copies of the sources behind the download button, the search index, ..."""
    found = []
    for path in sorted(students.rglob("*")):
        if not path.is_file() or path.suffix not in (".html", ".js", ".md", ".ipynb", ".txt", ".json", ".py"):
            continue
        if SOLUTION_ANYWHERE.search(path.read_text(encoding="utf-8", errors="replace")):
            found.append(str(path.relative_to(students)))
    assert not found, f"files of the students' build that hold solutions: {found[:10]}"
