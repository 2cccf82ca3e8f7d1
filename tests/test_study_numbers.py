"""The study's numbers have one home: ``energybook/resources/paper/quoted.csv``.

Every number the book quotes from the SweetSpot study's text is one row of that table, with its scope,
where the study prints it and the arXiv version; pages read it with ``energybook.model.paper.quoted``
(and glue it), never type it. The page check below fails on a value of the table typed into a page.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from energybook.model import paper
from energybook.report import analysis

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"


# --- the table and its loader -----------------------------------------------------------------------
def test_every_row_says_what_where_which_version_and_scope():
    table = paper.quoted_table()
    assert len(table) >= 15
    assert list(table.columns[: len(paper.QUOTED_COLUMNS)]) == list(paper.QUOTED_COLUMNS)
    for column in paper.QUOTED_COLUMNS:
        empty = table.loc[table[column].str.strip() == "", "key"].tolist()
        assert not empty, f"rows without {column!r}: {empty}"
    assert set(table["version"]) <= {"v1", "v2"}
    assert table["key"].is_unique
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in table["key"])
    for text in table["value"]:
        float(text)  # every value is a number


def test_quoted_reads_numbers_and_names_close_keys():
    assert paper.quoted("best_worst_ratio_mean") == pytest.approx(33.41)
    assert paper.quoted("batch_llama32_1b_peak_max_batch_64") == pytest.approx(48.90)
    assert paper.quoted("n_req") == 1000 and isinstance(paper.quoted("n_req"), int)
    with pytest.raises(KeyError, match="best_worst_ratio_mean"):
        paper.quoted("best_worst_ratio")
    table = paper.quoted_table()
    table.loc[0, "value"] = "0"  # a copy: the cached table is not changed
    assert paper.quoted(paper.quoted_table().loc[0, "key"]) != 0


def test_the_best_worst_ratio_is_a_mean_not_a_maximum():
    """Issue: it was quoted as "up to" in one place and as a mean in another."""
    scope = paper.quoted_table().set_index("key").loc["best_worst_ratio_mean", "scope"]
    assert scope.startswith("mean over the 13 models")
    bib = (BOOK / "references.bib").read_text()
    assert "up to 33" not in bib


def test_table3_means_agree_with_table3():
    means = paper.paper_table3().drop(columns=["model", "llm"]).mean()
    for formula, mean in means.items():
        assert paper.quoted(f"mape_mean_{formula}") == pytest.approx(mean, abs=0.005), formula


def test_package_constants_read_the_table():
    text = analysis.STUDY_TEXT
    assert text.best_worst_ratio == paper.quoted("best_worst_ratio_mean")
    assert text.best_worst_ratio_sd == paper.quoted("best_worst_ratio_sd")
    assert text.mape_pct == paper.quoted("mape_mean_memory_flops_model")
    assert text.llama_64_256 == paper.quoted("llama32_1b_tokens_per_j_nin64_nout256")
    assert text.llama_64_4096 == paper.quoted("llama32_1b_tokens_per_j_nin64_nout4096")
    assert text.batch_1024_64_4096 == paper.quoted("batch_llama32_1b_nout4096_max_batch_1024")
    assert text.batch_256_64_4096 == paper.quoted("batch_llama32_1b_nout4096_max_batch_256")
    assert text.n_req == paper.quoted("n_req")


# --- no study number typed into a page --------------------------------------------------------------
def _significant_digits(text: str) -> int:
    return len(text.replace(".", "").lstrip("0"))


def printed_forms(value: str) -> set[str]:
    """How a value of the table may be printed: as the study prints it (``48.90``), without its trailing
    zeros (``48.9``) and rounded to one decimal fewer (``33.4``), each only with 3 significant digits or
    more. Whole numbers (grid lengths, request counts, years) and 2-digit decimals are left out: they are
    everywhere in the book for reasons of its own."""
    if "." not in value:
        return set()
    forms = {value}
    stripped = value.rstrip("0").rstrip(".")
    if "." in stripped:
        forms.add(stripped)
        decimals = len(value.split(".")[1])
        if decimals > 1:
            forms.add(str(Decimal(value).quantize(Decimal(1).scaleb(1 - decimals), rounding=ROUND_HALF_UP)))
    return {f for f in forms if "." in f and _significant_digits(f) >= 3}


def study_forms() -> dict[str, str]:
    """Printed form -> key, for every value of the table that the page check looks for."""
    forms = {}
    for key, value in zip(paper.quoted_table()["key"], paper.quoted_table()["value"]):
        for form in printed_forms(value):
            forms.setdefault(form, key)
    return forms


_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)
_GLUE = re.compile(r"\{glue(?::\w+)?\}`[^`]*`")
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.S)
_MATH_ROLE = re.compile(r"\{math\}`[^`]*`")
_INLINE_MATH = re.compile(r"(?<![\\$])\$[^$\n]+\$")
_NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?!\.?\d)")


def typed_study_numbers(page: str) -> list[tuple[int, str, str]]:
    """(line, number, key) for every value of the table typed into a page's text or code.

    Ignored: the notebook header, glue roles (their formats), math (our own formulas). Code cells that read
    from the table name keys, not values, so they pass.
    """
    forms = study_forms()
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # noqa: E731  (keeps line numbers)
    text = _FRONT_MATTER.sub(blank, page)
    for pattern in (_GLUE, _DISPLAY_MATH, _MATH_ROLE, _INLINE_MATH):
        text = pattern.sub(blank, text)
    hits = []
    for number, line in ((m.group(0), text.count("\n", 0, m.start()) + 1) for m in _NUMBER.finditer(text)):
        if number in forms:
            hits.append((line, number, forms[number]))
    return hits


def book_pages() -> list[Path]:
    return sorted(p for p in BOOK.rglob("*.md") if "_build" not in p.parts)


def test_printed_forms():
    assert printed_forms("48.90") == {"48.90", "48.9"}
    assert printed_forms("33.41") == {"33.41", "33.4"}
    assert printed_forms("120.71") == {"120.71", "120.7"}
    assert printed_forms("4.90") == {"4.90"}  # 4.9 has two significant digits
    assert printed_forms("0.42") == set() and printed_forms("1000") == set()


@pytest.mark.parametrize("page", book_pages(), ids=lambda p: str(p.relative_to(BOOK)))
def test_no_study_number_is_typed_into_a_page(page):
    hits = typed_study_numbers(page.read_text())
    assert not hits, (f"{page.relative_to(ROOT)} types study numbers; read them with "
                      f"energybook.model.paper.quoted(key) and glue them: {hits}")


def test_the_page_check_catches_a_typed_number():
    page = """---
jupytext:
  text_representation:
    format_version: 0.13
---
# A page

```{code-cell} ipython3
STUDY_BATCH = {"max_batch_1024": paper.quoted("llama32_1b_tokens_per_j_nin64_nout256")}
glue("study_batch_1024", STUDY_BATCH["max_batch_1024"], display=False)
```

A peak of {glue:text}`study_batch_1024:.2f` tokens per joule in 2026, with $E = 1.79 x$ our own.
Version 2.25.1 of a tool; 11.79 and 1.795 are other numbers.
"""
    assert typed_study_numbers(page) == []
    typed = page + "\nwith up to 64 the study measured 48.90 tokens/J, about 33.4 times.\n"
    assert [(n, k) for _, n, k in typed_study_numbers(typed)] == [
        ("48.90", "batch_llama32_1b_peak_max_batch_64"), ("33.4", "best_worst_ratio_mean")]
    in_code = page.replace('paper.quoted("llama32_1b_tokens_per_j_nin64_nout256")', "120.71")
    assert [n for _, n, _ in typed_study_numbers(in_code)] == ["120.71"]
