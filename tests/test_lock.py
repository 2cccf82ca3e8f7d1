"""The lock (requirements/*.txt) agrees with pyproject.toml, and pyproject.toml declares only tested ranges.

`make lock` regenerates the lock; these tests fail until it has been run after a change of pyproject.toml."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
tomllib = pytest.importorskip("tomllib")

#: Each lock file and the extras it holds besides the base dependencies.
LOCKS = {"base.txt": (), "book.txt": ("book",), "test.txt": ("book", "test")}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared(extras) -> list[Requirement]:
    project = _project()
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def _spec():
    path = ROOT / "scripts" / "lock_overlay.py"
    spec = importlib.util.spec_from_file_location("lock_overlay", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pins(name: str) -> dict[str, str]:
    return {n: v for n, (v, _) in _spec().entries((REQ / name).read_text()).items()}


@pytest.mark.parametrize("lock,extras", list(LOCKS.items()))
def test_every_declared_requirement_is_locked_within_its_range(lock, extras):
    pins = _pins(lock)
    bad = []
    for req in _declared(extras):
        version = pins.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(Version(version), prereleases=True):
            bad.append(f"{req} (locked: {version})")
    assert not bad, f"requirements/{lock} disagrees with pyproject.toml: {bad}; run `make lock`"


@pytest.mark.parametrize("lock,extras", list(LOCKS.items()))
def test_the_lock_holds_nothing_pyproject_no_longer_asks_for(lock, extras):
    """A direct entry ("via energybook (pyproject.toml)" alone) must still be declared."""
    declared = {canonicalize_name(r.name) for r in _declared(extras)}
    stale = []
    for name, (_, block) in _spec().entries((REQ / lock).read_text()).items():
        vias = re.findall(r"#\s+(?:via\s+)?(\S.*)", block)
        vias = [v.strip() for v in vias if v.strip() not in ("via",)]
        if vias and all(v.startswith("energybook") for v in vias) and name not in declared:
            stale.append(name)
    assert not stale, f"requirements/{lock} still pins {stale}, which pyproject.toml no longer declares: make lock"


@pytest.mark.parametrize("lock", [*LOCKS, "floor.txt"])
def test_every_entry_is_pinned_exactly_with_hashes(lock):
    entries = _spec().entries((REQ / lock).read_text())
    assert entries, lock
    for name, (version, block) in entries.items():
        assert "--hash=sha256:" in block, f"{lock}: {name}=={version} has no hash"


def test_the_book_lock_has_no_torch_and_no_test_tools():
    pins = _pins("book.txt")
    assert not {"torch", "playwright", "pytest", "transformers"} & set(pins)


def test_the_test_lock_takes_torch_s_cpu_build():
    assert _pins("test.txt")["torch"].endswith("+cpu")


def test_transformers_range_is_tested_and_bounded_below_the_next_major():
    req = next(r for r in _declared(("gpu",)) if r.name == "transformers")
    floor = next(Version(s.version) for s in req.specifier if s.operator == ">=")
    upper = next(Version(s.version) for s in req.specifier if s.operator == "<")
    assert upper <= Version(f"{floor.major + 1}"), req
    # the floor is what the floor job runs, and what the lent GPUs have
    assert Version(_pins("floor.txt")["transformers"]) == floor
    assert Version(_pins("test.txt")["transformers"]) in req.specifier
    assert [r for r in _declared(("test",)) if r.name == "transformers"][0].specifier == req.specifier


def test_the_overlay_keeps_only_what_differs(tmp_path):
    test = "a==1.0 \\\n    --hash=sha256:aa\n    # via x\nb==2.0 \\\n    --hash=sha256:bb\n"
    full = ("a==1.0 \\\n    --hash=sha256:aa\nb==1.5 \\\n    --hash=sha256:b1\n"
            "transformers==5.17.0 \\\n    --hash=sha256:tt\n")
    (tmp_path / "t.txt").write_text(test)
    (tmp_path / "f.txt").write_text(full)
    overlay = _spec()
    entries = overlay.entries(full)
    assert set(entries) == {"a", "b", "transformers"} and entries["b"][0] == "1.5"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert overlay.main([str(tmp_path / "t.txt"), str(tmp_path / "f.txt")]) == 0
    text = out.getvalue()
    assert "b==1.5" in text and "transformers==5.17.0" in text and "a==1.0" not in text


def test_the_floor_job_runs_the_transformers_it_names():
    """`make unit-floor` sets EB_EXPECT_TRANSFORMERS: the overlay must really be what is imported."""
    expected = os.environ.get("EB_EXPECT_TRANSFORMERS")
    if not expected:
        pytest.skip("not the floor job")
    transformers = pytest.importorskip("transformers")
    assert transformers.__version__ == expected, (transformers.__file__, sys.path[:3])
