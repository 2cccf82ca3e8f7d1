"""What the engines can run on a GPU of a given generation, in one place; and the CPU path, which times a tiny grid.

A GPU's CUDA compute capability (``sm75`` for a T4, ``sm90`` for an H100) decides what the engines can use:

* **bf16**: tensor cores that take bfloat16 exist from compute capability 8.0 (Ampere) on. Below it
  :func:`choose_dtype` falls back to float16 when the dtype was left to the model (``--dtype auto``), with a
  warning naming the GPU, and refuses an explicit ``--dtype bf16``, saying what to pass instead;
* **flash attention's variable-length kernel** (``aten._flash_attention_forward`` with ``seqused_k``): PyTorch builds
  flash attention for compute capability 8.0 and newer. The ``hf`` engine's decode graphs use it where it is,
  and masked SDPA over the graph's bucket where it is not (:meth:`TorchEngine._pick_graph_attention
  <energybook.measure.torch_engine.TorchEngine._pick_graph_attention>`);
* **the lean engine**: its decode attention ways other than ``masked`` are flash attention's prefix and varlen
  kernels and a Triton kernel, and its compiled blocks are Triton code (Triton's README lists NVIDIA GPUs of
  compute capability 8.0 and newer as its supported hardware). It has run only on Hopper; below 8.0
  :func:`check_engine` refuses it and names the ``hf`` engine;
* **float16 and CUDA graphs**: every GPU from compute capability 7.0 (Volta) on. Below 7.0 (Pascal and older)
  both engines are refused: no tensor cores, and no NVML total-energy counter (NVML has it from Volta on).

:func:`settings_for_device` applies all of this where a sweep builds its engine
(:func:`energybook.measure.runner.build_engine`), before anything is measured.

The CPU path, :func:`cpu_trial`, runs a small grid of the ``hf`` engine in float32 on the CPU and measures time
only: there is no energy meter on the CPU, so its rows carry no energy (NaN), and it writes no file.

:func:`provenance_gpus` lists the GPUs named in committed data and benchmark files: the GPUs this package's code
has run on.

Used in :doc:`/book/labs/small_gpu`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from energybook.measure.engines import EngineUnavailable
from energybook.measure.settings import DTYPE_WORDS, DTYPES

logger = logging.getLogger(__name__)

#: Compute capability from which the GPU has bf16 tensor cores (Ampere).
BF16_MIN = (8, 0)
#: Compute capability from which PyTorch builds flash attention, and so its variable-length kernel.
FLASH_MIN = (8, 0)
#: Compute capability the lean engine needs: flash attention's kernels and Triton's compiled code.
LEAN_MIN = (8, 0)
#: Compute capability below which no engine here runs (Volta: tensor cores, NVML's total-energy counter).
MIN_CAPABILITY = (7, 0)
#: The engines this module knows the needs of (the wave engines; ``torch`` is ``hf``'s older name).
WAVE_ENGINES = ("hf", "torch", "lean")

#: Architecture names by compute capability (major, minor); a capability not listed takes its major's name.
GENERATIONS = {(6, 0): "Pascal", (6, 1): "Pascal", (7, 0): "Volta", (7, 2): "Volta", (7, 5): "Turing",
               (8, 0): "Ampere", (8, 6): "Ampere", (8, 7): "Ampere", (8, 9): "Ada Lovelace", (9, 0): "Hopper",
               (10, 0): "Blackwell", (12, 0): "Blackwell"}
#: Compute capabilities of common GPUs, from NVIDIA's list (https://developer.nvidia.com/cuda-gpus): a name
#: fragment, as NVML and torch name the board, -> (major, minor). Matched longest fragment first.
KNOWN_GPUS = {"V100": (7, 0), "T4": (7, 5), "A10G": (8, 6), "A10": (8, 6), "L4": (8, 9), "A100": (8, 0),
              "RTX 4090": (8, 9), "H100": (9, 0), "H200": (9, 0)}


class GpuUnsupported(EngineUnavailable):
    """The GPU lacks what the chosen engine or dtype needs; the message says what is missing and what to pass."""


def _sm(capability: tuple[int, int]) -> str:
    return f"sm{capability[0]}{capability[1]}"


def generation(capability: tuple[int, int]) -> str:
    """The architecture's name of a compute capability (``(7, 5)`` -> ``"Turing"``)."""
    cap = tuple(capability)
    if cap in GENERATIONS:
        return GENERATIONS[cap]
    older = [name for c, name in sorted(GENERATIONS.items()) if c[0] == cap[0]]
    if older:
        return older[-1]
    return "Pascal or older" if cap < MIN_CAPABILITY else "newer than Blackwell"


