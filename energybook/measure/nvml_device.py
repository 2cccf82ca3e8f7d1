"""The meter's GPU: NVML's handle of the engine's device, opened by UUID, and the facts read from it.

NVML numbers every GPU of the host whatever ``CUDA_VISIBLE_DEVICES`` says, so NVML's index 0 is not
CUDA's ``cuda:0`` when ``CUDA_VISIBLE_DEVICES=1``. :func:`open_by_uuid` opens a GPU (or MIG device)
by its UUID in any of its forms; :func:`visible_devices` and :func:`cuda_ordinal` read what CUDA
calls a device. :class:`energybook.measure.meter.Meter` uses them; nothing here samples.

Without NVML, a GPU or the ``nvidia-ml-py`` package, :class:`MeterUnavailable` (a ``RuntimeError``)
says what to do.

Used in :doc:`/book/instruments`.
"""

from __future__ import annotations

import logging
import math
import os

logger = logging.getLogger(__name__)

#: Clock-event (throttle) reasons: pynvml's constant suffix -> the name recorded in ``throttle_reasons``.
REASONS = (("GpuIdle", "gpu_idle"), ("ApplicationsClocksSetting", "applications_clocks_setting"),
           ("SwPowerCap", "sw_power_cap"), ("HwSlowdown", "hw_slowdown"), ("SyncBoost", "sync_boost"),
           ("SwThermalSlowdown", "sw_thermal_slowdown"), ("HwThermalSlowdown", "hw_thermal_slowdown"),
           ("HwPowerBrakeSlowdown", "hw_power_brake_slowdown"), ("DisplayClockSetting", "display_clock_setting"),
           ("BoardLimit", "board_limit"), ("Reliability", "reliability"))


class MeterUnavailable(RuntimeError):
    """No energy meter: no NVIDIA GPU, no NVML driver library, no ``nvidia-ml-py``, or not the engine's GPU."""


def pynvml_module():
    """NVIDIA's NVML bindings (``nvidia-ml-py``).

    Raises:
        MeterUnavailable: the package is not installed.
    """
    try:
        import pynvml  # nvidia-ml-py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MeterUnavailable("the meter needs NVIDIA's NVML bindings: pip install nvidia-ml-py "
                               '(or pip install -e ".[gpu]" in a checkout of energybook)') from exc
    return pynvml


def torch_cuda():
    """torch, when it is installed and sees a CUDA device; otherwise None."""
    try:
        import torch
    except ImportError:
        return None
    try:
        return torch if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken CUDA install counts as none
        return None


def text(x) -> str:
    """An NVML string (bytes in older bindings) as ``str``."""
    return x.decode() if isinstance(x, bytes) else str(x)


def bare_uuid(uuid: str) -> str:
    """A UUID without its ``GPU-``/``MIG-`` prefix, lower case (torch's form)."""
    u = str(uuid).strip().lower()
    for prefix in ("gpu-", "mig-"):
        if u.startswith(prefix):
            return u[len(prefix):]
    return u


def is_not_supported(nv, exc: Exception) -> bool:
    """Whether ``exc`` is NVML's "not supported" (or "function not found")."""
    kinds = tuple(k for k in (getattr(nv, "NVMLError_NotSupported", None), getattr(nv, "NVMLError_FunctionNotFound",
                                                                                     None)) if isinstance(k, type))
    return bool(kinds) and isinstance(exc, kinds)


def describe(what: str, exc: Exception) -> str:
    """One line for a failed NVML read."""
    return f"NVML {what} read failed ({type(exc).__name__}: {exc})"


def reason_bits(nv) -> list[tuple[int, str]]:
    """(bit, name) of every clock-event reason pynvml defines (``nvmlClocksEventReason*``, or the older
    ``nvmlClocksThrottleReason*``)."""
    bits = []
    for suffix, name in REASONS:
        for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
            value = getattr(nv, prefix + suffix, None)
            if type(value) is int and value:
                bits.append((value, name))
                break
    return bits


def power_cap_w(nv, handle) -> float:
    """The most power the GPU may draw (watts): the larger of its enforced limit and its highest settable
    limit (an administrator may raise the limit during a run); NaN when NVML says neither."""
    found = []
    try:
        found.append(nv.nvmlDeviceGetEnforcedPowerLimit(handle))
    except Exception:  # noqa: BLE001 - optional
        pass
    try:
        found.append(nv.nvmlDeviceGetPowerManagementLimitConstraints(handle)[1])
    except Exception:  # noqa: BLE001 - optional
        pass
    watts = [v / 1000.0 for v in found if type(v) in (int, float) and math.isfinite(v) and v > 0]
    return max(watts) if watts else float("nan")


def visible_devices() -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` as CUDA reads it (None when unset): indices or UUIDs, up to the first invalid entry."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    items = []
    for part in value.split(","):
        p = part.strip()
        if p.isdigit() or p.upper().startswith(("GPU-", "MIG-")):
            items.append(p)
        else:  # CUDA ignores this entry and every one after it
            break
    return items


def open_by_uuid(nv, uuid: str):
    """The NVML handle of a GPU (or MIG device) by UUID: full, without its prefix (torch's form), or a unique prefix.

    Raises:
        MeterUnavailable: no GPU has that UUID.
    """
    u = str(uuid).strip()
    candidates = [u] if u.upper().startswith(("GPU-", "MIG-")) else [f"GPU-{u}", f"MIG-{u}"]
    last = None
    for c in candidates:
        try:
            return nv.nvmlDeviceGetHandleByUUID(c)
        except Exception as exc:  # noqa: BLE001 - NVMLError_NotFound and the like
            last = exc
    try:  # CUDA_VISIBLE_DEVICES may name a GPU by a unique prefix of its UUID
        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        found = [h for h in handles if any(text(nv.nvmlDeviceGetUUID(h)).lower().startswith(c.lower())
                                           for c in candidates)]
    except Exception:  # noqa: BLE001
        found = []
    if len(found) == 1:
        return found[0]
    raise MeterUnavailable(f"NVML has no GPU with UUID {u} ({last})")


def cuda_ordinal(device) -> int | None:
    """The CUDA ordinal of ``"cuda"`` (None: the current device), ``"cuda:N"``, a torch device or an int.

    Raises:
        ValueError: not a CUDA device.
    """
    if isinstance(device, int):
        return device
    s = str(device).strip()
    if s == "cuda":
        return None
    if s.startswith("cuda:") and s[5:].isdigit():
        return int(s[5:])
    raise ValueError(f"the meter reads a CUDA device: give 'cuda' or 'cuda:N', not {device!r}")


def warn_if_orders_differ(nv, index: int, gpu_uuid: str) -> None:
    """Warn when CUDA's device ``index`` may not be NVML's: GPUs of several models and no ``CUDA_DEVICE_ORDER``."""
    if os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
        return
    try:
        names = {text(nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i))) for i in range(nv.nvmlDeviceGetCount())}
    except Exception:  # noqa: BLE001
        names = set()
    if len(names) > 1:
        logger.warning("GPUs of several models (%s) and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA's device "
                       "%d may not be NVML's; the meter reads %s", ", ".join(sorted(names)), index, gpu_uuid)
