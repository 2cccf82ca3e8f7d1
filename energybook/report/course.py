"""The course kit: a six-week module over the book's chapters, answer checks for its labs, and slide decks.

Three pieces, each from one data structure:

* :data:`WEEKS`, a list of :class:`Week` records (title, learning objectives, reading, lab, exercises, checks,
  assessment), which the syllabus page renders (:func:`syllabus_markdown`) and the tests read to
  check that every page and exercise it names exists;
* :data:`CHECKS`, the answer checks of the labs (:class:`Check`): each names the exercise or lab it belongs to
  and computes its expected value at run time from the committed files (the architectures, ``data/measured/``,
  ``benchmarks/results/``), never from a typed number. :func:`check` compares a
  student's answer with it, within the check's tolerance, and prints pass or fail with a hint;
* :func:`build_slides`, one self-contained HTML deck per week (plain HTML and CSS, the images embedded) from the
  figures of the built book (``_build/html``): one slide per figure with its caption, alt text and a source line.

From the command line::

    python -m energybook.report.course slides --html _build/html --out _build/html/slides
    python -m energybook.report.course check counting-ridge-batch 120
    python -m energybook.report.course list

Used in :doc:`/book/course/syllabus` and :doc:`/book/course/labs`.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import mimetypes
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

# ----- the module ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Week:
    """One week of the module.

    Attributes:
        number: The week, from 1.
        title: What the week is about.
        objectives: What a student can do at the end of the week (each completes "you can ...").
        reading: The book's pages to read, as ``_toc.yml`` names them (``book/physics``).
        labs: The labels of the week's lab sections (``sec-course-lab-1``, ``sec-lab-small-gpu``).
        exercises: The labels of the week's exercises (sphinx-exercise ``:label:``).
        checks: The names of the week's answer checks (keys of :data:`CHECKS`).
        assessment: What is handed in, and how it is marked.
    """

    number: int
    title: str
    objectives: tuple[str, ...]
    reading: tuple[str, ...]
    labs: tuple[str, ...]
    exercises: tuple[str, ...]
    checks: tuple[str, ...]
    assessment: str


WEEKS: list[Week] = [
    Week(1, "Energy is power times time",
         ("convert between watts, seconds and joules, and between joules per token and tokens per joule",
          "explain why, at a power cap, the energy of a token is about the cap times its time",
          "bound a decode step's time with the roofline and turn it into tokens per joule"),
         ("book/intro", "book/physics", "book/worked_example"),
         ("sec-course-lab-1",),
         ("ex-physics-lower-cap", "ex-physics-decode-roofline", "ex-worked-crossover", "ex-worked-two-waves"),
         ("physics-decode-roofline",),
         "The lab's check passes; a half-page answer to the lower-cap exercise, marked on the reasoning."),
    Week(2, "Counting FLOPs and bytes",
         ("count the FLOPs and bytes of a prefill and of a decode step by hand",
          "tell from the arithmetic intensity whether a step waits on memory or on arithmetic",
          "size a KV cache, and say why grouped-query attention shrinks it"),
         ("book/counting",),
         ("sec-course-lab-2",),
         ("ex-counting-attention", "ex-counting-ridge", "ex-counting-kv", "ex-decode-step", "ex-compute-bound"),
         ("counting-ridge-batch",),
         "The lab's check passes; the decode-step count by hand, checked against the package."),
    Week(3, "Measuring GPU energy",
         ("compute a window's energy from the energy counter and from sampled power, and say which to trust",
          "size a window long enough for a given error",
          "follow the protocol: batches, waves, warm-up, cool-down, and the sampled protocol's shortcut",
          "say why more requests per point and larger batches raise the best efficiency"),
         ("book/instruments", "book/experiment", "book/protocols", "book/study_experiments"),
         ("sec-course-lab-3",),
         ("ex-instruments-window", "ex-instruments-lag", "ex-experiment-waves", "ex-experiment-generations",
          "ex-study-experiments-requests", "ex-study-experiments-cap", "ex-power-lag"),
         ("experiment-waves",),
         "The lab's check passes; a one-page note on the error of a power reading that lags, with its estimate."),
    Week(4, "Three views and the sweet spot",
         ("compute the energy per output token, per total token and per request from one measurement",
          "derive the sweet spot of the Memory+FLOPs formula and read it off a fit",
          "choose the view that answers a practical question, such as a cap on answer length",
          "compare grouped-query and multi-head attention models, and say how far our measurements carry it"),
         ("book/views", "book/models", "book/sweet_spots"),
         ("sec-course-lab-4",),
         ("ex-views-factor", "ex-views-answer-length", "ex-models-size-normalised", "ex-sweet-spots-shortest-input",
          "ex-sweet-spots-per-request", "ex-sweet-spot", "ex-longer-prompts"),
         ("views-factor",),
         "The lab's check passes; the sweet-spot derivation, and a paragraph on which view should set a cap."),
    Week(5, "Fitting and predicting",
         ("fit the study's formulas and read their estimates, intervals and correlations",
          "tell an in-sample error from a held-out one, and compute both",
          "say what our measurements and the study's agree on, and what they do not",
          "predict the energy of a model that was never measured, and say how far to trust it"),
         ("book/fitting", "book/comparison", "book/predict"),
         ("sec-course-lab-5",),
         ("ex-fitting-exact-count", "ex-fitting-weighting", "ex-predict-batch-one", "ex-fit-two", "ex-leave-row-out"),
         ("fitting-relative-mape",),
         "The lab's check passes; a one-page comparison of plain and relative least squares on one model."),
    Week(6, "Other GPUs, advice, and your own sweep",
         ("predict how tokens per joule change from one GPU to another, from bandwidth, matmul rate and power limit",
          "read the options that advise proposes for a workload, and what each gives up",
          "check that a sweep fits a small GPU, estimate its time, run it and compare with our grid"),
         ("book/advise", "book/gpus", "book/labs/small_gpu", "book/reproduce"),
         ("sec-lab-small-gpu", "sec-course-lab-6"),
         ("ex-gpus-whatif", "ex-lab-t4-phases", "ex-lab-t4-dtype", "ex-lab-cpu-energy", "ex-reproduce-grid"),
         ("lab-kv-cache-gb",),
         "The lab's check passes; a short report: where the memory goes, the estimated time, and (with a GPU) "
         "the measured grid against ours."),
]


# ----- answer checks -----------------------------------------------------------------------------


def _bench_results() -> Path:
    """The committed benchmark results, from ``$ENERGYBOOK_BENCH_RESULTS`` (the labs page sets it to the checkout's
    results folder; the package never builds that path itself).

    Raises:
        ValueError: when the variable is not set, naming it.
    """
    from energybook.report import bench

    return bench.results_dir()


def _measured_model(model: str):
    from energybook.report import analysis

    table = analysis.measured_table(engine=analysis.BOOK_ENGINE)
    rows = table[table["model"] == model] if len(table) else table
    if rows.empty:
        raise LookupError(f"no measured grid of {model} in this workspace (data/measured/): measure it with "
                          f"`energybook sweep --model {model}` first")
    return rows


def _physics_decode_roofline() -> float:
    from energybook.model import architecture, complexity, roofline
    from energybook.report import bench

    spec = roofline.GpuSpec.from_benchmark(bench.engine_benchmark(_bench_results()))
    step = roofline.step(complexity.decode_step(architecture.load("Llama-3.2-1B"), 512, batch=1), spec)
    return 1 / (spec.power_cap_w * step.time_s)


def _counting_ridge_batch() -> float:
    from energybook.model import architecture, complexity
    from energybook.report import bench

    h100 = bench.engine_benchmark(_bench_results())
    ridge = h100["peak_flops"] / h100["peak_bw_Bps"]
    arch = architecture.load("Llama-3.2-1B")
    return float(next(b for b in range(1, 4097) if complexity.decode_step(arch, 64, batch=b).intensity >= ridge))


def _experiment_waves() -> float:
    from energybook.model import architecture

    budget_bytes = 60e9  # the exercise's illustrative KV budget, given in its text
    return float(budget_bytes // (1000 * architecture.load("Llama-3.2-1B").kv_bytes_per_token))


def _views_factor() -> float:
    from energybook.report import views

    llama = views.energy_views(_measured_model("Llama-3.2-1B"))
    return float((llama["j_per_output_token"] / llama["j_per_total_token"]).max())


def _fitting_relative_mape() -> float:
    from energybook.model import fit

    return float(fit.fit(_measured_model("Llama-3.2-1B"), weighting="relative").mape_pct)


def _lab_kv_cache_gb() -> float:
    from energybook.model import architecture

    n_req, longest = 100, 1024 + 1024  # the lab's grid: 100 requests per point, n_in and n_out up to 1024
    return n_req * longest * architecture.load("Llama-3.2-1B").kv_bytes_per_token / 1e9


@dataclass(frozen=True)
class Check:
    """One answer check of a lab.

    Attributes:
        name: The check's key in :data:`CHECKS` (``counting-ridge-batch``).
        target: The label of the exercise or lab it checks (``ex-counting-ridge``).
        question: The question, as the student answers it (one number).
        unit: The answer's unit (``tokens``, ``GB``, ``%``, ...).
        expected: Computes the expected answer from the committed files, at run time.
        rel_tol: Relative tolerance of a correct answer.
        abs_tol: Absolute tolerance of a correct answer (for counts: a rounded input may move them by one).
        hint: What to look at again when the answer is off.
    """

    name: str
    target: str
    question: str
    unit: str
    expected: Callable[[], float] = field(repr=False)
    rel_tol: float = 0.02
    abs_tol: float = 0.0
    hint: str = ""


CHECKS: dict[str, Check] = {c.name: c for c in (
    Check("physics-decode-roofline", "ex-physics-decode-roofline",
          "Output tokens per joule of a Llama 3.2 1B decode step at batch 1 and context 512, run at its roofline "
          "time and at the power cap (our H100's measured peaks and power limit)", "tokens/J",
          _physics_decode_roofline, rel_tol=0.05,
          hint="at batch 1 the step is memory-bound: its time is its bytes over the bandwidth; it makes one "
               "token, so tokens per joule = 1 / (power cap x step time)"),
    Check("counting-ridge-batch", "ex-counting-ridge",
          "The smallest batch at which a Llama 3.2 1B decode step at context 64 reaches the ridge point of our H100",
          "requests", _counting_ridge_batch, rel_tol=0.0, abs_tol=1.0,
          hint="the ridge point is the measured peak FLOP/s over the measured bytes/s; search the batch with "
               "complexity.decode_step(arch, 64, batch=b).intensity"),
    Check("experiment-waves", "ex-experiment-waves",
          "The longest total length n_in + n_out at which 1000 requests of Llama 3.2 1B fit one wave in a 60 GB "
          "KV budget", "tokens", _experiment_waves, rel_tol=0.01,
          hint="one wave holds 1000 x (n_in + n_out) x (KV bytes per token); divide the budget by 1000 x the KV "
               "bytes per token (architecture.load(name).kv_bytes_per_token)"),
    Check("views-factor", "ex-views-factor",
          "The largest factor between the energy per output token and the energy per total token on our measured "
          "grid of Llama 3.2 1B", "", _views_factor, rel_tol=0.01,
          hint="the ratio of the two views is the ratio of their denominators, 1 + n_in / n_out; where is it "
               "largest on the grid?"),
    Check("fitting-relative-mape", "ex-fitting-weighting",
          "The MAPE of the Memory+FLOPs formula fitted to our measured Llama 3.2 1B grid with relative weighting",
          "%", _fitting_relative_mape, rel_tol=0.02,
          hint="eb.fit(table, 'memory_flops_model', weighting='relative').mape_pct, on the model's rows of "
               "eb.measured_table(engine=analysis.BOOK_ENGINE)"),
    Check("lab-kv-cache-gb", "sec-lab-small-gpu",
          "The KV cache of the small-GPU lab's largest point: 100 requests of Llama 3.2 1B at n_in = n_out = 1024",
          "GB", _lab_kv_cache_gb, rel_tol=0.02,
          hint="requests x (n_in + n_out) x KV bytes per token, in 1e9 bytes"),
)}


@dataclass(frozen=True)
class CheckResult:
    """The outcome of :func:`check`.

    Attributes:
        name: The check.
        passed: Whether the answer is within the tolerance.
        answer: The student's answer (None: not answered yet).
        expected: The expected value (None when it could not be computed, e.g. without measured data).
        message: What :func:`check` printed.
    """

    name: str
    passed: bool
    answer: float | None
    expected: float | None
    message: str

    def __bool__(self) -> bool:
        return self.passed


def check(name: str, answer: float | None, quiet: bool = False) -> CheckResult:
    """Check a student's answer to a lab question, and print pass or fail with a hint.

    Args:
        name: The check (a key of :data:`CHECKS`; ``python -m energybook.report.course list`` lists them).
        answer: The student's number, in the check's unit; None while not answered.
        quiet: Return the result without printing it.

    Returns:
        The :class:`CheckResult` (true when passed).

    Raises:
        KeyError: for an unknown check, naming the known ones.
    """
    if name not in CHECKS:
        raise KeyError(f"no check {name!r}; the checks are {sorted(CHECKS)}")
    c = CHECKS[name]
    unit = f" {c.unit}" if c.unit else ""
    if answer is None:
        result = CheckResult(name, False, None, None, f"{name}: not answered yet. {c.question}?")
    else:
        try:
            expected = float(c.expected())
        except (LookupError, FileNotFoundError) as e:
            result = CheckResult(name, False, float(answer), None, f"{name}: cannot check here: {e}")
        else:
            value = float(answer)
            ok = math.isclose(value, expected, rel_tol=c.rel_tol, abs_tol=c.abs_tol)
            if ok:
                text = f"{name}: pass ({value:g}{unit}, expected {expected:.4g}{unit})"
            else:
                side = "high" if value > expected else "low"
                text = f"{name}: not yet: {value:g}{unit} is too {side}. Hint: {c.hint}"
            result = CheckResult(name, ok, value, expected, text)
    if not quiet:
        print(result.message)
    return result


# ----- the syllabus table ------------------------------------------------------------------------


_EXERCISE_SOURCE = re.compile(r"^(?:`{3,}|:{3,})\{exercise(?:-start)?\}[ \t]*(?P<title>.*?)\s*\n"
                              r"(?:(?::[\w-]+:.*\n)*?):label:[ \t]*(?P<label>[\w-]+)", re.M)


def exercise_titles_in(book: str | Path) -> dict[str, str]:
    """The title of every exercise in the book's sources (``{"ex-counting-ridge": "The batch that ..."}``).

    Args:
        book: The book's folder of pages (``book/``), read recursively (``*.md``).
    """
    found = {}
    for path in sorted(Path(book).rglob("*.md")):
        if "_build" not in path.parts:
            for m in _EXERCISE_SOURCE.finditer(path.read_text(encoding="utf-8")):
                found[m.group("label")] = m.group("title")
    return found


def syllabus_markdown(weeks: Sequence[Week] = WEEKS, titles: dict[str, str] | None = None,
                      slides: str | None = "../../slides") -> str:
    """The weeks of the syllabus page, in MyST Markdown (for ``{glue:md}`` with ``:format: myst``).

    One block per week: its objectives, then a definition list of its reading ({doc} links), labs ({ref}),
    exercises ({numref}, numbered as in the book, with their titles), checks, assessment and slide deck.

    Args:
        weeks: The weeks.
        titles: Exercise titles by label (:func:`exercise_titles_in`); without one, the number alone.
        slides: The decks' folder relative to the built page (``week-N.html`` in it); None for no link.
    """
    titles = titles or {}
    parts = []
    for w in weeks:
        lines = [f"### Week {w.number}: {w.title}", "", "By the end of the week you can", ""]
        lines += [f"- {o};" if i < len(w.objectives) - 1 else f"- {o}." for i, o in enumerate(w.objectives)]
        lines += ["", "Reading", ": " + ", ".join(f"{{doc}}`/{p}`" for p in w.reading), "",
                  "Lab", ": " + ", ".join(f"{{ref}}`{lab}`" for lab in w.labs), "", "Exercises"]
        for k, e in enumerate(w.exercises):
            title = f": {titles[e]}" if titles.get(e) else ""
            lines.append((": - " if k == 0 else "  - ") + f"{{numref}}`Exercise {{number}} <{e}>`{title}")
        lines += ["", "Answer checks", ": " + ", ".join(f"`{c}`" for c in w.checks), "",
                  "Assessment", f": {w.assessment}", ""]
        if slides:
            lines += ["Slides", f': <a href="{slides}/{deck_name(w)}">{deck_name(w)}</a>', ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


# ----- slides ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BookFigure:
    """One numbered figure of a built page.

    Attributes:
        page: The page, as ``_toc.yml`` names it (``book/physics``).
        page_title: The page's title.
        label: The figure's ``name:`` (its HTML id).
        number: Its number as the book prints it (``Fig. 3``).
        caption: Its caption, as plain text.
        alt: Its alt text.
        image: The image file.
    """

    page: str
    page_title: str
    label: str
    number: str
    caption: str
    alt: str
    image: Path


class _FigureParser(HTMLParser):
    """The figures (id, img alt and src, caption number and text) and the title of a built page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.figures: list[dict] = []
        self.title: list[str] = []
        self._figure: dict | None = None
        self._into: str | None = None
        self._h1 = False
        self._h1_done = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "figure" and a.get("id"):
            self._figure = {"label": a["id"], "alt": None, "src": None, "number": [], "caption": []}
        elif tag == "img" and self._figure is not None and self._figure["src"] is None:
            self._figure["alt"], self._figure["src"] = a.get("alt"), a.get("src")
        elif tag == "span" and self._figure is not None and "caption-number" in classes:
            self._into = "number"
        elif tag == "span" and self._figure is not None and "caption-text" in classes:
            self._into = "caption"
        elif tag == "a" and self._into == "caption" and "headerlink" in classes:
            self._into = None
        elif tag == "h1" and not self._h1_done:
            self._h1 = True

    def handle_endtag(self, tag):
        if tag == "figure" and self._figure is not None:
            self.figures.append(self._figure)
            self._figure = None
            self._into = None
        elif tag == "span" and self._into == "number":
            self._into = None
        elif tag == "figcaption":
            self._into = None
        elif tag == "h1" and self._h1:
            self._h1, self._h1_done = False, True

    def handle_data(self, data):
        if self._figure is not None and self._into:
            self._figure[self._into].append(data)
        if self._h1:
            self.title.append(data)


