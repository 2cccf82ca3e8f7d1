"""The three views of a measured grid, the phase split, the power-cap estimate, the heat-map helpers
and the interactive explorer's HTML."""

import json
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from energybook.report import interactive as I  # noqa: E402
from energybook.report import views as V  # noqa: E402


def _table() -> pd.DataFrame:
    """A small grid whose energy per request is prefill (grows with n_in) plus decode (with n_out)."""
    rows = []
    for n_in in (64, 4096):
        for n_out in (64, 256, 4096):
            n_req = 1000
            prefill = 4e-3 * n_in * n_req
            decode = (1e-2 + 1e-6 * (n_in + n_out)) * n_out * n_req
            duration = (prefill + decode) / 690.0
            rows.append(dict(model="M", n_in=n_in, n_out=n_out, n_req=n_req, energy_j=prefill + decode,
                             prefill_energy_j=prefill, decode_energy_j=decode, duration_s=duration,
                             power_w=690.0, power_limit_w=700.0))
    return pd.DataFrame(rows)


def test_three_views_divide_the_same_energy():
    v = V.energy_views(_table())
    r = v[(v["n_in"] == 64) & (v["n_out"] == 256)].iloc[0]
    assert r["j_per_request"] == pytest.approx(r["energy_j"] / 1000)
    assert r["j_per_output_token"] == pytest.approx(r["energy_j"] / (1000 * 256))
    assert r["j_per_total_token"] == pytest.approx(r["energy_j"] / (1000 * 320))
    assert r["tokens_per_j"] == pytest.approx(1 / r["j_per_output_token"])
    assert list(v["n_in"]) == sorted(v["n_in"])


def test_the_views_disagree_on_the_best_point():
    v = V.energy_views(_table())
    per_output = V.best(v, "M")
    per_total = V.best(v, "M", "j_per_total_token")
    per_request = V.best(v, "M", "j_per_request")
    assert (per_output.n_in, per_output.n_out) == (64, 256)  # a sweet spot in n_out
    assert per_total.n_in == 4096  # long prompts are cheap per token processed
    assert (per_request.n_in, per_request.n_out) == (64, 64)  # the shortest request costs least
    worst = V.worst(v, "M")
    assert (worst.n_in, worst.n_out) == (4096, 64)
    assert worst.j_per_total_token < per_output.j_per_total_token
    assert V.point(v, "M", 64, 256).tokens_per_j == pytest.approx(1 / per_output.j_per_output_token)


def test_unknown_points_and_views_fail():
    v = V.energy_views(_table())
    with pytest.raises(ValueError, match="no measured point"):
        V.point(v, "M", 128, 64)
    with pytest.raises(ValueError, match="not in the table"):
        V.best(v, "other")
    with pytest.raises(ValueError, match="unknown view"):
        V.best(v, "M", "j_per_token")
    with pytest.raises(ValueError, match="lacks"):
        V.energy_views(_table().drop(columns="n_req"))


def test_energy_per_request_rises_with_n_out():
    r = V.rises_with_n_out(V.energy_views(_table()))
    assert r["rises"].all()
    assert (r["highest"] > r["lowest"]).all()
    per_token = V.rises_with_n_out(V.energy_views(_table()), "j_per_output_token")
    assert not per_token["rises"].all()


def test_phase_split():
    s = V.phase_split(_table())
    assert ((s["prefill_share"] > 0) & (s["prefill_share"] < 1)).all()
    long_in = s[(s["n_in"] == 4096) & (s["n_out"] == 64)]["prefill_share"].iloc[0]
    long_out = s[(s["n_in"] == 64) & (s["n_out"] == 4096)]["prefill_share"].iloc[0]
    assert long_in > 0.5 > long_out


def test_cap_estimate():
    c = V.cap_estimate(_table())
    assert c["of_cap"].to_numpy() == pytest.approx(690 / 700)
    assert c["j_per_token"].to_numpy() == pytest.approx(c["of_cap"].to_numpy() * c["cap_j_per_token"].to_numpy())
    assert (c["cap_tokens_per_j"] < c["tokens_per_j"]).all()


def test_log_ticks():
    assert V.log_ticks(0.9, 120) == [1, 2, 5, 10, 20, 50, 100]
    assert V.log_ticks(3.0, 4.0) == [3.0, 4.0]
    assert V.tick_label(0.5) == "0.5" and V.tick_label(100.0) == "100"
    with pytest.raises(ValueError):
        V.log_ticks(0.0, 1.0)


