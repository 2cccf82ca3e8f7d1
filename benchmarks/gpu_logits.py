"""Issue 12's GPU correctness record: the lean engine's logits against transformers' for the 13 study architectures.

For each model, at real size with random bf16 weights (nothing can be downloaded on the lent GPUs; the check is
about the computation, not the weights):

1. transformers' model is built on the GPU in bf16 (``eager`` attention for Gemma 2, whose soft-capping SDPA
   lacks; SDPA otherwise) and the lean engine re-packs its weights (:meth:`LeanEngine.from_hf_model`);
2. the same greedy continuation is scored by both in bf16, and by transformers in float32 from the same weights;
3. "within bf16 tolerance" means: for every way of attending the engine has here, its logits are no further
   from the float32 model than 1.5 times transformers' own bf16 run is (mean relative L2 error over the
   prefill's last position and every decode step), plus 1e-3;
4. the same holds through the CUDA graphs (captured for the check, copying their logits out); every way is
   scored teacher-forced on the continuation that ``masked`` picks greedily, so that a near-tie of random
   weights cannot send two ways down different continuations;
5. for a model with a sliding window, a second request crosses the window (``n_in`` just below it).

The record (``gpu_logits.json`` and ``gpu_logits.txt`` in ``--out``) carries the GPU's name and UUID, the
driver, the library versions and the commit. A model that fails is recorded with its error, and the run goes on.

Usage (from the checkout, on the GPU)::

    ENERGYBOOK_COMMIT=$(git rev-parse --short HEAD) PYTHONPATH=$PWD python3 benchmarks/gpu_logits.py \\
        --out benchmarks/results/gpu_logits [--models Gemma-2-2B,OPT-1.3B]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a file (python benchmarks/gpu_logits.py): the checkout on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import harness  # noqa: E402

#: Relative margin over transformers' own bf16 error, and the absolute slack.
RATIO, SLACK = 1.5, 1e-3


def parse_args(argv=None) -> argparse.Namespace:
    from energybook.model import architecture as A

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=lambda s: [m for m in s.split(",") if m], default=list(A.STUDY_ORDER),
                    help="comma-separated shipped names or config.json paths (default: the 13 study models)")
    ap.add_argument("--out", default="benchmarks/results/gpu_logits", help="folder of the record")
    ap.add_argument("--n-in", type=int, default=200)
    ap.add_argument("--n-out", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    args = ap.parse_args(argv)
    unknown = [m for m in args.models if m not in A.available() and not (m.endswith(".json") and Path(m).is_file())]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; shipped: {', '.join(A.available())}")
    return args


def _hf_model(name: str, torch, transformers):
    from energybook.measure.torch_engine import transformers_config
    from energybook.model import architecture as A

    cfg = json.loads(Path(name).read_text()) if name.endswith(".json") else dict(A.hf_config(name))
    attn = "eager" if cfg["model_type"] == "gemma2" else "sdpa"
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(transformers_config(cfg), attn_implementation=attn,
                                                              dtype=torch.bfloat16)
    return model.eval(), attn


def _rel(a, b) -> float:
    """Mean relative L2 distance of the logits ``a`` from ``b``, step by step."""
    return statistics.mean(float((x - y).norm() / y.norm()) for x, y in zip(a, b))


def compare(eng, ref, n_in: int, n_out: int, batch: int, torch) -> dict:
    """Teacher-forced logits of every way of attending, eager and through CUDA graphs, on the continuation the
    ``masked`` way picks greedily, with transformers' bf16 logits of the same sequence."""
    gen = torch.Generator(device="cuda").manual_seed(n_in)
    prompts = torch.randint(0, eng.vocab, (batch, n_in), device="cuda", generator=gen)
    eng.decode_attention = "masked"
    eng.release_wave()
    first = eng.greedy_logits(prompts, n_out, static=True)
    tokens = torch.stack([x.argmax(-1) for x in first], dim=1)
    seq = torch.cat([prompts, tokens.cuda()], dim=1)
    with torch.no_grad():
        theirs = ref(seq).logits[:, n_in - 1:n_in - 1 + n_out].float().cpu()
    ways = {}
    for way in eng.paths_available:
        eng.decode_attention = way
        eng.release_wave()
        eng.settings["decode_attention_chosen"] = {}
        eager = eng.greedy_logits(prompts, n_out, static=True, forced=tokens)
        chosen = eng.settings["decode_attention_chosen"].get(f"batch {batch}")
        graphed = eng.greedy_logits(prompts, n_out, forced=tokens, graphs=True)
        ways[way] = {"eager": eager, "graphs": graphed, "chosen": chosen}
    return {"seq": seq, "theirs": theirs, "ways": ways}