def _text(parts: list[str]) -> str:
    return " ".join("".join(parts).replace("#", " ").split())


def page_figures(html_root: str | Path, page: str) -> list[BookFigure]:
    """The numbered figures of one built page, in page order (none when the page was not built).

    Args:
        html_root: The built book's ``html`` folder (``_build/html``).
        page: The page as ``_toc.yml`` names it.
    """
    path = Path(html_root) / f"{page}.html"
    if not path.is_file():
        return []
    parser = _FigureParser()
    parser.feed(path.read_text(encoding="utf-8"))
    title = _text(parser.title) or page
    found = []
    for f in parser.figures:
        if not f["src"] or f["src"].startswith(("http:", "https:", "data:")):
            continue
        found.append(BookFigure(page, title, f["label"], _text(f["number"]), _text(f["caption"]),
                                " ".join((f["alt"] or "").split()), (path.parent / f["src"]).resolve()))
    return found


_EXERCISE = re.compile(r'<div class="exercise\b[^"]*" id="([^"]+)">\s*<p class="admonition-title">(.*?)</p>', re.S)


def exercise_titles(html_root: str | Path, pages: Sequence[str]) -> dict[str, str]:
    """The numbered titles of the exercises on built pages (``{"ex-counting-ridge": "Exercise 3 (The batch ...)"}``)."""
    found = {}
    for page in pages:
        path = Path(html_root) / f"{page}.html"
        if path.is_file():
            for label, title in _EXERCISE.findall(path.read_text(encoding="utf-8")):
                found[label] = " ".join(html.unescape(re.sub(r"<[^>]+>", "", title)).split())
    return found