def known_capability(name: str) -> tuple[int, int] | None:
    """The compute capability of a GPU from its name (``"Tesla T4"``, ``"NVIDIA H100 80GB HBM3"``), from
    :data:`KNOWN_GPUS`; None for a name it does not know."""
    words = str(name).upper().replace("-", " ").split()
    for fragment in sorted(KNOWN_GPUS, key=len, reverse=True):
        part = fragment.upper().split()
        if any(words[i:i + len(part)] == part for i in range(len(words))):
            return KNOWN_GPUS[fragment]
    return None


@dataclass(frozen=True)
class GpuSupport:
    """What the engines can use on one GPU.

    Attributes:
        name: The GPU's name (as torch or NVML gives it; may be empty).
        capability: CUDA compute capability (major, minor).
        generation: The architecture (``"Turing"``, ``"Hopper"``...).
        bf16: bfloat16 tensor cores (compute capability 8.0 and newer).
        fp16: float16 tensor cores (7.0 and newer).
        flash_varlen: Flash attention's variable-length kernel in PyTorch (8.0 and newer).
        graphs: CUDA graphs for decode (7.0 and newer, as both engines use them).
        energy_counter: NVML's total-energy counter (7.0, Volta, and newer); without it the meter integrates power.
    """

    name: str
    capability: tuple[int, int]
    generation: str
    bf16: bool
    fp16: bool
    flash_varlen: bool
    graphs: bool
    energy_counter: bool

    @property
    def sm(self) -> str:
        """The capability as ``sm75``."""
        return _sm(self.capability)

    @property
    def label(self) -> str:
        """The GPU as messages name it: ``"Tesla T4 (sm75, Turing)"``."""
        return f"{self.name or 'this GPU'} ({self.sm}, {self.generation})"

    def refusal(self, engine: str) -> str | None:
        """Why ``engine`` cannot run here (one sentence, naming what to use instead), or None when it can."""
        if self.capability < MIN_CAPABILITY:
            return (f"{self.label} is older than Volta (compute capability 7.0): it has no tensor cores and no NVML "
                    "total-energy counter, and no engine here runs on it; measure on a Volta or newer GPU")
        if engine == "lean" and self.capability < LEAN_MIN:
            return (f"the lean engine needs compute capability 8.0 (Ampere) or newer, for flash attention's kernels "
                    f"and its Triton code, and {self.label} lacks them: use --engine hf, which runs here "
                    "(float16, decode graphs with masked attention)")
        return None

    def engines(self) -> dict[str, bool]:
        """Which of the engines ``hf`` and ``lean`` run here."""
        return {e: self.refusal(e) is None for e in ("hf", "lean")}


def support(capability: tuple[int, int] | str, name: str = "") -> GpuSupport:
    """What the engines can use on a GPU of this compute capability.

    Args:
        capability: (major, minor), or text such as ``"7.5"`` or ``"sm75"``.
        name: The GPU's name, for messages.

    Raises:
        ValueError: for a capability that is not (major, minor).
    """
    if isinstance(capability, str):
        text = capability.lower().removeprefix("sm_").removeprefix("sm")
        parts = text.split(".") if "." in text else [text[:-1], text[-1:]]
        try:
            capability = (int(parts[0]), int(parts[1]))
        except (ValueError, IndexError):
            raise ValueError(f"a compute capability is (major, minor), '7.5' or 'sm75'; got {capability!r}") from None
    cap = tuple(int(c) for c in capability)
    if len(cap) != 2 or min(cap) < 0:
        raise ValueError(f"a compute capability is (major, minor), got {capability!r}")
    return GpuSupport(name=str(name), capability=cap, generation=generation(cap), bf16=cap >= BF16_MIN,
                      fp16=cap >= MIN_CAPABILITY, flash_varlen=cap >= FLASH_MIN, graphs=cap >= MIN_CAPABILITY,
                      energy_counter=cap >= MIN_CAPABILITY)


