"""Write the .ipynb copies of the book's pages that the Colab launch buttons open.

Colab opens notebooks from GitHub, and cannot open the book's MyST Markdown pages. This script
converts every executable page of ``_toc.yml`` (a ``.md`` page with a kernelspec) to a notebook with
jupytext, puts a Colab set-up cell first, and writes it under ``--out`` at the page's own path
(``book/physics.md`` -> ``<out>/book/physics.ipynb``). CI (``.github/workflows/book.yml``) publishes
that folder to the branch named by ``eb_notebooks_branch`` in ``_config.yml``, which is where
``book/_ext/eb_book.py`` points the Colab buttons.

The set-up cell does nothing outside Colab. On Colab it clones the repository (``repository.url``
and ``repository.branch`` of ``_config.yml``: the code and the committed data the pages read),
installs the package with its ``book`` extra, and changes into the page's folder, as the book's
build does. Pages matching ``eb_no_launch`` (the GPU measurement pages) are skipped.

The same script writes the repository URL of a build into ``_config.yml`` (``repository.url``, the
one place where it is set; committed, it is the placeholder ``eb_placeholder_url``). CI's Pages build
runs it first with the repository that builds it, so that the book's buttons, the lab's ``git clone``
command, the citation and these notebooks point to where the book is published, forks included.

Usage::

    python scripts/make_notebooks.py --out _build/notebooks      # or: make notebooks
    python scripts/make_notebooks.py --set-repository-url https://github.com/<owner>/<repo>
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
SETUP_TAG = "colab-setup"

SETUP = '''\
# Colab: run this cell first. It fetches the book's repository (the package and the committed data)
# and installs the package with its book extra. Anywhere else (Binder, your own Jupyter) it does nothing.
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    REPO, BRANCH, CHECKOUT = {repo!r}, {branch!r}, "/content/energybook"
    if not os.path.isdir(CHECKOUT):
        subprocess.run(["git", "clone", "--depth", "1", "--branch", BRANCH, REPO, CHECKOUT], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", CHECKOUT + "[book]"], check=True)
    sys.path.insert(0, CHECKOUT)
    os.chdir(os.path.join(CHECKOUT, {folder!r}))
'''


def book_config(root: Path = ROOT) -> dict:
    """The settings of ``_config.yml`` that the notebooks need: repository URL and branch, whether
    the URL is a real one (``published``: not the placeholder ``eb_placeholder_url``), the pages
    without launch buttons, and the branch that holds the notebooks."""
    cfg = yaml.safe_load((root / "_config.yml").read_text())
    repo = cfg.get("repository") or {}
    sphinx = (cfg.get("sphinx") or {}).get("config") or {}
    if not repo.get("url"):
        raise ValueError(f"{root / '_config.yml'} has no repository.url")
    url = str(repo["url"]).rstrip("/")
    placeholder = str(sphinx.get("eb_placeholder_url", "")).rstrip("/")
    return {"url": url, "branch": str(repo.get("branch", "main")),
            "placeholder": placeholder, "published": url != placeholder,
            "no_launch": list(sphinx.get("eb_no_launch", [])),
            "notebooks_branch": str(sphinx.get("eb_notebooks_branch", "notebooks"))}


#: ``repository:`` of ``_config.yml``, up to the value of its ``url:`` (comments and other keys kept).
_URL_LINE = re.compile(r"(?m)^(repository:[ \t]*\n(?:(?:[ \t]+.*|[ \t]*#.*|[ \t]*)\n)*?[ \t]+url:[ \t]*)(\S.*?)[ \t]*$")


def set_repository_url(url: str, root: Path = ROOT) -> str:
    """Write ``url`` as ``repository.url`` of ``root/_config.yml``, in place, leaving the rest of the file
    as it is; returns the URL it replaced. CI's Pages build calls it with the repository that builds it."""
    url = url.strip().rstrip("/")
    if not re.fullmatch(r"https://[A-Za-z0-9.-]+(:\d+)?/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", url):
        raise ValueError(f"not a repository URL https://<host>/<owner>/<name>: {url!r}")
    path = root / "_config.yml"
    text = path.read_text()
    match = _URL_LINE.search(text)
    if match is None:
        raise ValueError(f"{path} has no `url:` under `repository:`")
    old = book_config(root)["url"]
    path.write_text(text[:match.start(2)] + url + text[match.end(2):])
    if book_config(root)["url"] != url:
        path.write_text(text)
        raise ValueError(f"could not write repository.url = {url} into {path}")
    return old


def toc_pages(root: Path = ROOT) -> list[str]:
    """Every page of ``_toc.yml``, as a path relative to the root without suffix."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    walk(toc.get("sections"))
    return [str(Path(p).with_suffix("")) if p.endswith((".md", ".ipynb")) else p for p in pages]


def is_notebook_page(path: Path) -> bool:
    """A MyST Markdown page executed as a notebook (its front matter has a kernelspec)."""
    text = path.read_text()
    if not text.startswith("---"):
        return False
    front = text.split("---", 2)[1]
    return "kernelspec" in (yaml.safe_load(front) or {})


def setup_cell(repo: str, branch: str, page: str) -> nbformat.NotebookNode:
    """The Colab set-up cell for ``page`` (e.g. ``"book/physics"``)."""
    folder = str(Path(page).parent).replace("\\", "/")
    cell = nbformat.v4.new_code_cell(SETUP.format(repo=repo, branch=branch, folder=folder))
    cell.metadata["tags"] = [SETUP_TAG]
    return cell


def convert(path: Path, page: str, repo: str, branch: str) -> nbformat.NotebookNode:
    """The notebook of one page, with the set-up cell first and no outputs."""
    nb = jupytext.read(path)
    nb.cells.insert(0, setup_cell(repo, branch, page))
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["colab"] = {"provenance": []}
    return nb


def make_notebooks(out: Path, root: Path = ROOT) -> list[Path]:
    """Write the notebooks under ``out``; returns their paths."""
    cfg = book_config(root)
    written = []
    for page in toc_pages(root):
        source = root / f"{page}.md"
        if any(fnmatch.fnmatchcase(page, p) for p in cfg["no_launch"]):
            continue
        if not source.is_file() or not is_notebook_page(source):
            continue
        nb = convert(source, page, cfg["url"], cfg["branch"])
        target = out / f"{page}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        written.append(target)
    (out / "README.md").write_text(
        "# Notebooks for Colab\n\n"
        f"Generated by `scripts/make_notebooks.py` from the book's pages on `{cfg['branch']}` of {cfg['url']}; "
        "do not edit here. Each notebook's first cell installs the package on Colab.\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "_build" / "notebooks"), help="output folder")
    parser.add_argument("--set-repository-url", metavar="URL",
                        help="write URL as repository.url of _config.yml (CI's Pages build) and write no notebooks")
    args = parser.parse_args(argv)
    if args.set_repository_url:
        old = set_repository_url(args.set_repository_url)
        print(f"_config.yml repository.url: {old} -> {book_config()['url']}")
        return 0
    cfg = book_config()
    if not cfg["published"]:
        print(f"note: repository.url is the placeholder {cfg['url']}: the notebooks' set-up cells clone it",
              file=sys.stderr)
    written = make_notebooks(Path(args.out))
    print(f"{len(written)} notebooks in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