def deck_name(week: Week) -> str:
    """The file name of a week's deck."""
    return f"week-{week.number}.html"


def _data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_CSS = """
html, body { margin: 0; height: 100%; font-family: system-ui, sans-serif; color: #222; background: #fff; }
main { height: 100vh; overflow-y: scroll; scroll-snap-type: y mandatory; }
section { box-sizing: border-box; min-height: 100vh; padding: 3vh 5vw; scroll-snap-align: start;
  display: flex; flex-direction: column; justify-content: center; border-bottom: 1px solid #ddd; }
h1 { font-size: 2.4rem; margin: 0 0 1rem; } h2 { font-size: 1.5rem; margin: 0 0 0.6rem; }
figure { margin: 0; text-align: center; }
figure img { max-width: 100%; height: 58vh; object-fit: contain; }
figcaption { font-size: 1.05rem; margin-top: 0.6rem; text-align: left; }
.alt { font-size: 0.9rem; color: #444; margin-top: 0.4rem; }
.source { font-size: 0.8rem; color: #666; margin-top: 0.4rem; }
li { font-size: 1.15rem; margin: 0.3rem 0; }
nav { position: fixed; right: 1rem; bottom: 0.6rem; font-size: 0.8rem; color: #888; }
"""

_JS = """
document.addEventListener('keydown', function (e) {
  var main = document.querySelector('main');
  if (['ArrowRight', 'PageDown', ' '].indexOf(e.key) >= 0) { main.scrollBy(0, window.innerHeight); e.preventDefault(); }
  if (['ArrowLeft', 'PageUp'].indexOf(e.key) >= 0) { main.scrollBy(0, -window.innerHeight); e.preventDefault(); }
});
"""


