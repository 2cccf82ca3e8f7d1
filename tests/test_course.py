"""The course kit (energybook.report.course, book/course/): the syllabus names only pages and exercises that exist,
the answer checks pass a right answer and fail a wrong one, and the slide builder makes one deck per week.

Students can run it too: ``python -m pytest tests/test_course.py``.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml

from energybook.report import course
from tests.test_book_text import directives

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def bench_results(monkeypatch):
    """The checks read the committed benchmark results from the variable the labs page sets."""
    from energybook.report import bench

    monkeypatch.setenv(bench.ENV_VAR, str(ROOT / "benchmarks" / "results"))
BOOK = ROOT / "book"


def toc_files() -> list[str]:
    """Every page of _toc.yml, as it names them (``book/physics``), the root first."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    found = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                found.append(str(node["file"]).removesuffix(".md"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return found


def page_texts() -> dict[str, str]:
    return {page: (ROOT / f"{page}.md").read_text(encoding="utf-8") for page in toc_files()
            if (ROOT / f"{page}.md").is_file()}


def exercise_labels(texts: dict[str, str]) -> set[str]:
    return {d["options"]["label"] for text in texts.values() for d in directives(text)
            if d["name"] in ("exercise", "exercise-start") and d["options"].get("label")}


def section_labels(texts: dict[str, str]) -> set[str]:
    return {m.group(1) for text in texts.values() for m in re.finditer(r"^\(([\w-]+)\)=\s*$", text, re.M)}


# --- the syllabus --------------------------------------------------------------------------------


def test_the_weeks_are_six_numbered_in_order():
    assert [w.number for w in course.WEEKS] == list(range(1, 7))
    for w in course.WEEKS:
        assert w.title and w.objectives and w.reading and w.labs and w.exercises and w.checks and w.assessment, w


def test_every_reading_page_is_in_the_table_of_contents():
    toc = set(toc_files())
    missing = [(w.number, p) for w in course.WEEKS for p in w.reading if p not in toc]
    assert not missing, f"reading not in _toc.yml: {missing}"
    assert {"book/course/syllabus", "book/course/labs"} <= toc, "the course's pages are not in _toc.yml"


def test_every_exercise_named_exists_once_in_the_book():
    known = exercise_labels(page_texts())
    named = [e for w in course.WEEKS for e in w.exercises]
    assert not [e for e in named if e not in known], f"exercises that the book lacks: {set(named) - known}"
    assert len(named) == len(set(named)), "an exercise is set in two weeks"


def test_the_weeks_cover_every_exercise_of_the_book():
    known = exercise_labels(page_texts())
    named = {e for w in course.WEEKS for e in w.exercises}
    assert known <= named, f"exercises of the book in no week: {sorted(known - named)}"


def test_every_lab_and_check_named_exists():
    texts = page_texts()
    sections = section_labels(texts)
    missing = [lab for w in course.WEEKS for lab in w.labs if lab not in sections]
    assert not missing, f"labs without a target on a page of _toc.yml: {missing}"
    assert {c for w in course.WEEKS for c in w.checks} == set(course.CHECKS)
    targets = sections | exercise_labels(texts)
    assert not [c.target for c in course.CHECKS.values() if c.target not in targets]


def test_every_check_is_run_on_the_labs_page():
    labs = (BOOK / "course" / "labs.md").read_text()
    assert set(re.findall(r'course\.check\("([\w-]+)"', labs)) == set(course.CHECKS)


def test_the_syllabus_table_links_every_page_exercise_and_deck():
    text = course.syllabus_markdown()
    for w in course.WEEKS:
        assert f"### Week {w.number}: {w.title}" in text
        assert all(f"{{doc}}`/{p}`" in text for p in w.reading)
        assert all(f"{{numref}}`Exercise {{number}} <{e}>`" in text for e in w.exercises)
        assert all(f"{{ref}}`{lab}`" in text for lab in w.labs)
        assert f'href="../../slides/{course.deck_name(w)}"' in text
    assert "slides" not in course.syllabus_markdown(slides=None)
    titled = course.syllabus_markdown(titles={"ex-counting-ridge": "The batch that reaches the ridge point"})
    assert "{numref}`Exercise {number} <ex-counting-ridge>`: The batch that reaches the ridge point" in titled
    page = (BOOK / "course" / "syllabus.md").read_text()
    assert "course.syllabus_markdown(titles=course.exercise_titles_in(BOOK))" in page
    assert "{glue:md} course_weeks" in page


def test_exercise_titles_are_the_directives_arguments():
    texts = {str(p): p.read_text(encoding="utf-8") for p in BOOK.rglob("*.md") if "_build" not in p.parts}
    expected = {d["options"]["label"]: d["arg"] for t in texts.values() for d in directives(t)
                if d["name"] in ("exercise", "exercise-start") and d["options"].get("label")}
    assert len(expected) >= 20 and course.exercise_titles_in(BOOK) == expected


# --- the checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(course.CHECKS))
def test_a_check_passes_the_right_answer_and_fails_a_wrong_one(name, capsys):
    expected = course.CHECKS[name].expected()
    assert expected > 0
    right = course.check(name, expected)
    assert right.passed and bool(right) and "pass" in capsys.readouterr().out
    high = course.check(name, expected * 1.5 + 2)
    assert not high.passed and "too high" in high.message and course.CHECKS[name].hint in high.message
    assert high.message in capsys.readouterr().out
    low = course.check(name, expected * 0.5 - 2, quiet=True)
    assert not low.passed and "too low" in low.message
    assert capsys.readouterr().out == ""  # quiet


def test_an_unanswered_check_fails_without_computing():
    result = course.check("views-factor", None, quiet=True)
    assert not result.passed and result.expected is None and "not answered yet" in result.message


