"""The introduction says what is measured about the gap to the study, and no more.

At the power cap a gap in energy is a gap in speed, whatever causes it; the engine and the random weights both can,
and the book has not measured them apart. A sentence that names one of them as *the* cause must not come back.
"""

from __future__ import annotations

import re
from pathlib import Path

BOOK = Path(__file__).resolve().parents[1] / "book"

#: Claims that single out one cause of the gap: "a gap in speed: the engine", "the engine is the cause".
OVERCLAIMS = (re.compile(r"gap in speed\s*:\s*the engine", re.I),
              re.compile(r"the (engine|weights?) (is|are) the (cause|reason)", re.I),
              re.compile(r"caused by (the|our) engine", re.I))


def overclaims(text: str) -> list[str]:
    return [m.group(0) for pattern in OVERCLAIMS for m in pattern.finditer(text)]


def test_the_intro_names_no_single_cause():
    assert overclaims((BOOK / "intro.md").read_text()) == []


def test_the_intro_names_both_candidates_and_that_they_are_not_measured_apart():
    text = " ".join((BOOK / "intro.md").read_text().split())
    why = text[text.index("**Why.**"):]
    assert "engine" in why and "weights" in why
    assert "not been measured apart" in why


def test_the_check_catches_the_old_sentence():
    old = "so a joule per token is close to that power times the seconds per token, and the gap is a gap in speed: " \
          "the engine."
    assert overclaims(old) == ["gap in speed: the engine"]
    assert overclaims("at the cap that is a gap in speed, and the engine is the cause we have evidence for")
