"""The chapters speak to readers: no issue numbers or project planning in their text.

Planning (what is still to come, targets, which issue delivers what) belongs on the status page,
book/status.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
PLANNING_PAGE = BOOK / "status.md"

#: "issue 12", "Issue #14", "issues 3 and 4"; "the coverage issue", "the physical-model issue".
JARGON = (re.compile(r"\bissues?\s*#?\d+", re.I), re.compile(r"\bthe [\w-]+\s+issue\b", re.I))


def jargon(text: str) -> list[str]:
    return [m.group(0) for pattern in JARGON for m in pattern.finditer(text)]


def chapters() -> list[Path]:
    return sorted(p for p in BOOK.rglob("*.md") if "_build" not in p.parts and p != PLANNING_PAGE)


@pytest.mark.parametrize("page", chapters(), ids=lambda p: str(p.relative_to(BOOK)))
def test_chapters_name_no_issues(page):
    found = jargon(page.read_text())
    assert not found, f"{page.relative_to(BOOK)} speaks of project issues ({found}); planning goes on status.md"


def test_the_check_catches_issue_numbers():
    assert jargon("Issue 12's engine has targets; issue #14 too") == ["Issue 12", "issue #14"]
    assert jargon("the coverage issue will; the physical-model issue") == ["the coverage issue",
                                                                          "the physical-model issue"]
    assert jargon("A known issue of NVML: the reading lags.") == []


# --- exercises: sphinx-exercise directives only, one label each across the book ----------------------
# `make book-students` (EB_HIDE_SOLUTIONS=1) removes sphinx-exercise's solutions, and only those: an
# exercise written as a plain box with a drop-down answer keeps its answer in the students' build. Every
# exercise is numbered in one sequence across the book (Sphinx's numfig, numfig_secnum_depth 0), so a
# number typed into the text ("Exercise 1") would name another exercise once one is added before it.

#: An opening fence of a MyST directive: ```{name} argument or :::{name} argument.
FENCE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[\w-]+)\}[ \t]*(?P<arg>.*?)\s*$")
#: Boxes titled like an exercise or a solution that are not sphinx-exercise's directives.
EXERCISE_TITLE = re.compile(r"^(exercises?|solutions?|answers?|problems?|questions?|hints?)\b", re.I)
EXERCISE_LIKE = (
    re.compile(r"<summary>\s*(exercise|solution|answer)", re.I),  # raw <details> drop-downs
    re.compile(r"^\s*\*\*(exercise|solution|answer)\b", re.I | re.M),  # a bold "**Exercise 2.**" paragraph
    re.compile(r"\bExercises? \d+\b"),  # a typed number: use {numref}`label`
)
SPHINX_EXERCISE = {"exercise", "exercise-start", "exercise-end", "solution", "solution-start", "solution-end"}


def pages() -> list[Path]:
    return sorted(p for p in BOOK.rglob("*.md") if "_build" not in p.parts)


def directives(text: str) -> list[dict]:
    """Every directive of a MyST page: name, argument, options (the ``:key: value`` lines after it), line."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if not m:
            continue
        options = {}
        for option in lines[i + 1:]:
            o = re.match(r"^:([\w-]+):\s*(.*?)\s*$", option)
            if not o:
                break
            options[o.group(1)] = o.group(2)
        found.append({"name": m.group("name"), "arg": m.group("arg"), "options": options, "line": i + 1})
    return found


def exercise_like_boxes(text: str) -> list[str]:
    """Exercises or solutions written as something other than sphinx-exercise's directives."""
    found = [f"line {d['line']}: {{{d['name']}}} {d['arg']}" for d in directives(text)
             if d["name"] not in SPHINX_EXERCISE and EXERCISE_TITLE.match(d["arg"])]
    found += [m.group(0) for pattern in EXERCISE_LIKE for m in pattern.finditer(text)]
    return found


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(BOOK)))
def test_exercises_are_sphinx_exercise_directives(page):
    found = exercise_like_boxes(page.read_text())
    assert not found, (f"{page.relative_to(BOOK)}: exercise-like boxes that are not sphinx-exercise's exercise and "
                       f"solution directives (the students' build keeps their answers; {{numref}} for numbers): "
                       f"{found}")