def test_heatmap_puts_long_inputs_at_the_top():
    v = V.energy_views(_table())
    fig, ax = plt.subplots()
    norm = V.shared_log_norm([v], "j_per_request")
    image = V.grid_heatmap(ax, v, "j_per_request", norm, mark=[(64, 256)])
    data = image.get_array()
    assert image.origin == "lower"
    assert data[0, 0] == pytest.approx(v["j_per_request"].min())  # (64, 64) is row 0, drawn at the bottom
    assert [t.get_text() for t in ax.get_yticklabels()] == ["64", "4096"]
    assert len(ax.texts) == 6 and len(ax.patches) == 1
    cbar = V.log_colorbar(fig, image, ax, "energy per request (J)")
    assert all("^" not in t.get_text() for t in cbar.ax.get_yticklabels())
    plt.close(fig)


def test_shared_norm_covers_every_table():
    a = V.energy_views(_table())
    b = a.assign(j_per_request=a["j_per_request"] * 10)
    norm = V.shared_log_norm([a, b], "j_per_request")
    assert norm.vmin == pytest.approx(a["j_per_request"].min())
    assert norm.vmax == pytest.approx(b["j_per_request"].max())


def test_explorer_html_embeds_the_data_and_no_remote_script():
    v = V.energy_views(_table())
    html = I.explorer_html(v, element_id="t1")
    assert "<script" in html
    assert not re.search(r"<script[^>]*\bsrc=", html)  # inline scripts only
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched
    payload = re.search(r'<script type="application/json" id="t1-data">(.*?)</script>', html, re.S).group(1)
    data = json.loads(payload)
    assert data["models"] == ["M"]
    first = data["points"]["M"][0]
    assert first["n_in"] == 64 and first["n_out"] == 64
    assert first["j_per_request"] == pytest.approx(float(v["j_per_request"].iloc[0]))
    assert "<table" in html  # the plain table fallback
    assert "max-width" in html and "overflow-x" in html


def test_explorer_escapes_model_names():
    v = V.energy_views(_table().assign(model="<b>x</b>"))
    html = I.explorer_html(v, element_id="t2")
    assert "<b>x</b>" not in html


def test_explorer_rejects_an_empty_table():
    with pytest.raises(ValueError):
        I.explorer_html(V.energy_views(_table()).iloc[0:0])


def test_fallback_table_has_every_point():
    v = V.energy_views(_table())
    html = I.fallback_table(v)
    assert html.count("<tr>") == len(v) + 1
    assert np.isfinite(v["j_per_total_token"]).all()


def test_short_number():
    assert [V.short_number(v) for v in (312.4, 89.2, 9.04, 0.666)] == ["312", "89", "9.0", "0.67"]


def test_heatmap_panels_share_one_scale():
    v = V.energy_views(_table())
    norm = V.shared_log_norm([v], "j_per_request")
    fig = V.heatmap_panels({"a": v, "b": v, "c": v}, "j_per_request", norm, "energy per request (J)")
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(shown) == 3
    assert all(ax.images[0].norm is norm for ax in shown)
    assert [ax.get_title() for ax in shown] == ["a", "b", "c"]
    assert fig.get_size_inches()[0] <= 8
    plt.close(fig)
    single = V.heatmap_panels({"only": v}, "j_per_request", norm, "energy per request (J)")
    assert single.axes[0].get_title() == ""  # a single panel carries no title
    plt.close(single)
    with pytest.raises(ValueError):
        V.heatmap_panels({}, "j_per_request", norm, "x")


def test_table_html_scrolls_and_escapes():
    html = V.table_html(pd.DataFrame({"a": [1.234], "b": ["<x>"]}), {"a": "{:.1f}"}, caption="c & d")
    assert "overflow-x:auto" in html
    assert "<td>1.2</td>" in html and "&lt;x&gt;" in html and "<caption>c &amp; d</caption>" in html


def test_predicted_table_is_a_grid_the_views_read():
    from energybook.model import architecture as A
    from energybook.model import physics as P

    cal = P.load_calibration()
    t = V.predicted_table(["Llama-3.2-1B", "Gemma-2-9B"], calibration=cal, n_in=[64, 4096], n_out=[64, 4096])
    assert len(t) == 8 and set(t["model"]) == {"Llama-3.2-1B", "Gemma-2-9B"}
    assert (t["energy_low_j"] < t["energy_j"]).all() and (t["energy_j"] < t["energy_high_j"]).all()
    one = t.query("model == 'Llama-3.2-1B' and n_in == 64 and n_out == 4096").iloc[0]
    assert one.energy_j == pytest.approx(P.predict(A.load("Llama-3.2-1B"), 64, 4096, calibration=cal).energy_j)
    views = V.energy_views(t)
    assert (views["j_per_request"] > 0).all()
    with pytest.raises(ValueError, match="unknown|not a shipped|Llama"):
        V.predicted_table(["No-Such-Model"], calibration=cal)
