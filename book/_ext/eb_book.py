"""Sphinx extension for the energybook book: launch buttons that open real notebooks, and a
students' build without solutions.

Loaded by ``_config.yml`` (``sphinx.local_extensions``). It does three things:

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

The repository URL is read from the theme's options (``repository.url`` in ``_config.yml``, the one
place where it is set).
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
        for button in group.get("buttons", []):
            if button.get("text") == "Colab":
                button["url"] = colab_url(repo, app.config.eb_notebooks_branch, pagename)
            elif button.get("text") == "Binder":
                # path_to_book "." gives "lab/tree/./book/x.md"; JupyterLab wants "lab/tree/book/x.md".
                button["url"] = button["url"].replace("/tree/./", "/tree/")


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
    """``config-inited``: ``EB_HIDE_SOLUTIONS=1`` sets sphinx-exercise's ``hide_solutions``."""
    if os.environ.get(HIDE_ENV, "") == "1":
        config.hide_solutions = True
        logger.info("energybook: students' build, solutions hidden (%s=1)", HIDE_ENV)


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx_exercise")
    app.add_config_value("eb_no_launch", [], "html")
    app.add_config_value("eb_notebooks_branch", "notebooks", "html")
    app.add_node(hidden_solution)
    app.add_directive("solution-start", _solution_start_directive(), override=True)
    app.add_transform(RemoveHiddenSolutions)
    app.connect("config-inited", hide_solutions_from_env)
    app.connect("html-page-context", fix_launch_buttons, priority=502)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