def exercise_problems(texts: dict[str, str]) -> list[str]:
    """Across the book: exercises without a label or a solution, duplicate labels, unnumbered exercises."""
    problems, owners = [], {}
    for name, text in texts.items():
        found = directives(text)
        for k, d in enumerate(found):
            if d["name"] in ("exercise", "exercise-start"):
                label = d["options"].get("label", "")
                if not label:
                    problems.append(f"{name}:{d['line']}: an exercise without a :label:")
                    continue
                owners.setdefault(label, []).append(f"{name}:{d['line']}")
                if "nonumber" in d["options"]:
                    problems.append(f"{name}:{d['line']}: {label} is :nonumber: (every exercise is numbered)")
                following = next((e for e in found[k + 1:] if e["name"] in ("exercise", "exercise-start",
                                                                              "solution", "solution-start")), None)
                if not following or following["name"] not in ("solution", "solution-start") \
                        or following["arg"] != label:
                    problems.append(f"{name}:{d['line']}: {label} is not followed by its solution")
            elif d["name"] == "solution" and d["options"].get("label"):
                owners.setdefault(d["options"]["label"], []).append(f"{name}:{d['line']}")
    problems += [f"label {label!r} used {len(where)} times: {where}" for label, where in owners.items()
                 if len(where) > 1]
    return problems


def test_exercise_labels_are_unique_across_the_book():
    texts = {str(p.relative_to(BOOK)): p.read_text() for p in pages()}
    assert sum(d["name"] in ("exercise", "exercise-start") for t in texts.values() for d in directives(t)) >= 20
    problems = exercise_problems(texts)
    assert not problems, "\n".join(problems)


def test_every_taught_page_has_an_exercise():
    """The physics, worked-example and three-views pages teach; each ends with an exercise and its solution."""
    for name in ("physics", "worked_example", "views"):
        found = directives((BOOK / f"{name}.md").read_text())
        assert any(d["name"] == "exercise" for d in found), f"book/{name}.md has no exercise"
        assert any(d["name"] in ("solution", "solution-start") for d in found), f"book/{name}.md has no solution"


def test_the_exercise_checks_catch_plain_boxes_and_duplicates():
    plain = "```{admonition} Exercise 1\n:class: tip\nDo it.\n```\n\n:::{dropdown} Solution\nDone.\n:::\n"
    assert len(exercise_like_boxes(plain)) == 3  # the box, the drop-down and the typed number
    assert exercise_like_boxes("<details><summary>Solution</summary>x</details>")
    assert exercise_like_boxes("**Exercise.** Count it.")
    teachers = "```{admonition} For teachers: a build without the solutions\n:class: tip\n```\n"
    assert exercise_like_boxes(teachers) == []
    good = "```{exercise} Count\n:label: ex-a\n\nx\n```\n\n```{solution-start} ex-a\n:class: dropdown\n```\n\ny\n\n" \
           "```{solution-end}\n```\n"
    assert exercise_like_boxes(good) == [] and exercise_problems({"a.md": good}) == []
    problems = exercise_problems({"a.md": good, "b.md": good.replace(":label: ex-a", ":label: ex-a\n:nonumber:")})
    assert any("used 2 times" in p for p in problems) and any(":nonumber:" in p for p in problems)
    assert any("without a :label:" in p for p in exercise_problems({"c.md": "```{exercise} X\n\nx\n```\n"}))
    assert any("not followed" in p for p in exercise_problems({"d.md": "```{exercise} X\n:label: ex-d\n\nx\n```\n"}))


# --- admonitions: a title only where the directive takes one ------------------------------------------
# note, important, warning, tip, ... take no argument: MyST puts text after the name into the body, as the
# start of its first paragraph, under the generic title ("Important"). A titled box is
# ```{admonition} Title with :class: important.
TITLELESS = ("attention", "caution", "danger", "error", "hint", "important", "note", "tip", "warning")


def titles_on_titleless_admonitions(text: str) -> list[str]:
    return [f"line {d['line']}: {{{d['name']}}} {d['arg']}" for d in directives(text)
            if d["name"] in TITLELESS and d["arg"]]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(BOOK)))
def test_titleless_admonitions_have_no_title(page):
    found = titles_on_titleless_admonitions(page.read_text())
    assert not found, (f"{page.relative_to(BOOK)}: a title after a directive that takes none goes into the body; "
                       f"write ```{{admonition}} Title with :class: <kind>: {found}")


def test_the_title_check_catches_important_with_a_title():
    assert titles_on_titleless_admonitions(":::{important} The sweet spot\nText.\n:::\n") == [
        "line 1: {important} The sweet spot"]
    assert titles_on_titleless_admonitions("```{note} A note\n```\n```{warning}\nW\n```\n") == ["line 1: {note} A note"]
    assert titles_on_titleless_admonitions(":::{admonition} The sweet spot\n:class: important\n:::\n") == []
