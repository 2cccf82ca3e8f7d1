"""The package's shape: stages import one way (model <- store <- measure <- report <- cli), with no cycles,
counting imports inside functions too; the public API resolves; the package data are present."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import energybook

PACKAGE = Path(energybook.__file__).parent
#: A stage may import itself and the stages listed for it, nothing else. report may read measure (the meter
#: replays recorded timelines for the instruments chapter); measure never imports report.
ALLOWED = {
    "model": {"model", "resources"},
    "store": {"store", "model"},
    "measure": {"measure", "store", "model", "resources"},
    "report": {"report", "store", "model", "measure"},
    "cli": {"model", "store", "measure", "report", "cli"},
    "resources": {"resources"},
    "__init__": {"__init__"},
    "__main__": {"cli"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every energybook module imported anywhere in the file (top level and inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("energybook")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("energybook"):
            if node.module == "energybook":
                found |= {f"energybook.{a.name}" for a in node.names}
            else:
                base = node.module
                for a in node.names:
                    candidate = f"{base}.{a.name}"
                    found.add(candidate if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists()
                              or (PACKAGE.parent / Path(*candidate.split("."))).is_dir() else base)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def test_stages_import_one_way():
    bad = []
    for module, imports in _graph().items():
        stage = _stage(module)
        for imp in imports:
            target = _stage(imp)
            if target == "__init__" and imp == "energybook":
                target = "__init__" if stage == "__init__" else "root"
            if target == "root":
                continue  # `import energybook` for __version__ only
            if target not in ALLOWED[stage]:
                bad.append(f"{module} imports {imp}")
    assert not bad, "imports against the stage order: " + "; ".join(sorted(bad))


def test_measure_never_imports_report():
    offenders = [m for m, imps in _graph().items() if _stage(m) == "measure"
                 and any(_stage(i) == "report" for i in imps)]
    assert not offenders


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of the import graph meets."""
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    return cycles


def test_no_import_cycles():
    names = _graph_names()
    graph = {m: {i for i in imps if i in names} for m, imps in _graph().items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _graph_names() -> set[str]:
    return {_module_name(p) for p in PACKAGE.rglob("*.py")}


def test_the_checker_sees_imports_inside_functions_and_cycles(tmp_path):
    """Neither check is vacuous: a function-level import is seen, and a two-module cycle is found."""
    imports = _imports(PACKAGE / "store" / "catalog.py")
    assert "energybook.store.results" in imports and "energybook.store.workspace" in imports
    path = tmp_path / "x.py"
    path.write_text("def f():\n    from energybook.report import analysis\n")
    assert _imports(path) == {"energybook.report.analysis"}
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_version_is_one_value():
    citation = (PACKAGE.parent / "CITATION.cff")
    if not citation.is_file():
        pytest.skip("not in a checkout")
    assert f"version: {energybook.__version__}" in citation.read_text()


@pytest.mark.parametrize("name", sorted(energybook._API))
def test_public_api_resolves(name):
    if name in ("Meter", "MeterUnavailable", "run_notebook"):
        pytest.importorskip("pandas")
    assert getattr(energybook, name) is not None


def test_unknown_public_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        energybook.nope  # noqa: B018


def test_module_docstrings_name_their_chapters():
    missing = []
    for p in PACKAGE.rglob("*.py"):
        if p.name == "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        if p.parent.name in ("model", "measure", "store", "report") and ":doc:`/book/" not in doc:
            missing.append(_module_name(p))
    assert not missing, f"module docstrings without a 'Used in' chapter link: {missing}"


def test_package_data_ship_with_the_package():
    from energybook import resources

    assert len(list(resources.path("architectures").glob("*.json"))) == 13
    assert resources.path("notebooks", "measure.ipynb").is_file()
    assert {p.name for p in resources.path("paper").glob("*.csv")} >= {"paper_table2_models.csv"}
    with pytest.raises(FileNotFoundError, match="reinstall"):
        resources.path("nothing-here.json")


def test_every_module_imports():
    for name in sorted(_graph_names()):
        if name.endswith(("torch_engine",)):
            pytest.importorskip("torch")
        importlib.import_module(name)
