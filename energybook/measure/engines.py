"""The two kinds of engine a sweep drives, and their one registry.

* A :class:`WaveEngine` generates waves in this process (energybook's ``torch`` engine): the sweep
  marks the meter's windows itself, at every checkpoint of a generation.
* A :class:`CommandEngine` runs a whole grid point as an external command (TensorRT-LLM's
  ``trtllm-bench``, vLLM's ``vllm bench``): the meter measures the command's window.

:func:`register_engine` adds an engine under a name; :func:`make_engine` builds one by name; both kinds
raise :class:`EngineUnavailable` when they cannot run here.

Engines outside this module are plugins: a function that calls :func:`register_engine`. The registry
calls its plugins once, on first use, in order: those in :data:`PLUGINS` (the external engines,
TensorRT-LLM's and vLLM's), then those named by the ``energybook.engines`` entry points of installed packages.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


class EngineUnavailable(RuntimeError):
    """The engine cannot run here: its package or command is missing, or it needs a device that is absent."""


@runtime_checkable
class WaveEngine(Protocol):
    """An engine that generates waves of identical requests in this process."""

    name: str
    weights: str
    settings: dict

    def batch_limit(self, n_in: int, n_out: int) -> int:
        """Largest batch that fits in device memory at these lengths (requests)."""

    def check_lengths(self, n_in: int, n_out: int) -> None:
        """Raise ``ValueError`` when n_in + n_out exceeds what the model can serve."""

    def generate(self, n_in: int, n_out: int, batch: int, checkpoints: list[int] | None = None,
                 clock: Callable[[], float] | None = None) -> Any:
        """Generate one wave; returns an object with ``times`` (start, prefill_end, end, checkpoints)."""


@runtime_checkable
class CommandEngine(Protocol):
    """An engine that runs one whole grid point as an external benchmark command, under the meter."""

    name: str

    def describe(self) -> dict:
        """Name, version and settings, for the sidecar."""

    def build(self, meter) -> Any:
        """Prepare once before the first point (build an engine, say); may return None."""

    def run_point(self, meter, n_in: int, n_out: int, n_req: int) -> Any:
        """Measure one point; returns a record with ``row()`` (columns of the results file)."""


def is_command_engine(engine: Any) -> bool:
    """Whether ``engine`` runs points as commands (rather than waves in this process)."""
    return isinstance(engine, CommandEngine) and not isinstance(engine, WaveEngine)


@dataclass(frozen=True)
class EngineSpec:
    """A registered engine.

    Attributes:
        name: Its name (``--engine``).
        kind: ``"wave"`` or ``"command"``.
        target: The engine class or factory, or its ``"module:attribute"`` path (imported on first use, like a
            packaging entry point), called as ``target(model, workspace_dir=..., **kwargs)``.
        tested: Whether this repository's data were measured with it on a real GPU.
        summary: One line for ``--help``.
        settings: Its settings dataclass (:mod:`energybook.measure.settings`), or its ``"module:attribute"``;
            ``None`` for an engine without settings.
    """

    name: str
    kind: str
    target: str | Callable[..., Any]
    tested: bool
    summary: str
    settings: str | type | None = None

    def settings_class(self) -> type | None:
        """The engine's settings dataclass (imported on first use), or None."""
        return _resolve(self.settings) if self.settings is not None else None

    def default_settings(self) -> Any:
        """An instance of its settings with every default, or None."""
        cls = self.settings_class()
        return cls() if cls is not None else None

    def load(self) -> Callable[..., Any]:
        """The engine's class or factory."""
        return _resolve(self.target)