def support_of(name: str) -> GpuSupport | None:
    """:func:`support` of a GPU known by name (:data:`KNOWN_GPUS`), or None."""
    cap = known_capability(name)
    return None if cap is None else support(cap, name)


def device_support(device: Any = "cuda") -> GpuSupport | None:
    """:func:`support` of a CUDA device as torch sees it; None without torch, CUDA or a CUDA device."""
    if not str(device).startswith("cuda"):
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return support(torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device))


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype a run uses on a GPU.

    Attributes:
        requested: What was asked for (None: the model's own, ``--dtype auto``).
        dtype: Torch's name of the dtype chosen (``"float16"``...).
        fallback: Whether it differs from what was asked (or from the model's, for ``auto``).
        message: Why, when it falls back; empty otherwise.
    """

    requested: str | None
    dtype: str
    fallback: bool
    message: str = ""


def dtype_name(word: str | None) -> str | None:
    """Torch's name of a dtype word (``"bf16"`` -> ``"bfloat16"``; ``"auto"``, ``"none"``, None -> None).

    Raises:
        ValueError: for a word that is not a dtype, naming the ones it takes.
    """
    key = word.strip().lower() if isinstance(word, str) else word
    if key is None or key == "none":
        return None
    if key in DTYPE_WORDS:
        return DTYPE_WORDS[key]
    if key in DTYPES:
        return key
    raise ValueError(f"dtype takes {', '.join(DTYPE_WORDS)} (or torch's names {', '.join(DTYPES)}), got {word!r}")


def choose_dtype(requested: str | None, gpu: GpuSupport, native: str = "bfloat16") -> DtypeChoice:
    """The dtype to run in on ``gpu``: ``requested``, or the model's ``native`` dtype when it is ``auto``/None.

    ``auto`` falls back from bf16 to fp16 on a GPU without bf16, with a warning naming the GPU; an explicit bf16
    there is refused.

    Args:
        requested: ``"auto"``/None, ``"bf16"``, ``"fp16"``, ``"fp32"`` (or torch's names).
        gpu: The GPU (:func:`support`).
        native: The model configuration's dtype (torch's name or a short word).

    Raises:
        GpuUnsupported: bf16 asked for by name on a GPU without it, or fp16 on one without it; the message names
            the GPU, what it lacks and what to pass instead.
        ValueError: a word that is not a dtype.
    """
    asked = dtype_name(requested)
    want = asked or dtype_name(native) or "float32"
    if want == "bfloat16" and not gpu.bf16:
        why = f"{gpu.label} has no bf16: bf16 needs compute capability 8.0 (Ampere) or newer"
        if asked is not None:
            raise GpuUnsupported(f"{why}. Pass --dtype fp16 (engine_settings dtype='float16'), or --dtype auto to "
                                 "fall back to it")
        message = f"{why}; running in fp16 (float16) instead of the model's bf16, recorded in the sidecar"
        logger.warning("%s", message)
        return DtypeChoice(requested, "float16", True, message)
    if want == "float16" and not gpu.fp16:
        raise GpuUnsupported(f"{gpu.label} has no fp16 tensor cores (compute capability 7.0, Volta, or newer): "
                             "pass --dtype fp32, or measure on a newer GPU")
    return DtypeChoice(requested, want, False)


def check_engine(engine: str, gpu: GpuSupport) -> None:
    """Refuse an engine the GPU cannot run (:meth:`GpuSupport.refusal`).

    Raises:
        GpuUnsupported: naming the GPU, what is missing and the engine to use instead.
    """
    why = gpu.refusal(engine)
    if why is not None:
        raise GpuUnsupported(why)


def _native_dtype(model: Any) -> str | None:
    """The dtype a model's configuration names (None when it cannot be read here: the engine then says why)."""
    from energybook.model import architecture as A

    try:
        if isinstance(model, dict):
            return A.Architecture.from_hf_config(model).dtype
        path = Path(str(model))
        if path.is_dir():
            return A.Architecture.from_hf_config(path / "config.json").dtype
        return A.load(model).dtype
    except (ValueError, OSError, KeyError, TypeError):
        return None


def settings_for_device(engine: str, settings: Any, model: Any, device: Any = "cuda",
                        gpu: GpuSupport | None = None) -> Any:
    """The engine settings a sweep on ``device`` runs with: refused when the GPU cannot run ``engine``, the dtype
    fallen back to fp16 where bf16 is missing (with a warning), unchanged otherwise.

    The sweep records what this returns in its sidecar (``engine_settings``), so a run on a T4 says float16.

    Args:
        engine: The registered engine name.
        settings: Its settings (None: its defaults).
        model: What the engine takes as its model (for the configuration's dtype).
        device: The sweep's device; not CUDA (the CPU), or an engine this module does not know: unchanged.
        gpu: The GPU's support (default: :func:`device_support` of ``device``).

    Raises:
        GpuUnsupported: the engine or the requested dtype cannot run on this GPU.
    """
    if engine not in WAVE_ENGINES:
        return settings
    gpu = gpu or device_support(device)
    if gpu is None:
        return settings  # no CUDA device: the engine refuses with its own message
    check_engine("hf" if engine == "torch" else engine, gpu)
    given = settings
    if settings is None:
        from energybook.measure import engines as EN

        settings = EN.get_engine(engine).default_settings()
    if settings is None or not hasattr(settings, "dtype"):
        return given
    native = _native_dtype(model)
    if settings.dtype is None and native is None:
        return given
    choice = choose_dtype(settings.dtype, gpu, native or "float32")
    # unchanged settings stay as given (None for the defaults): a resume on the same GPU records the same ones
    return replace(settings, dtype=choice.dtype) if choice.fallback else given


# ----- the CPU path --------------------------------------------------------------------------------------------


#: Why the CPU path's rows have no energy.
CPU_NOTE = ("time only: the CPU has no energy meter here, so energy_j and tokens_per_j are NaN; hf engine, float32, "
            "eager decode, random weights; nothing is written")


@dataclass(frozen=True)
class CpuTrial:
    """What :func:`cpu_trial` timed.

    Attributes:
        model: The model's name.
        rows: One row per point: n_in, n_out, n_req, batch, waves, prefill_s, decode_s, duration_s (seconds),
            tokens_out, tokens_per_s, and energy_j and tokens_per_j, NaN (not metered).
        engine: The engine's settings as it recorded them (dtype, device...).
        seconds: Wall time of the whole trial, the model's build included (seconds).
        note: What the rows are and are not (:data:`CPU_NOTE`).
    """

    model: str
    rows: Any
    engine: dict
    seconds: float
    note: str = CPU_NOTE


def cpu_trial(model: Any, config: Any = None, **protocol: Any) -> CpuTrial:
    """Time a small grid on the CPU with the ``hf`` engine in float32: the code path of a sweep, with no energy.

    The points are grouped as a sweep groups them (:func:`~energybook.measure.protocol.plan`): in ``prefix`` mode each
    ``n_in`` is one generation per wave to the longest ``n_out``, its clock read at every shorter ``n_out`` on the
    way; in ``full`` mode one generation per point. Every wave of ``n_req`` requests runs (the last one holds the
    rest), after a warm-up generation of two tokens. Nothing is written; the rows' energy is NaN.

    Args:
        model: A shipped model name, a ``config.json`` path or a checkpoint directory.
        config: The protocol (:class:`~energybook.measure.protocol.SweepConfig`); its lengths, ``n_req``,
            ``max_batch``, ``repeats``, ``mode``, ``seed``, ``weight_init`` and ``prompts`` are used; its engine and
            windows are not (the CPU path always runs the ``hf`` engine, float32, no CUDA graphs).
        **protocol: :class:`SweepConfig` fields, when ``config`` is not given (default: 2 requests per point).

    Raises:
        ValueError: bad parameters, or the sampled protocol (which needs the lean engine on a GPU).
        energybook.measure.engines.EngineUnavailable: PyTorch or transformers missing.
    """
    import pandas as pd

    from energybook.measure import engines as EN
    from energybook.measure.protocol import SweepConfig, plan

    t0 = time.perf_counter()
    if config is None:
        config = SweepConfig(**{"n_req": 2, "max_batch": 2, **protocol})
    elif protocol:
        raise ValueError(f"give the protocol as config or as keywords, not both (got {sorted(protocol)})")
    if config.mode not in ("prefix", "full"):
        raise ValueError(f"the CPU path runs the prefix or full protocol, not {config.mode!r}")
    wave: dict[str, Any] = dict(device="cpu", max_batch=config.max_batch, seed=config.seed)
    if (config.weight_init, config.prompts) != (SweepConfig.weight_init, SweepConfig.prompts):
        wave.update(weight_init=config.weight_init, prompts=config.prompts)
    settings = EN.get_engine("hf").settings_class()(dtype="float32", cuda_graphs=False)
    engine = EN.make_engine("hf", model, None, settings=settings, wave=wave)
    longest = max(config.points, key=lambda p: p.n_in + p.n_out)
    engine.check_lengths(longest.n_in, longest.n_out)
    rows = []
    for g in plan(config.points, engine.batch_limit, config.n_req, config.max_batch, config.mode):
        n_max = max(g.n_outs)
        engine.generate(g.n_in, min(2, n_max), g.batch)  # warm-up: first calls allocate and pick kernels
        prefill = 0.0
        decode = dict.fromkeys(g.n_outs, 0.0)
        sizes = [g.batch] * (g.waves - 1) + [config.n_req - g.batch * (g.waves - 1)]  # every request, really run
        for size in sizes:
            w = engine.generate(g.n_in, n_max, size, checkpoints=g.n_outs)
            prefill += w.times.prefill_end - w.times.start
            for n in g.n_outs:
                decode[n] += w.times.checkpoints[n] - w.times.prefill_end
        for n in g.n_outs:
            duration = prefill + decode[n]
            tokens = config.n_req * n
            rows.append(dict(n_in=g.n_in, n_out=n, rep=g.rep, n_req=config.n_req, batch=g.batch, waves=g.waves,
                             prefill_s=prefill, decode_s=decode[n], duration_s=duration, tokens_out=tokens,
                             tokens_per_s=tokens / duration if duration > 0 else math.nan,
                             energy_j=math.nan, tokens_per_j=math.nan))
    table = pd.DataFrame(rows).sort_values(["rep", "n_in", "n_out"]).reset_index(drop=True)
    name = str(getattr(engine, "name", model))
    record = dict(getattr(engine, "settings", {}) or {})
    engine.release()
    return CpuTrial(name, table, record, time.perf_counter() - t0)


# ----- where the code has run ----------------------------------------------------------------------------------


def _gpu_names(obj: Any) -> set[str]:
    """Every ``gpu`` / ``gpu_name`` text in a JSON document, at any depth."""
    found: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("gpu", "gpu_name") and isinstance(v, str) and v.strip():
                found.add(v.strip())
            else:
                found |= _gpu_names(v)
    elif isinstance(obj, list):
        for v in obj:
            found |= _gpu_names(v)
    return found


def provenance_gpus(measured: str | Path | None, benchmarks: str | Path | None):
    """The GPUs named in committed provenance: the measured data's sidecars (``measured/**/*.json``) and the
    benchmark results (``benchmarks/results/**/*.json``), each with its compute capability where known.

    Args:
        measured: The ``measured`` folder (or None).
        benchmarks: The benchmark results folder (or None).

    Returns:
        A DataFrame with one row per GPU name: ``gpu``, ``sm`` (``"sm90"``, empty when unknown),
        ``generation``, ``measured_files`` and ``benchmark_files`` (JSON files naming it).
    """
    import pandas as pd

    counts: dict[str, dict[str, int]] = {}
    for kind, root in (("measured_files", measured), ("benchmark_files", benchmarks)):
        if root is None or not Path(root).is_dir():
            continue
        for path in sorted(Path(root).rglob("*.json")):
            try:
                names = _gpu_names(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
            for gpu in names:
                counts.setdefault(gpu, {"measured_files": 0, "benchmark_files": 0})[kind] += 1
    rows = []
    for gpu, n in sorted(counts.items()):
        s = support_of(gpu)
        rows.append(dict(gpu=gpu, sm=s.sm if s else "", generation=s.generation if s else "", **n))
    return pd.DataFrame(rows, columns=["gpu", "sm", "generation", "measured_files", "benchmark_files"])
