"""The book's interactive figure: pick a measured model and (n_in, n_out), read off the energy
per output token, per total token and per request.

:func:`explorer_html` returns one self-contained block of HTML: the data embedded as JSON, plain
JavaScript inline, the grid drawn as inline SVG, and a plain table of every value as a fallback
(and as the text alternative). Nothing is fetched: no server, no CDN, no network.

Used in :doc:`/book/explore`.
"""

from __future__ import annotations

import html
import json
import logging

import pandas as pd

from energybook.report.views import VIEWS

logger = logging.getLogger(__name__)

_COLUMNS = ("model", "n_in", "n_out", "j_per_output_token", "j_per_total_token", "j_per_request")

#: viridis at 9 stops (matplotlib's colour map, colour-blind safe), from low to high.
_VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]

_SHORT = {"j_per_output_token": "per output token", "j_per_total_token": "per input or output token",
          "j_per_request": "per request"}


def _check(views: pd.DataFrame) -> None:
    missing = [c for c in _COLUMNS if c not in views.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}; build it with energybook.report.views.energy_views")
    if views.empty:
        raise ValueError("the table is empty: nothing to explore")


def _payload(views: pd.DataFrame) -> dict:
    models = list(dict.fromkeys(views["model"].astype(str)))
    points = {}
    for m in models:
        rows = views[views["model"].astype(str) == m].sort_values(["n_in", "n_out"])
        points[m] = [{"n_in": int(r.n_in), "n_out": int(r.n_out), "j_per_output_token": float(r.j_per_output_token),
                      "j_per_total_token": float(r.j_per_total_token), "j_per_request": float(r.j_per_request)}
                     for r in rows.itertuples(index=False)]
    labels = {k: {"label": label, "short": _SHORT[k], "scale": scale, "unit": "mJ" if scale == 1e3 else "J"}
              for k, (label, scale) in VIEWS.items()}
    return {"models": models, "points": points, "views": labels, "palette": _VIRIDIS}


def fallback_table(views: pd.DataFrame) -> str:
    """Every value as a plain HTML table (the text alternative of the explorer).

    Columns: model, n_in, n_out, mJ per output token, mJ per input or output token, J per request.
    """
    _check(views)
    head = ("<tr><th>model</th><th>n_in</th><th>n_out</th><th>mJ per output token</th>"
            "<th>mJ per input or output token</th><th>J per request</th></tr>")
    body = []
    for r in views.sort_values(["model", "n_in", "n_out"]).itertuples(index=False):
        body.append(f"<tr><td>{html.escape(str(r.model))}</td><td>{int(r.n_in)}</td><td>{int(r.n_out)}</td>"
                    f"<td>{r.j_per_output_token * 1e3:.3g}</td><td>{r.j_per_total_token * 1e3:.3g}</td>"
                    f"<td>{r.j_per_request:.3g}</td></tr>")
    return f"<table class=\"eb-fallback\"><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


_STYLE = """
#{id} {{ max-width: 100%; font-size: 0.95rem; }}
#{id} .eb-controls {{ display: flex; flex-wrap: wrap; gap: 0.5rem 1rem; margin-bottom: 0.6rem; }}
#{id} .eb-controls label {{ display: flex; flex-direction: column; font-size: 0.85rem; }}
#{id} select {{ font-size: 1rem; padding: 0.15rem 0.3rem; max-width: 100%; }}
#{id} .eb-cards {{ display: flex; flex-wrap: wrap; gap: 0.5rem; margin: 0.4rem 0 0.6rem; }}
#{id} .eb-card {{ flex: 1 1 7.5rem; border: 1px solid #8888; border-radius: 0.4rem; padding: 0.35rem 0.5rem; }}
#{id} .eb-card .eb-lab {{ display: block; font-size: 0.8rem; }}
#{id} .eb-card .eb-val {{ display: block; font-size: 1.25rem; font-weight: 600; }}
#{id} .eb-card .eb-rank {{ display: block; font-size: 0.75rem; }}
#{id} fieldset {{ border: none; padding: 0; margin: 0 0 0.3rem; display: flex; flex-wrap: wrap; gap: 0.2rem 0.8rem; }}
#{id} fieldset legend {{ font-size: 0.85rem; padding: 0; }}
#{id} svg {{ width: 100%; max-width: 26rem; height: auto; display: block; }}
#{id} svg rect.eb-cell {{ cursor: pointer; }}
#{id} .eb-scroll {{ overflow-x: auto; max-width: 100%; }}
#{id} table.eb-fallback {{ font-size: 0.8rem; border-collapse: collapse; }}
#{id} table.eb-fallback td, #{id} table.eb-fallback th {{ padding: 0.1rem 0.4rem; text-align: right; }}
"""