def check_model(name: str, args, torch, transformers) -> dict:
    """One model's record (see the module docstring)."""
    from energybook.measure.lean_engine import LeanEngine

    t0 = time.perf_counter()
    ref, attn = _hf_model(name, torch, transformers)
    compile_ = {"auto": "auto", "on": True, "off": False}[args.compile]
    eng = LeanEngine.from_hf_model(ref, device="cuda", max_batch=max(8, args.batch), compile=compile_)
    cases = [(args.n_in, args.n_out, args.batch)]
    window = eng.arch.sliding_window if eng.windows else None
    if window:  # a request whose decode crosses the window
        cases.append((window - args.n_out // 2, args.n_out, 1))
    runs = [compare(eng, ref, n_in, n_out, b, torch) for n_in, n_out, b in cases]
    rec = {"model": name, "family": eng.arch.model_type, "hf_attention": attn, "compile": eng.compile,
           "ways": list(eng.paths_available), "cases": []}
    eng.release()
    del eng
    ref.float()  # the same weights in float32: the reference
    with torch.no_grad():
        for (n_in, n_out, b), run in zip(cases, runs):
            exact = ref(run["seq"]).logits[:, n_in - 1:n_in - 1 + n_out].float().cpu()
            theirs = _rel([run["theirs"][:, i] for i in range(n_out)], [exact[:, i] for i in range(n_out)])
            case = {"n_in": n_in, "n_out": n_out, "batch": b, "hf_bf16_err": theirs, "ways": {}}
            for way, got in run["ways"].items():
                eager = _rel(got["eager"], [exact[:, i] for i in range(n_out)])
                graphs = _rel(got["graphs"], [exact[:, i] for i in range(n_out)])
                case["ways"][way] = {
                    "eager_err": eager, "graphs_err": graphs, "ratio": eager / theirs if theirs else None,
                    "graphs_vs_eager": _rel(got["graphs"], got["eager"]), "chosen": got["chosen"],
                    "ok": max(eager, graphs) < RATIO * theirs + SLACK}
            rec["cases"].append(case)
    del ref, runs
    torch.cuda.empty_cache()
    rec["ok"] = all(w["ok"] for c in rec["cases"] for w in c["ways"].values())
    rec["wall_s"] = time.perf_counter() - t0
    return rec


def line(rec: dict) -> str:
    """One line per model for the text record."""
    if "error" in rec:
        return f"{rec['model']:<22} ERROR {rec['error']}"
    parts = []
    for c in rec["cases"]:
        ways = ", ".join(f"{w} {v['eager_err']:.4f}/{v['graphs_err']:.4f}" for w, v in c["ways"].items())
        parts.append(f"({c['n_in']}, {c['n_out']}, b{c['batch']}): hf bf16 {c['hf_bf16_err']:.4f}, ours eager/graphs "
                     f"{ways}")
    return f"{rec['model']:<22} {'ok ' if rec['ok'] else 'BAD'} {'; '.join(parts)}; {rec['wall_s']:.0f} s"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers

    if not torch.cuda.is_available():
        print("gpu_logits.py checks the engine on an NVIDIA GPU: no CUDA device here", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = harness.provenance("cuda", engine="lean")
    path = out / "gpu_logits.json"
    result = json.loads(path.read_text()) if path.exists() else {"models": {}}
    result.update(gpu=env.get("gpu"), gpu_uuid=env.get("gpu_uuid"), commit=env.get("commit"), environment=env,
                  tolerance=f"mean relative L2 error vs float32 < {RATIO} x transformers' bf16 error + {SLACK}",
                  weights="dummy: transformers' random initialisation, bf16")
    header = (f"GPU {env.get('gpu')} {env.get('gpu_uuid')}, driver {env.get('driver')}; torch {env['torch']}, "
              f"transformers {env['transformers']}; commit {env['commit']}; {env['date']}")
    print(header, flush=True)
    for name in args.models:
        try:
            rec = check_model(name, args, torch, transformers)
        except Exception as exc:  # noqa: BLE001 - recorded, and the next model runs
            traceback.print_exc()
            rec = {"model": name, "error": f"{type(exc).__name__}: {exc}"[:500], "ok": False}
            torch.cuda.empty_cache()
        rec["gpu_uuid"], rec["commit"] = env.get("gpu_uuid"), env.get("commit")
        result["models"][name] = rec
        print(line(rec), flush=True)
        path.write_text(json.dumps(result, indent=1))
        (out / "gpu_logits.txt").write_text("\n".join([header] + [line(r) for r in result["models"].values()]) + "\n")
    return 0 if all(r.get("ok") for r in result["models"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
