"""Sphinx extension for the energybook book: launch buttons that open real notebooks (and no button
while the book is not published), a students' build without solutions, and each script once.

Loaded by ``_config.yml`` (``sphinx.local_extensions``). It does five things:

1. **Colab opens a notebook.** sphinx-book-theme points its Colab button at the page's source on
   GitHub, which for a MyST Markdown page is a ``.md`` file that Colab cannot open. Here the button
   is pointed at the ``.ipynb`` copy of the page that ``scripts/make_notebooks.py`` writes (with an
   install cell for Colab) and CI publishes to the branch named by ``eb_notebooks_branch``:
   ``https://colab.research.google.com/github/<org>/<repo>/blob/<eb_notebooks_branch>/<page>.ipynb``.
   Binder keeps the theme's link (the main branch, the ``.md`` page, tidied of a ``./``), which Binder
   opens as a notebook through jupytext (``binder/postBuild`` makes it the default viewer).
2. **No launch button on GPU pages.** Pages whose name matches a pattern of ``eb_no_launch`` (e.g.
   ``book/measurements/*``: executed measurement notebooks that need an NVIDIA GPU) get no launch
   button at all; so does a page whose front matter says ``launch_buttons: false``.
3. **Students' build.** With the environment variable ``EB_HIDE_SOLUTIONS=1`` (``make
   book-students``) it sets sphinx-exercise's ``hide_solutions``. sphinx-exercise then drops every
   ``solution`` directive, but for a gated solution (``solution-start`` ... ``solution-end``) it drops
   only the opening directive and leaves the cells in between, code and outputs, on the page. Here
   ``solution-start`` leaves a marker instead, and everything from the marker to its
   ``solution-end`` is removed.
4. **No button that goes nowhere.** While ``repository.url`` of ``_config.yml`` (the one place where
   the repository URL is set) is the committed placeholder ``eb_placeholder_url``, as in a local
   build, the repository, issues, edit and launch buttons are turned off and the theme is given no
   repository URL, so that no page links to the placeholder. CI's Pages build writes the repository
   that builds it into ``repository.url`` first (``.github/workflows/book.yml``), and gets them all.
5. **Each script once.** Sphinx 7 writes an inline script (``add_js_file(None, body=...)``) twice when
   an extension adds it after the builder started, as sphinx-thebe does (``const THEBE_JS_URL``, a
   SyntaxError in the browser the second time) and sphinx-togglebutton too: the builder holds it with
   the file name ``None`` and adds it again from the registry as ``''`` before writing, and the two
   compare unequal (fixed upstream by sphinx-doc/sphinx#13402, in a Sphinx 8 release; jupyter-book 1
   needs Sphinx 7). Each page's scripts are deduplicated here, treating ``None`` and ``''`` alike.

The repository URL is read from the theme's options (``repository.url`` in ``_config.yml``).
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: Environment variable that turns on the students' build.
HIDE_ENV = "EB_HIDE_SOLUTIONS"
COLAB = "https://colab.research.google.com"


def colab_url(repository_url: str, branch: str, docname: str, colab: str = COLAB) -> str:
    """Colab link to the ``.ipynb`` copy of page ``docname`` on ``branch`` of a GitHub repository.

    Args:
        repository_url: ``https://github.com/<org>/<repo>`` (a trailing slash or ``.git`` is ignored).
        branch: The branch that holds the generated notebooks.
        docname: The page, e.g. ``"book/physics"`` (no suffix).
        colab: Colab's base URL.

    Raises:
        ValueError: if the repository is not on GitHub (Colab opens notebooks from GitHub only).
    """
    url = repository_url.strip().rstrip("/")
    if url.endswith(".git"):
        url = url[: -len(".git")]
    prefix = "https://github.com/"
    parts = url[len(prefix):].split("/") if url.startswith(prefix) else []
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"Colab opens notebooks from GitHub only: {repository_url!r} is not https://github.com/<org>/<repo>")
    org, repo = parts
    return f"{colab.rstrip('/')}/github/{org}/{repo}/blob/{branch}/{docname}.ipynb"


def is_published(repository_url: str, placeholder: str) -> bool:
    """Whether ``repository_url`` is a real address: set, and not the committed placeholder."""
    url = (repository_url or "").strip().rstrip("/")
    return bool(url) and url != (placeholder or "").strip().rstrip("/")


def wants_launch(docname: str, patterns: list[str], metadata: dict[str, Any]) -> bool:
    """Whether page ``docname`` keeps its launch button (no pattern matches, no opt-out in its metadata)."""
    if str(metadata.get("launch_buttons", "true")).strip().lower() in ("false", "no", "0", "off"):
        return False
    return not any(fnmatch.fnmatchcase(docname, pattern) for pattern in patterns)


def fix_launch_buttons(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """``html-page-context`` handler, after the theme's own (priority 501): drop or repoint launch buttons."""
    buttons = context.get("header_buttons")
    if not buttons:
        return
    metadata = app.env.metadata.get(pagename, {})
    if not wants_launch(pagename, list(app.config.eb_no_launch), metadata):
        buttons[:] = [b for b in buttons if b.get("label") != "launch-buttons"]
        return
    repo = app.config.html_theme_options.get("repository_url", "")
    for group in buttons:
        if group.get("label") != "launch-buttons":
            continue
        kept = []
        for button in group.get("buttons", []):
            if button.get("text") == "Colab":
                try:
                    button["url"] = colab_url(repo, app.config.eb_notebooks_branch, pagename)
                except ValueError:  # not on GitHub (e.g. GitHub Enterprise): Colab cannot open it
                    continue
            elif button.get("text") == "Binder":
                # path_to_book "." gives "lab/tree/./book/x.md"; JupyterLab wants "lab/tree/book/x.md".
                button["url"] = button["url"].replace("/tree/./", "/tree/")
            kept.append(button)
        group["buttons"] = kept
    buttons[:] = [b for b in buttons if b.get("label") != "launch-buttons" or b.get("buttons")]