def _deck(week: Week, figures: list[BookFigure], exercises: dict[str, str], html_root: Path, out: Path,
          measured: str, built: str) -> str:
    esc = html.escape
    slides = ["<section><h1>" + esc(f"Week {week.number}: {week.title}") + "</h1><h2>By the end of the week you can"
              "</h2><ul>" + "".join(f"<li>{esc(o)}</li>" for o in week.objectives) + "</ul>"
              + (f'<p class="source">Measured data of this book: {esc(measured)}.</p>' if measured else "")
              + "</section>"]
    for f in figures:
        link = os.path.relpath(Path(html_root) / f"{f.page}.html", out).replace(os.sep, "/") + f"#{f.label}"
        slides.append(
            f'<section id="{esc(f.label)}"><h2>{esc(f.page_title)}</h2><figure>'
            f'<img src="{_data_uri(f.image)}" alt="{esc(f.alt, quote=True)}">'
            f"<figcaption><b>{esc(f.number)}</b> {esc(f.caption)}</figcaption></figure>"
            f'<p class="alt"><b>Alt text:</b> {esc(f.alt)}</p>'
            f'<p class="source">Source: {esc(f.number)} of <a href="{esc(link, quote=True)}">{esc(f.page_title)}</a> '
            f"({esc(f.page)}, built {esc(built)}); the figure's footer names the GPU, its UUID and the engine "
            "of the measurements it shows.</p></section>")
    items = "".join(f"<li>{esc(exercises.get(e, e))}</li>" for e in week.exercises)
    slides.append(f"<section><h2>Exercises of the week</h2><ul>{items}</ul>"
                  f"<p>Checks: {esc(', '.join(week.checks))}</p></section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(f'Week {week.number}: {week.title}')}</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(slides)}</main><nav>arrow keys: next / previous slide</nav>"
            f"<script>{_JS}</script></body></html>\n")


