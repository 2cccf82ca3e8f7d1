"""How long a sweep will take, from its plan: the roofline time of every group at a nominal GPU, plus the
protocol's warm-ups, minimum windows and cool-downs.

Two users of one estimate:

* the launcher (:mod:`energybook.measure.launch`) balances its ranks by it; only the ratios between units matter
  there;
* every sweep prints an ETA from it before it starts (:func:`eta`). The roofline is a lower bound: the three grids
  the ``hf`` engine measured on an H100 (Llama 3.2 1B, OPT 1.3B, Qwen2 1.5B) took :data:`ETA_FACTOR` times the
  estimate (1.8 to 2.5), so the ETA is a range, not a promise.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

from dataclasses import dataclass

from energybook.measure.protocol import Group, SweepConfig
from energybook.model import architecture as A
from energybook.model import batch as BATCH
from energybook.model import roofline as RL
from energybook.model.batch import HF_PROFILE, EngineProfile

#: The GPU the planner prices work on: the H100 SXM's datasheet limits (bf16 dense tensor FLOP/s, HBM3
#: bytes/s, watts). Only the ratios between units matter to the plan.
NOMINAL_GPU = RL.GpuSpec("nominal GPU for planning", 989e12, 3.35e12, 700.0,
                         "NVIDIA H100 SXM datasheet (dense bf16, HBM3); used only to balance a launch")
#: The GPU memory the planner assumes (bytes: the H100's 80 GB) to estimate how many requests fit in a wave.
NOMINAL_MEMORY_BYTES = 80e9
#: Measured wall time over :func:`group_cost_s` for the three H100 grids of the ``hf`` engine (low, high).
ETA_FACTOR = (1.8, 2.5)


def nominal_batch_limit(arch: A.Architecture, n_in: int, n_out: int, max_batch: int,
                        memory_bytes: float = NOMINAL_MEMORY_BYTES, profile: EngineProfile = HF_PROFILE) -> int:
    """Requests of (n_in, n_out) that fit in a wave (at least 1, at most ``max_batch``): the engine's batch rule
    (:func:`energybook.model.batch.batch_limit`) with the free memory of a GPU of ``memory_bytes`` that holds the
    weights, the planner's stand-in for the engine's ``batch_limit``, which needs the GPU.

    Args:
        arch: The model.
        n_in: Prompt tokens per request.
        n_out: Output tokens per request.
        max_batch: The protocol's batch cap (requests).
        memory_bytes: GPU memory (bytes).
        profile: The profile of the engine that will run the sweep
            (:func:`energybook.model.batch.profile_for` of its name).
    """
    free = memory_bytes - arch.num_params * arch.bytes_per_element
    return max(1, BATCH.batch_limit(arch, n_in, n_out, free, profile, max_batch))


def group_cost_s(arch: A.Architecture, g: Group, config: SweepConfig, spec: RL.GpuSpec = NOMINAL_GPU) -> float:
    """Estimated time of one group (seconds): the roofline of its warm-up and its generation at ``spec``, the
    minimum window of every point that is too short alone (measured again on its own) and the cool-downs.

    Args:
        arch: The model.
        g: The group (:func:`energybook.measure.protocol.plan`).
        config: The protocol.
        spec: The GPU the work is priced on.
    """
    prefill = RL.prefill_bound(arch, g.n_in, g.batch, spec).time_s

    def wave(n_out: int) -> float:
        return prefill + RL.decode_bound(arch, g.n_in, n_out, g.batch, spec).time_s

    n_max = max(g.n_outs)
    warm = wave(min(n_max, config.warmup_steps + 1))
    if config.mode == "full":
        return warm + max(config.min_window_s, g.waves * wave(n_max)) + config.cooldown_s
    cost = warm + wave(n_max) + config.cooldown_s
    for n in g.n_outs:
        if wave(n) < config.min_window_s:  # repeated alone, back to back, until the window is long enough
            cost += warm + max(config.min_window_s, wave(n)) + config.cooldown_s
    return cost


@dataclass(frozen=True)
class Eta:
    """The expected wall time of a sweep's remaining groups.

    Attributes:
        points: Points left to measure.
        groups: Groups they make.
        roofline_s: Sum of :func:`group_cost_s` (seconds): a lower bound at the nominal GPU.
        low_s: ``roofline_s`` times the low end of :data:`ETA_FACTOR` (seconds).
        high_s: ``roofline_s`` times the high end (seconds).
    """

    points: int
    groups: int
    roofline_s: float
    low_s: float
    high_s: float

    def text(self) -> str:
        """One line for the terminal."""
        def minutes(s: float) -> str:
            return f"{s / 60:.0f}" if s >= 600 else f"{s / 60:.1f}"

        return (f"{self.points} points in {self.groups} groups: about {minutes(self.low_s)}-{minutes(self.high_s)} "
                f"minutes (roofline {minutes(self.roofline_s)} min at a nominal H100, times {ETA_FACTOR[0]}-"
                f"{ETA_FACTOR[1]} as the hf engine's grids took)")


def eta(arch: A.Architecture, groups: list[Group], config: SweepConfig) -> Eta:
    """The ETA of ``groups`` of ``arch`` under ``config`` (module docstring)."""
    roof = sum(group_cost_s(arch, g, config) for g in groups)
    points = sum(len(g.n_outs) for g in groups)
    return Eta(points, len(groups), roof, roof * ETA_FACTOR[0], roof * ETA_FACTOR[1])