def _resolve(target: str | Any) -> Any:
    """``"module:attribute"`` imported, or ``target`` itself."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


logger = logging.getLogger(__name__)

_REGISTRY: dict[str, EngineSpec] = {}
PLUGINS = ("energybook.measure.external.trtllm:register", "energybook.measure.external.vllm:register")
"""``"module:function"`` of the plugins: each function registers its engines with :func:`register_engine`."""
ENTRY_POINTS = "energybook.engines"
"""Entry-point group of further plugins (a package's ``[project.entry-points."energybook.engines"]``, same form)."""
_plugins_loaded = False


def load_plugins() -> None:
    """Call the plugins once (:data:`PLUGINS`, then the :data:`ENTRY_POINTS`); they register their engines.

    A plugin that fails to load is left out with a warning naming it and the error.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # first: a plugin's own register_engine call comes back here
    names = list(PLUGINS)
    try:
        names += [ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)]
    except Exception as exc:  # noqa: BLE001 - broken package metadata must not stop the built-in engines
        logger.warning("could not read the %s entry points: %s", ENTRY_POINTS, exc)
    for name in names:
        module, _, function = name.partition(":")
        try:
            getattr(importlib.import_module(module), function or "register")()
        except Exception as exc:  # noqa: BLE001
            logger.warning("engine plugin %s could not be loaded, its engines are left out: %s", name, exc)


def register_engine(name: str, kind: str, target: str | Callable[..., Any], tested: bool = False,
                    summary: str = "", settings: str | type | None = None) -> EngineSpec:
    """Add an engine to the registry (an existing name is replaced).

    Args:
        name: The name ``--engine`` takes.
        kind: ``"wave"`` (:class:`WaveEngine`) or ``"command"`` (:class:`CommandEngine`).
        target: A class or factory ``target(model, workspace_dir=..., **kwargs)``, or its ``"module:attribute"``.
        tested: Whether it produced this repository's data on a real GPU.
        summary: One line for ``--help``.
        settings: Its frozen settings dataclass, or its ``"module:attribute"``: each field a keyword of
            ``target``, declared with :func:`energybook.measure.settings.option` (``energybook sweep`` gets a
            flag per field, and the sidecar records every field).
    """
    load_plugins()  # so that an engine registered here replaces a plugin's of the same name, not the reverse
    return _add(name, kind, target, tested, summary, settings)


def _add(name: str, kind: str, target: str | Callable[..., Any], tested: bool, summary: str,
         settings: str | type | None = None) -> EngineSpec:
    if kind not in ("wave", "command"):
        raise ValueError(f"engine kind must be 'wave' or 'command', got {kind!r}")
    spec = EngineSpec(name, kind, target, tested, summary, settings)
    _REGISTRY[name] = spec
    return spec


def engine_names() -> tuple[str, ...]:
    """Names of the registered engines."""
    load_plugins()
    return tuple(_REGISTRY)


def get_engine(name: str) -> EngineSpec:
    """The registered engine of this name; ``ValueError`` naming the known ones otherwise."""
    load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; use one of {', '.join(_REGISTRY)}") from None


def settings_classes() -> dict[str, type]:
    """Every registered engine's settings dataclass, by engine name (engines without settings left out)."""
    load_plugins()
    out = {}
    for name, spec in _REGISTRY.items():
        try:
            cls = spec.settings_class()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the others' flags
            logger.warning("engine %s: its settings could not be loaded, its flags are left out: %s", name, exc)
            continue
        if cls is not None:
            out[name] = cls
    return out


def make_engine(name: str, model: str | Path, workspace_dir: str | Path | None = None, settings: Any = None,
                wave: dict[str, Any] | None = None, **kwargs: Any):
    """Build the engine ``name`` for ``model`` from its settings, which it keeps as ``engine_settings``.

    Wave engines take ``(model, **fields, **wave, **kwargs)``; command engines ``(model, workspace_dir,
    **fields, **kwargs)``.

    Args:
        name: A registered engine.
        model: What the engine takes as its model.
        workspace_dir: A command engine's folder.
        settings: An instance of the engine's settings class (default: its defaults).
        wave: What a sweep decides for a wave engine (device, batch cap, seed, dummy data); ignored for a
            command engine, whose command decides them.
        **kwargs: Further constructor arguments.

    Raises:
        ValueError: for an unknown engine name, or settings of another class.
        EngineUnavailable: when the engine cannot run here.
    """
    spec = get_engine(name)
    cls = spec.settings_class()
    if settings is None and cls is not None:
        settings = cls()
    if settings is not None:
        if cls is None or type(settings) is not cls:
            raise ValueError(f"the {name} engine takes {cls.__name__ if cls else 'no settings'}, got "
                             f"{type(settings).__name__}: build them with energybook.engine_settings({name!r}, ...)")
        from energybook.measure.settings import check

        check(settings)
        kwargs = {**{f: getattr(settings, f) for f in settings.__dataclass_fields__}, **kwargs}
    factory = spec.load()
    if spec.kind == "wave":
        engine = factory(model, **(wave or {}), **kwargs)
    else:
        engine = factory(str(model), workspace_dir, **kwargs)
    with contextlib.suppress(AttributeError):  # a factory's object may refuse new attributes
        engine.engine_settings = settings
    return engine


# The engines of this package that load on first use; the external engines are plugins (PLUGINS).
_add("torch", "wave", "energybook.measure.torch_engine:TorchEngine", True,
     "energybook's PyTorch engine (in-process, CUDA graphs)", "energybook.measure.torch_engine:HfSettings")
_add("hf", "wave", "energybook.measure.torch_engine:TorchEngine", True,
     "the torch engine under its descriptive name: transformers modules, every registered family",
     "energybook.measure.torch_engine:HfSettings")
_add("lean", "wave", "energybook.measure.lean_engine:LeanEngine", False,
     "gpt-fast-style decoder for every registered family (fused weights, static KV cache, compiled blocks, CUDA "
     "graphs per bucket); checked on H200s, no data of this repository yet",
     "energybook.measure.lean.settings:LeanSettings")
