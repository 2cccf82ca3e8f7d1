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