def test_the_tolerance_is_the_checks():
    expected = course.CHECKS["counting-ridge-batch"].expected()
    assert course.check("counting-ridge-batch", expected + 1, quiet=True).passed  # a rounded ridge moves it by one
    assert not course.check("counting-ridge-batch", expected + 3, quiet=True).passed
    mape = course.CHECKS["fitting-relative-mape"].expected()
    assert course.check("fitting-relative-mape", round(mape, 2), quiet=True).passed
    assert not course.check("fitting-relative-mape", mape * 1.05, quiet=True).passed


def test_the_views_factor_is_read_from_the_measured_grid():
    """1 + n_in / n_out at the grid's corner of the longest prompt and the shortest answer."""
    from energybook.report import analysis

    table = analysis.measured_table(engine=analysis.BOOK_ENGINE)
    llama = table[table["model"] == "Llama-3.2-1B"]
    if llama.empty:
        pytest.skip("no measured Llama 3.2 1B grid in this workspace")
    assert course.CHECKS["views-factor"].expected() == pytest.approx(1 + llama["n_in"].max() / llama["n_out"].min())


def test_an_unknown_check_names_the_known_ones():
    with pytest.raises(KeyError, match="counting-ridge-batch"):
        course.check("nope", 1)


def test_the_command_line_checks_and_lists(capsys):
    expected = course.CHECKS["experiment-waves"].expected()
    assert course.main(["check", "experiment-waves", str(expected)]) == 0
    assert course.main(["check", "experiment-waves", str(expected * 2)]) == 1
    assert course.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in course.CHECKS)


# --- the slides ----------------------------------------------------------------------------------

#: A 1x1 PNG.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5"
                       "ErkJggg==")


def _figure(label: str, number: int, alt: str, caption: str, src: str) -> str:
    return (f'<figure class="align-default" id="{label}">\n<img alt="{alt}" src="{src}" />\n<figcaption>\n'
            f'<p><span class="caption-number">Fig. {number} </span><span class="caption-text">{caption}</span>'
            f'<a class="headerlink" href="#{label}" title="Link to this image">#</a></p>\n</figcaption>\n</figure>')


@pytest.fixture
def built(tmp_path) -> Path:
    """A built book in miniature: week 1's physics page with two figures, week 2's counting page with one."""
    html = tmp_path / "html"
    (html / "_images").mkdir(parents=True)
    (html / "book").mkdir()
    (html / "index.html").write_text("<html></html>")
    for name in ("a.png", "b.png", "c.png"):
        (html / "_images" / name).write_bytes(PNG)
    exercise = ('<div class="exercise admonition" id="ex-physics-lower-cap">\n<p class="admonition-title">'
                '<span class="caption-number">Exercise 1 </span> (A lower power cap)</p></div>')
    (html / "book" / "physics.html").write_text(
        "<html><body><h1>Energy is power times time<a class=\"headerlink\" href=\"#x\">#</a></h1>"
        + _figure("fig-power-cap", 1, "Scatter of power &amp; time", "Mean power <em>per point</em>.",
                  "../_images/a.png")
        + _figure("fig-roofline", 2, "A roofline", "The roofline.", "../_images/b.png") + exercise
        + "</body></html>")
    (html / "book" / "counting.html").write_text(
        "<html><body><h1>Counting</h1>" + _figure("fig-heatmaps", 8, "Two heat maps", "Heat maps.",
                                                  "../_images/c.png") + "</body></html>")
    return html


def test_page_figures_reads_number_caption_alt_and_image(built):
    figures = course.page_figures(built, "book/physics")
    assert [f.label for f in figures] == ["fig-power-cap", "fig-roofline"]
    first = figures[0]
    assert (first.number, first.caption, first.alt) == ("Fig. 1", "Mean power per point.", "Scatter of power & time")
    assert first.page_title == "Energy is power times time" and first.image == (built / "_images" / "a.png")
    assert course.page_figures(built, "book/nowhere") == []


def test_one_deck_per_week_with_every_figure_its_alt_text_caption_and_source(built, tmp_path):
    out = built / "slides"
    decks = course.build_slides(built, out, measured="measured on a test GPU (GPU-0), hf engine")
    assert [d.name for d in decks] == [f"week-{w.number}.html" for w in course.WEEKS]
    assert (out / "index.html").is_file()
    week1 = decks[0].read_text()
    slides = re.findall(r'<section id="(fig-[\w-]+)">(.*?)</section>', week1, re.S)
    assert [label for label, _ in slides] == ["fig-power-cap", "fig-roofline"]
    for label, body in slides:
        assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="[^"]+">', body), label
        assert "<figcaption><b>Fig. " in body and "Alt text:" in body
        assert f'href="../book/physics.html#{label}"' in body and 'class="source"' in body
    assert "Scatter of power &amp; time" in week1 and "measured on a test GPU (GPU-0), hf engine" in week1
    assert "Exercise 1 (A lower power cap)" in week1  # numbered as in the built book
    assert re.findall(r'<section id="(fig-[\w-]+)">', decks[1].read_text()) == ["fig-heatmaps"]
    assert not re.findall(r'<section id="fig-', decks[2].read_text())  # no page of week 3 was built
    assert not re.search(r'src="(?!data:)', "".join(d.read_text() for d in decks)), "a deck needs another file"


def test_the_slides_need_a_built_book(tmp_path):
    with pytest.raises(FileNotFoundError, match="make book"):
        course.build_slides(tmp_path, tmp_path / "slides", measured="")


def test_the_slides_command(built, capsys):
    assert course.main(["slides", "--html", str(built)]) == 0
    assert len(list((built / "slides").glob("week-*.html"))) == len(course.WEEKS)
    assert "decks in" in capsys.readouterr().out