_SCRIPT = r"""
(function () {
  var root = document.getElementById("__ID__");
  if (!root) { return; }
  var data = JSON.parse(document.getElementById("__ID__-data").textContent);
  var $ = function (s) { return root.querySelector(s); };
  var selModel = $(".eb-model"), selIn = $(".eb-nin"), selOut = $(".eb-nout");
  var svg = $("svg"), NS = "http://www.w3.org/2000/svg";
  var keys = ["j_per_output_token", "j_per_total_token", "j_per_request"];
  var state = {view: "j_per_output_token"};

  function fmt(v) {
    if (v >= 100) { return v.toFixed(0); }
    if (v >= 10) { return v.toFixed(1); }
    return v.toPrecision(3);
  }
  function opt(sel, value, text) {
    var o = document.createElement("option");
    o.value = value; o.textContent = text; sel.appendChild(o);
  }
  function pointsOf(model) { return data.points[model]; }
  function lengths(model, key) {
    var seen = {}, out = [];
    pointsOf(model).forEach(function (p) { if (!seen[p[key]]) { seen[p[key]] = true; out.push(p[key]); } });
    return out.sort(function (a, b) { return a - b; });
  }
  function find(model, nIn, nOut) {
    var ps = pointsOf(model);
    for (var i = 0; i < ps.length; i++) { if (ps[i].n_in === nIn && ps[i].n_out === nOut) { return ps[i]; } }
    return null;
  }
  // One colour scale per view, shared by every model, so that switching models compares like with like.
  var range = {};
  keys.forEach(function (k) {
    var lo = Infinity, hi = -Infinity;
    data.models.forEach(function (m) {
      pointsOf(m).forEach(function (p) { lo = Math.min(lo, p[k]); hi = Math.max(hi, p[k]); });
    });
    range[k] = [lo, hi];
  });
  function hex(c) { return [1, 3, 5].map(function (i) { return parseInt(c.substr(i, 2), 16); }); }
  function colour(k, v) {
    var lo = Math.log(range[k][0]), hi = Math.log(range[k][1]);
    var t = hi > lo ? (Math.log(v) - lo) / (hi - lo) : 0.5;
    var n = data.palette.length - 1, x = Math.min(n, Math.max(0, t * n)), i = Math.min(n - 1, Math.floor(x));
    var a = hex(data.palette[i]), b = hex(data.palette[i + 1]), f = x - i;
    var rgb = a.map(function (c, j) { return Math.round(c + f * (b[j] - c)); });
    return {fill: "rgb(" + rgb.join(",") + ")", dark: (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) < 128};
  }
  function rank(model, k, v) {
    var ps = pointsOf(model), below = 0;
    ps.forEach(function (p) { if (p[k] < v) { below += 1; } });
    return below + 1;
  }

  function fillLengths() {
    var m = selModel.value, keepIn = +selIn.value, keepOut = +selOut.value;
    selIn.innerHTML = ""; selOut.innerHTML = "";
    lengths(m, "n_in").forEach(function (n) { opt(selIn, n, n); });
    lengths(m, "n_out").forEach(function (n) { opt(selOut, n, n); });
    if (keepIn) { selIn.value = keepIn; }
    if (keepOut) { selOut.value = keepOut; }
    if (!selIn.value) { selIn.selectedIndex = 0; }
    if (!selOut.value) { selOut.selectedIndex = 0; }
  }

  function drawGrid() {
    var m = selModel.value, k = state.view, ins = lengths(m, "n_in"), outs = lengths(m, "n_out");
    var left = 62, top = 8, cell = 44, w = left + cell * outs.length + 8, h = top + cell * ins.length + 50;
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var title = document.createElementNS(NS, "title");
    title.textContent = "Energy " + data.views[k].short + " of " + m + " over the measured grid; " +
      "input length increases upward, output length to the right.";
    svg.appendChild(title);
    var nIn = +selIn.value, nOut = +selOut.value;
    ins.forEach(function (a, i) {
      outs.forEach(function (b, j) {
        var p = find(m, a, b);
        var x = left + j * cell, y = top + (ins.length - 1 - i) * cell;  // n_in increases upward
        if (!p) { return; }
        var c = colour(k, p[k]);
        var r = document.createElementNS(NS, "rect");
        r.setAttribute("x", x); r.setAttribute("y", y); r.setAttribute("width", cell - 1);
        r.setAttribute("height", cell - 1); r.setAttribute("fill", c.fill); r.setAttribute("class", "eb-cell");
        if (a === nIn && b === nOut) {
          r.setAttribute("stroke", "#d55e00"); r.setAttribute("stroke-width", "4");
        }
        r.addEventListener("click", function () { selIn.value = a; selOut.value = b; update(); });
        svg.appendChild(r);
        var t = document.createElementNS(NS, "text");
        t.setAttribute("x", x + cell / 2); t.setAttribute("y", y + cell / 2 + 4);
        t.setAttribute("text-anchor", "middle"); t.setAttribute("font-size", "12");
        t.setAttribute("fill", c.dark ? "#fff" : "#000"); t.setAttribute("pointer-events", "none");
        t.textContent = fmt(p[k] * data.views[k].scale);
        svg.appendChild(t);
      });
    });
    function label(x, y, text, anchor, size, rotate) {
      var t = document.createElementNS(NS, "text");
      t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("text-anchor", anchor);
      t.setAttribute("font-size", size); t.setAttribute("fill", "currentColor");
      if (rotate) { t.setAttribute("transform", "rotate(-90 " + x + " " + y + ")"); }
      t.textContent = text; svg.appendChild(t);
    }
    ins.forEach(function (a, i) { label(left - 4, top + (ins.length - 1 - i) * cell + cell / 2 + 4, a, "end", 11); });
    outs.forEach(function (b, j) { label(left + j * cell + cell / 2, top + ins.length * cell + 14, b, "middle", 11); });
    label(left + outs.length * cell / 2, top + ins.length * cell + 36, "output length n_out (tokens)", "middle", 12);
    label(16, top + ins.length * cell / 2, "input length n_in (tokens)", "middle", 12, true);
  }

  function update() {
    var m = selModel.value, nIn = +selIn.value, nOut = +selOut.value, p = find(m, nIn, nOut);
    keys.forEach(function (k) {
      var card = root.querySelector('[data-view="' + k + '"]');
      card.querySelector(".eb-val").textContent = p ?
        fmt(p[k] * data.views[k].scale) + " " + data.views[k].unit : "not measured";
      card.querySelector(".eb-rank").textContent = p ?
        "rank " + rank(m, k, p[k]) + " of " + pointsOf(m).length + " (1 = cheapest)" : "";
    });
    $(".eb-sentence").textContent = p ?
      m + " at " + nIn + " input and " + nOut + " output tokens: " + fmt(p.j_per_request) + " J per request, " +
      fmt(p.j_per_output_token * 1e3) + " mJ per output token, " + fmt(p.j_per_total_token * 1e3) +
      " mJ per input or output token." : "This point was not measured.";
    drawGrid();
  }

  data.models.forEach(function (m) { opt(selModel, m, m); });
  fillLengths();
  selIn.value = lengths(selModel.value, "n_in")[0];
  var outs = lengths(selModel.value, "n_out");
  selOut.value = outs[Math.min(2, outs.length - 1)];
  selModel.addEventListener("change", function () { fillLengths(); update(); });
  selIn.addEventListener("change", update);
  selOut.addEventListener("change", update);
  root.querySelectorAll('input[type="radio"]').forEach(function (r) {
    r.addEventListener("change", function () { if (r.checked) { state.view = r.value; drawGrid(); } });
  });
  update();
})();
"""


