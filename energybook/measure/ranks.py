"""Where a process stands in a torchrun launch (:mod:`energybook.measure.launch`): torchrun's environment
(:class:`Ranks`), the command line that reruns a launch, the GPUs torch sees here, and the simulated meter of a
rank's pretend device (tests on the CPU).

Every name here is also importable from :mod:`energybook.measure.launch`.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from energybook.measure.meter import SimulatedMeter

#: Most ranks a launch (and ``--plan --ranks``) may have.
MAX_RANKS = 4096
#: torchrun's variables: a process with some of them set is in a launch, or misconfigured.
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
_START = ("start the sweep with torchrun (torchrun --standalone --nproc-per-node N -m energybook.cli sweep ...), or "
          "unset RANK, LOCAL_RANK and WORLD_SIZE for a plain sweep")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a torchrun launch (torchrun's environment variables).

    Attributes:
        rank: Global rank, 0 .. world_size - 1 (``RANK``).
        local_rank: Rank on this machine (``LOCAL_RANK``): the GPU it measures on.
        world_size: Ranks in the launch (``WORLD_SIZE``).
        local_world_size: Ranks on this machine (``LOCAL_WORLD_SIZE``).
        nnodes: Machines (``GROUP_WORLD_SIZE``).
        run_id: The rendezvous id (``TORCHELASTIC_RUN_ID``).
        restart: How many times torchrun restarted the group (``TORCHELASTIC_RESTART_COUNT``).
    """

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int = 1
    nnodes: int = 1
    run_id: str = "none"
    restart: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Ranks | None:
        """The launch this process runs in, or None outside torchrun (``RANK``, ``LOCAL_RANK`` or ``WORLD_SIZE``
        unset).

        Raises:
            ValueError: torchrun's variables are not integers, or the rank is not below the world size.
        """
        env = os.environ if env is None else env
        if not any(k in env for k in _TORCHRUN_VARS):
            return None
        missing = [k for k in _TORCHRUN_VARS if k not in env]
        if missing:
            given = [k for k in _TORCHRUN_VARS if k in env]
            raise ValueError(f"{', '.join(given)} set but not {', '.join(missing)} (torchrun sets them all): {_START}")
        try:
            world = int(env["WORLD_SIZE"])
            out = cls(rank=int(env["RANK"]), local_rank=int(env["LOCAL_RANK"]), world_size=world,
                      local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
                      nnodes=int(env.get("GROUP_WORLD_SIZE", 1)), run_id=env.get("TORCHELASTIC_RUN_ID", "none"),
                      restart=int(env.get("TORCHELASTIC_RESTART_COUNT", 0)))
        except ValueError:
            raise ValueError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (torchrun sets them): start the "
                             "sweep with torchrun, or unset them") from None
        if not (0 <= out.rank < world and 0 <= out.local_rank):
            raise ValueError(f"RANK={out.rank} is not a rank of WORLD_SIZE={world}: start the sweep with torchrun")
        if world > MAX_RANKS:
            raise ValueError(f"WORLD_SIZE={world}: a launch has 1..{MAX_RANKS} ranks")
        return out

    def check_rendezvous(self, env: dict[str, str] | None = None) -> None:
        """Refuse a launch of several ranks without torchrun's rendezvous (``MASTER_ADDR``, ``MASTER_PORT``).

        Raises:
            ValueError: naming the missing variables and how to start the launch.
        """
        env = os.environ if env is None else env
        if self.world_size <= 1:
            return
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing:
            raise ValueError(f"RANK={self.rank} of WORLD_SIZE={self.world_size} is set but not {', '.join(missing)} "
                             f"(torchrun sets them): {_START}")
        if not env["MASTER_PORT"].isdigit():
            raise ValueError(f"MASTER_PORT={env['MASTER_PORT']!r} is not a port number: {_START}")

    def device(self, requested: str) -> str:
        """This rank's torch device: ``cuda:LOCAL_RANK`` for ``"cuda"``, ``"cpu"`` for ``"cpu"`` (tests).

        Raises:
            ValueError: ``cuda:N`` with several ranks per machine (each rank has its own GPU), or another device.
        """
        d = str(requested)
        if d.startswith("cpu"):
            return "cpu"
        if d == "cuda":
            return f"cuda:{self.local_rank}"
        if d.startswith("cuda:") and self.local_world_size == 1:
            return d
        if d.startswith("cuda:"):
            raise ValueError(f"--device {d} under torchrun with {self.local_world_size} ranks per machine: each rank "
                             "measures on cuda:LOCAL_RANK; leave --device at cuda and choose the GPUs with "
                             "CUDA_VISIBLE_DEVICES")
        raise ValueError(f"--device {d}: a launch measures on cuda (cuda:LOCAL_RANK per rank), or cpu for tests")


def launch_command(ranks: Ranks, argv: Sequence[str]) -> str:
    """The command line that reruns a launch, for the provenance: torchrun with this launch's shape.

    Args:
        ranks: The launch.
        argv: The arguments after ``energybook`` (``sweep --model ...``).
    """
    shape = ("--standalone" if ranks.nnodes == 1 else f"--nnodes {ranks.nnodes} --rdzv-backend c10d "
             "--rdzv-endpoint HOST:PORT")
    return (f"torchrun {shape} --nproc-per-node {ranks.local_world_size} -m energybook.cli "
            + " ".join(shlex.quote(a) for a in argv))


def local_gpu_count() -> int:
    """The CUDA devices torch sees here (1 without torch or a GPU): ``--plan``'s default number of ranks."""
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no torch, or a broken CUDA install
        return 1


class RankSimulatedMeter(SimulatedMeter):
    """The simulated meter of a rank's pretend device (tests on the CPU): constant power times wall time,
    UUID ``simulated-<local_rank>``, so that rows show which rank measured them.

    Args:
        local_rank: The rank on its machine.
        power_w: The constant power to report (watts).
    """

    def __init__(self, local_rank: int, power_w: float = 100.0):
        super().__init__(power_w=power_w)
        self.uuid = f"simulated-{int(local_rank)}"

    def device_info(self) -> dict:
        """The simulated meter's facts, with this pretend device's UUID."""
        return dict(super().device_info(), gpu_uuid=self.uuid)