def build_slides(html_root: str | Path, out: str | Path, weeks: Sequence[Week] = WEEKS,
                 measured: str | None = None) -> list[Path]:
    """Write one self-contained HTML deck per week (``week-N.html``) and an index, from the built book.

    Each deck has a title slide (the week's objectives), one slide per figure of the week's reading in page
    order (the image embedded, its number and caption, its alt text, and its source line: the page it comes
    from, with a link, and the build's date), and a slide of the week's exercises with their numbers.

    Args:
        html_root: The built book's ``html`` folder (``make book``: ``_build/html``).
        out: The folder for the decks (``_build/html/slides`` publishes them with the book).
        weeks: The weeks.
        measured: The line naming where the book's measurements come from; by default
            :func:`energybook.report.provenance.source_line` of the workspace's measured grids.

    Returns:
        The decks' paths, in week order.

    Raises:
        FileNotFoundError: when ``html_root`` holds no built book.
    """
    html_root, out = Path(html_root).resolve(), Path(out).resolve()
    index = html_root / "index.html"
    if not index.is_file():
        raise FileNotFoundError(f"{html_root} holds no built book: run `make book` first")
    if measured is None:
        from energybook.report import analysis, provenance

        measured = provenance.source_line(analysis.measured_table(engine=analysis.BOOK_ENGINE))
    built = datetime.fromtimestamp(index.stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%d")
    out.mkdir(parents=True, exist_ok=True)
    titles = exercise_titles(html_root, _exercise_pages(html_root))
    decks = []
    for w in weeks:
        figures = [f for page in w.reading for f in page_figures(html_root, page)]
        path = out / deck_name(w)
        path.write_text(_deck(w, figures, titles, html_root, out, measured, built), encoding="utf-8")
        decks.append(path)
    links = "".join(f'<li><a href="{deck_name(w)}">{html.escape(f"Week {w.number}: {w.title}")}</a></li>'
                    for w in weeks)
    (out / "index.html").write_text(
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Slides</title>"
        f"<style>{_CSS}</style></head><body><section><h1>Slides, one deck per week</h1><ul>{links}</ul>"
        "</section></body></html>\n", encoding="utf-8")
    return decks


def _exercise_pages(html_root: Path) -> list[str]:
    """Every built page under ``book/`` (exercises of a week may sit on a page outside its reading)."""
    return sorted(str(p.relative_to(html_root).with_suffix("")).replace(os.sep, "/")
                  for p in (html_root / "book").rglob("*.html"))


# ----- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``slides``, ``check NAME ANSWER`` and ``list`` (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m energybook.report.course", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("slides", help="one HTML deck per week from the built book")
    s.add_argument("--html", default="_build/html", help="the built book's html folder")
    s.add_argument("--out", default=None, help="the decks' folder (default: HTML/slides)")
    c = sub.add_parser("check", help="check an answer")
    c.add_argument("name", choices=sorted(CHECKS))
    c.add_argument("answer", type=float)
    sub.add_parser("list", help="list the checks")
    args = parser.parse_args(argv)
    if args.command == "slides":
        decks = build_slides(args.html, args.out or Path(args.html) / "slides")
        print(f"{len(decks)} decks in {decks[0].parent}" if decks else "no weeks")
        return 0
    if args.command == "check":
        return 0 if check(args.name, args.answer) else 1
    for name, c in CHECKS.items():
        print(f"{name} ({c.target}): {c.question} [{c.unit or 'no unit'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
