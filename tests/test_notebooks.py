"""The teaching and publishing infrastructure, without a GPU and without building the book:
the Colab notebooks (scripts/make_notebooks.py), the launch-button and students'-build extension
(book/_ext/eb_book.py), the bibliography, and the one repository URL."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


make_notebooks = _load("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
eb_book = _load("eb_book", ROOT / "book" / "_ext" / "eb_book.py")
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
URL = CONFIG["repository"]["url"]


# --- the Colab notebooks --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def notebooks(tmp_path_factory):
    out = tmp_path_factory.mktemp("notebooks")
    return out, make_notebooks.make_notebooks(out)


def test_every_executable_page_gets_a_notebook_and_gpu_pages_none(notebooks):
    out, written = notebooks
    pages = make_notebooks.toc_pages()
    expected = {p for p in pages if (ROOT / f"{p}.md").is_file() and make_notebooks.is_notebook_page(ROOT / f"{p}.md")}
    got = {str(p.relative_to(out).with_suffix("")) for p in written}
    assert got == expected
    assert "book/physics" in got and "book/labs/small_gpu" in got
    assert not any(p.startswith("book/measurements/") for p in got)
    # plain Markdown pages (no kernelspec) are not notebooks: no launch button, no copy
    assert "book/bibliography" not in got


def test_notebooks_are_valid_and_start_with_the_setup_cell(notebooks):
    out, written = notebooks
    for path in written:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        first = nb.cells[0]
        assert first.cell_type == "code" and make_notebooks.SETUP_TAG in first.metadata["tags"]
        assert repr(URL) in first.source, f"{path}: the setup cell does not clone {URL}"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        assert nb.metadata["kernelspec"]["name"] == "python3"
        assert "jupytext" not in nb.metadata


def test_setup_cell_changes_into_the_pages_folder(notebooks):
    out, _ = notebooks
    lab = nbformat.read(out / "book" / "labs" / "small_gpu.ipynb", as_version=4).cells[0].source
    assert "'book/labs'" in lab
    physics = nbformat.read(out / "book" / "physics.ipynb", as_version=4).cells[0].source
    assert "'book'" in physics and "'book/labs'" not in physics


def test_setup_cell_does_nothing_outside_colab(notebooks, monkeypatch):
    out, _ = notebooks
    source = nbformat.read(out / "book" / "physics.ipynb", as_version=4).cells[0].source
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    calls = []
    monkeypatch.setattr("subprocess.run", lambda *a, **k: calls.append(a))
    cwd = os.getcwd()
    path = list(sys.path)
    exec(compile(source, "setup-cell", "exec"), {})
    assert calls == [] and os.getcwd() == cwd and sys.path == path


def test_setup_cell_clones_installs_and_changes_folder_on_colab(notebooks, monkeypatch, tmp_path):
    out, _ = notebooks
    source = nbformat.read(out / "book" / "physics.ipynb", as_version=4).cells[0].source
    checkout = tmp_path / "energybook"
    (checkout / "book").mkdir(parents=True)
    source = source.replace('"/content/energybook"', repr(str(checkout)))
    monkeypatch.setitem(sys.modules, "google.colab", object())
    calls = []
    monkeypatch.setattr("subprocess.run", lambda cmd, **k: calls.append(cmd))
    monkeypatch.setattr("os.path.isdir", lambda p: False)  # as on a fresh Colab machine
    monkeypatch.setattr(sys, "path", list(sys.path))
    cwd = os.getcwd()
    try:
        exec(compile(source, "setup-cell", "exec"), {})
        assert Path(os.getcwd()) == checkout / "book"
    finally:
        os.chdir(cwd)
    assert calls[0][:2] == ["git", "clone"] and URL in calls[0]
    assert calls[1][1:4] == ["-m", "pip", "install"] and calls[1][-1] == f"{checkout}[book]"
    assert sys.path[0] == str(checkout)


# --- the Sphinx extension ---------------------------------------------------------------------------

def test_colab_url_points_at_the_notebooks_branch():
    assert (eb_book.colab_url("https://github.com/org/repo/", "notebooks", "book/physics")
            == "https://colab.research.google.com/github/org/repo/blob/notebooks/book/physics.ipynb")
    assert eb_book.colab_url("https://github.com/org/repo.git", "nb", "book/labs/x").endswith(
        "/github/org/repo/blob/nb/book/labs/x.ipynb")
    with pytest.raises(ValueError, match="GitHub"):
        eb_book.colab_url("https://gitlab.com/org/repo", "notebooks", "book/physics")


def test_launch_buttons_skip_gpu_pages_and_opted_out_pages():
    patterns = CONFIG["sphinx"]["config"]["eb_no_launch"]
    assert not eb_book.wants_launch("book/measurements/Llama-3.2-1B", patterns, {})
    assert eb_book.wants_launch("book/physics", patterns, {})
    assert not eb_book.wants_launch("book/physics", patterns, {"launch_buttons": "false"})
    assert not eb_book.wants_launch("book/physics", patterns, {"launch_buttons": False})


class _App:
    def __init__(self, theme_options):
        self.env = type("Env", (), {"metadata": {"book/physics": {}, "book/measurements/OPT-1.3B": {}}})()
        self.config = type("Config", (), {"eb_no_launch": ["book/measurements/*"], "eb_notebooks_branch": "nb",
                                          "html_theme_options": theme_options})()


def _context():
    launch = {"label": "launch-buttons", "buttons": [
        {"text": "Binder", "url": "https://mybinder.org/v2/gh/o/r/main?urlpath=lab/tree/./book/physics.md"},
        {"text": "Colab", "url": "https://colab.research.google.com/github/o/r/blob/main/./book/physics.md"}]}
    return {"header_buttons": [{"label": "download-buttons"}, launch]}


def test_fix_launch_buttons_repoints_colab_and_tidies_binder():
    app, context = _App({"repository_url": "https://github.com/o/r"}), _context()
    eb_book.fix_launch_buttons(app, "book/physics", "page.html", context, None)
    buttons = {b["text"]: b["url"] for b in context["header_buttons"][1]["buttons"]}
    assert buttons["Colab"] == "https://colab.research.google.com/github/o/r/blob/nb/book/physics.ipynb"
    assert buttons["Binder"].endswith("urlpath=lab/tree/book/physics.md")


def test_fix_launch_buttons_drops_colab_for_a_repository_off_github():
    app, context = _App({"repository_url": "https://git.example.org/o/r"}), _context()
    eb_book.fix_launch_buttons(app, "book/physics", "page.html", context, None)
    assert [b["text"] for b in context["header_buttons"][1]["buttons"]] == ["Binder"]


def test_fix_launch_buttons_removes_the_group_on_gpu_pages():
    app, context = _App({"repository_url": "https://github.com/o/r"}), _context()
    eb_book.fix_launch_buttons(app, "book/measurements/OPT-1.3B", "page.html", context, None)
    assert [b["label"] for b in context["header_buttons"]] == ["download-buttons"]


def test_is_published_only_for_a_real_url():
    placeholder = CONFIG["sphinx"]["config"]["eb_placeholder_url"]
    assert not eb_book.is_published(placeholder, placeholder)
    assert not eb_book.is_published(placeholder + "/", placeholder)
    assert not eb_book.is_published("", placeholder)
    assert eb_book.is_published("https://github.com/someone/energybook", placeholder)


def _config(theme_options: dict, placeholder: str):
    return type("Config", (), {"html_theme_options": theme_options, "eb_placeholder_url": placeholder})()


def test_placeholder_url_turns_every_repository_and_launch_button_off():
    placeholder = CONFIG["sphinx"]["config"]["eb_placeholder_url"]
    options = {"repository_url": placeholder, "use_repository_button": True, "use_issues_button": True,
               "launch_buttons": dict(CONFIG["launch_buttons"])}
    eb_book.hide_unpublished_buttons(None, _config(options, placeholder))
    assert not any(options[k] for k in eb_book.REPOSITORY_BUTTONS)
    assert options["launch_buttons"] == {} and options["repository_url"] == ""


def test_a_real_url_keeps_the_buttons():
    placeholder = CONFIG["sphinx"]["config"]["eb_placeholder_url"]
    options = {"repository_url": "https://github.com/someone/fork", "use_repository_button": True,
               "use_issues_button": True, "launch_buttons": dict(CONFIG["launch_buttons"])}
    before = {k: (dict(v) if isinstance(v, dict) else v) for k, v in options.items()}
    eb_book.hide_unpublished_buttons(None, _config(options, placeholder))
    assert options == before


def test_each_script_is_written_once():
    """Sphinx 7 holds an inline script added after the builder started twice, as None and as ''."""
    from sphinx.builders.html._assets import _JavaScript

    thebe = "const THEBE_JS_URL = 'x'"
    scripts = [_JavaScript("_static/doctools.js", priority=200), _JavaScript(None, body=thebe),
               _JavaScript("_static/sphinx-thebe.js", **{"async": "async"}), _JavaScript("", body=thebe),
               _JavaScript("", body="var other = 1")]
    context = {"script_files": scripts}
    eb_book.dedupe_scripts(None, "book/physics", "page.html", context, None)
    assert context["script_files"] is scripts  # the builder's own list, changed in place
    assert [(s.filename, s.attributes.get("body")) for s in scripts] == [
        ("_static/doctools.js", None), (None, thebe), ("_static/sphinx-thebe.js", None), ("", "var other = 1")]


def _build_exercises(tmp_path: Path, hide: bool) -> str:
    """Build a one-page Sphinx project with an exercise and a gated solution; return its HTML."""
    from sphinx.application import Sphinx

    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'book' / '_ext')!r})\n"
        "extensions = ['eb_book']\nexercise_style = 'solution_follow_exercise'\n")
    (src / "index.rst").write_text(
        "Page\n====\n\n"
        ".. exercise:: Count it\n   :label: ex-one\n\n   The exercise text.\n\n"
        ".. solution-start:: ex-one\n   :class: dropdown\n\n"
        "The SOLUTION-TEXT.\n\n"
        ".. code-block:: python\n\n   SOLUTION_CODE = 1\n\n"
        ".. solution-end::\n\n"
        "After the solution.\n")
    env = {"EB_HIDE_SOLUTIONS": "1"} if hide else {}
    old = {k: os.environ.get(k) for k in ("EB_HIDE_SOLUTIONS",)}
    os.environ.pop("EB_HIDE_SOLUTIONS", None)
    os.environ.update(env)
    try:
        app = Sphinx(str(src), str(src), str(tmp_path / "html"), str(tmp_path / "doctrees"), "html",
                     status=None, warning=None, freshenv=True)
        app.build()
        assert app.statuscode == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return (tmp_path / "html" / "index.html").read_text()


def test_solutions_are_shown_in_the_book(tmp_path):
    html = _build_exercises(tmp_path, hide=False)
    assert "The exercise text." in html and "SOLUTION-TEXT" in html and "SOLUTION_CODE" in html
    assert "After the solution." in html


def test_students_build_leaves_out_text_and_code_of_gated_solutions(tmp_path):
    html = _build_exercises(tmp_path, hide=True)
    assert "The exercise text." in html and "After the solution." in html
    assert "SOLUTION-TEXT" not in html
    assert "SOLUTION_CODE" not in html


# --- configuration: bibliography, extras, the one repository URL --------------------------------------

def test_bibliography_defines_the_keys_the_chapters_cite():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,\s]+),", bib))
    assert {"sweetspot2026", "nvml-api", "zeus2023", "mlenergy", "yang2024parttime", "gregersen2024input",
            "gptfast", "tensorrtllm"} <= keys
    entries = re.split(r"\n@", bib)
    for entry in entries[1:]:
        assert "note" in entry and "url" in entry, f"entry without a note or url: {entry[:60]}"
    cited = set()
    for page in (ROOT / "book").rglob("*.md"):
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", page.read_text()):
            cited |= {k.strip() for k in group.split(",")}
    assert not cited - keys, f"pages cite keys missing from book/references.bib: {sorted(cited - keys)}"
    assert "2602.05695v1" in bib


def test_the_book_extra_has_the_extensions_the_config_loads():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    book = " ".join(project["optional-dependencies"]["book"])
    for package in ("jupyter-book", "sphinx-exercise", "sphinxcontrib-bibtex", "jupytext"):
        assert package in book
    assert "torch" not in book and "playwright" not in book
    assert "sphinx_exercise" in CONFIG["sphinx"]["extra_extensions"]


def test_the_repository_url_is_one_value():
    """_config.yml's repository.url is the source; CITATION.cff and pyproject.toml must agree with it, and
    no page of the book types it (a page that shows it generates it from _config.yml, as the lab does)."""
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["repository-code"] == URL
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    for key in ("Homepage", "Source"):
        assert urls[key] == URL, f"pyproject.toml [project.urls] {key} != _config.yml repository.url"
    assert urls["Issues"] == f"{URL}/issues"
    assert make_notebooks.book_config()["url"] == URL
    owner_name = urlparse(URL).path.strip("/")  # "owner/name": also catches a second copy of another form
    typed = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "book").rglob("*.md"))
             if URL.rstrip("/") in p.read_text() or f"github.com/{owner_name}" in p.read_text()]
    assert not typed, f"pages that type the repository URL instead of reading _config.yml: {typed}"


def test_set_repository_url_rewrites_only_that_line(tmp_path):
    config = (ROOT / "_config.yml").read_text()
    (tmp_path / "_config.yml").write_text(config)
    fork = "https://github.com/someone/energybook-fork"
    assert make_notebooks.set_repository_url(fork + "/", tmp_path) == URL.rstrip("/")
    new = (tmp_path / "_config.yml").read_text()
    changed = [(a, b) for a, b in zip(config.splitlines(), new.splitlines(), strict=True) if a != b]
    assert changed == [(f"  url: {URL}", f"  url: {fork}")]
    cfg = make_notebooks.book_config(tmp_path)
    assert cfg["url"] == fork and cfg["published"]
    assert yaml.safe_load(new) == {**yaml.safe_load(config), "repository": {**CONFIG["repository"], "url": fork}}
    for bad in ("github.com/o/r", "https://github.com/o", "https://github.com/o/r extra", 'https://x/o/"r'):
        with pytest.raises(ValueError):
            make_notebooks.set_repository_url(bad, tmp_path)
    assert make_notebooks.book_config(tmp_path)["url"] == fork


def test_the_pages_build_writes_its_repository_before_building():
    """CI's Pages build points the book at the repository that builds it (forks included), before the build
    and before the notebooks, through the one writer of repository.url."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    steps = workflow["jobs"]["build"]["steps"]
    runs = [" ".join(str(v) for v in (step.get("run"), step.get("env")) if v) for step in steps]
    where = next(i for i, r in enumerate(runs) if "--set-repository-url" in r)
    install = next(i for i, r in enumerate(runs) if r.strip() == "make install-book")
    build = next(i for i, r in enumerate(runs) if r.strip() == "make book")
    notebooks = next(i for i, r in enumerate(runs) if r.strip() == "make notebooks")
    assert install < where < build < notebooks  # the lock's install, as `make book` does locally
    assert "github.server_url" in runs[where] and "github.repository" in runs[where]


def test_licenses_are_in_the_repository_and_on_every_page():
    cc = (ROOT / "LICENSE-CC-BY-4.0").read_text()
    assert "Attribution 4.0 International" in cc and "https://creativecommons.org/licenses/by/4.0/legalcode" in cc
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    footer = CONFIG["html"]["extra_footer"]
    assert "https://creativecommons.org/licenses/by/4.0/" in footer and "MIT" in footer


def test_citation_agrees_with_the_readme_on_the_study():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    readme = (ROOT / "README.md").read_text()
    study = next(r for r in citation["references"] if "2602.05695" in str(r))
    assert study["title"] in readme
    assert study["title"] == "Determining Energy Efficiency Sweet Spots in Production LLM Inference"
    assert any("2602.05695v1" in str(i["value"]) for i in study["identifiers"])
    init = (ROOT / "energybook" / "__init__.py").read_text()
    assert f'__version__ = "{citation["version"]}"' in init