#: Theme options of the buttons that link to the repository (sphinx-book-theme's names).
REPOSITORY_BUTTONS = ("use_repository_button", "use_issues_button", "use_edit_page_button", "use_source_button")


def hide_unpublished_buttons(app: Sphinx, config) -> None:
    """``config-inited``: no repository, issues, edit or launch button while the URL is the placeholder."""
    options = config.html_theme_options
    url = options.get("repository_url", "")
    if is_published(url, config.eb_placeholder_url):
        return
    for key in REPOSITORY_BUTTONS:
        options[key] = False
    options["launch_buttons"] = {}
    options["repository_url"] = ""
    logger.info("energybook: repository.url is the placeholder %s (a local build): no repository, issues or "
                "launch buttons", url)


def _script_key(script) -> tuple:
    """What makes two of a page's scripts the same: file name (``None`` as ``''``), priority, attributes."""
    return (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))


def dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """``html-page-context``, last: each script once on the page (see the module's docstring, item 5)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


class hidden_solution(nodes.Element):
    """Marks where a gated solution began, in the students' build (removed before writing)."""


def _solution_start_directive():
    """``solution-start`` that leaves a marker when solutions are hidden (see the module's docstring)."""
    from sphinx_exercise.directive import SolutionStartDirective

    class SolutionStart(SolutionStartDirective):
        def run(self):
            result = super().run()
            if self.env.app.config.hide_solutions:
                return [hidden_solution()]
            return result

    return SolutionStart


class RemoveHiddenSolutions(SphinxTransform):
    """Remove each gated solution's content, from its marker to its ``solution-end``, in the students' build.

    Runs after sphinx-exercise's structure check (priority 1) and before its merge of gated
    solutions (priority 10).
    """

    default_priority = 5

    def apply(self, **kwargs) -> None:
        from sphinx_exercise.nodes import solution_end_node

        for marker in list(self.document.findall(hidden_solution)):
            parent = marker.parent
            start = parent.index(marker)
            end = next((i for i in range(start + 1, len(parent.children))
                        if isinstance(parent.children[i], solution_end_node)), None)
            if end is None:
                logger.warning("a hidden gated solution has no solution-end in the same section",
                               location=marker)
                parent.remove(marker)
                continue
            for child in parent.children[start:end + 1]:
                parent.remove(child)


def hide_solutions_from_env(app: Sphinx, config) -> None:
    """``config-inited``: ``EB_HIDE_SOLUTIONS=1`` sets sphinx-exercise's ``hide_solutions``, and copies no page
    sources into the HTML (``_sources/`` would hold every solution, and the download button with it)."""
    if os.environ.get(HIDE_ENV, "") == "1":
        config.hide_solutions = True
        config.html_copy_source = False
        logger.info("energybook: students' build, solutions hidden (%s=1)", HIDE_ENV)


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx_exercise")
    app.add_config_value("eb_no_launch", [], "html")
    app.add_config_value("eb_notebooks_branch", "notebooks", "html")
    app.add_config_value("eb_placeholder_url", "", "html")
    app.add_node(hidden_solution)
    app.add_directive("solution-start", _solution_start_directive(), override=True)
    app.add_transform(RemoveHiddenSolutions)
    app.connect("config-inited", hide_solutions_from_env)
    app.connect("config-inited", hide_unpublished_buttons)
    app.connect("html-page-context", fix_launch_buttons, priority=502)
    app.connect("html-page-context", dedupe_scripts, priority=999)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