def explorer_html(views: pd.DataFrame, element_id: str = "eb-explore") -> str:
    """The interactive explorer as one self-contained block of HTML.

    Args:
        views: The table of :func:`energybook.report.views.energy_views` (one row per measured point).
        element_id: HTML id of the block (letters, digits, ``-``); unique on the page.

    Returns:
        HTML with inline CSS, the data as JSON, inline JavaScript and a plain table fallback.

    Raises:
        ValueError: for an empty table, missing columns or an unsafe id.

    Used in :doc:`/book/explore`.
    """
    _check(views)
    if not element_id.replace("-", "").isalnum():
        raise ValueError(f"element_id must be letters, digits and '-', got {element_id!r}")
    payload = json.dumps(_payload(views), separators=(",", ":")).replace("</", "<\\/")
    cards = "".join(
        f'<div class="eb-card" data-view="{k}"><span class="eb-lab">energy {_SHORT[k]}</span>'
        f'<span class="eb-val">&nbsp;</span><span class="eb-rank">&nbsp;</span></div>' for k in VIEWS)
    radios = "".join(
        f'<label><input type="radio" name="{element_id}-view" value="{k}"{" checked" if i == 0 else ""}> '
        f'{_SHORT[k]}</label>' for i, k in enumerate(VIEWS))
    style = _STYLE.format(id=element_id)
    script = _SCRIPT.replace("__ID__", element_id)
    return (
        f'<div class="eb-explore" id="{element_id}">'
        f"<style>{style}</style>"
        '<div class="eb-controls">'
        '<label>model <select class="eb-model"></select></label>'
        '<label>input length n_in <select class="eb-nin"></select></label>'
        '<label>output length n_out <select class="eb-nout"></select></label>'
        "</div>"
        f'<div class="eb-cards" aria-live="polite">{cards}</div>'
        '<p class="eb-sentence" aria-live="polite"></p>'
        f"<fieldset><legend>colour the grid by energy</legend>{radios}</fieldset>"
        f'<svg role="img" aria-label="Heat map of the chosen energy view over the measured grid of the chosen '
        f'model; click a cell to pick it." xmlns="http://www.w3.org/2000/svg"></svg>'
        "<details><summary>Every value as a table</summary>"
        f'<div class="eb-scroll">{fallback_table(views)}</div></details>'
        f'<script type="application/json" id="{element_id}-data">{payload}</script>'
        f"<script>{script}</script>"
        "</div>"
    )
