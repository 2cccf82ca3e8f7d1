"""Engine settings as data: one frozen dataclass per engine, its fields the engine's options.

Each registered engine (:func:`energybook.measure.engines.register_engine`) names its settings class. A
sweep's :class:`~energybook.measure.protocol.SweepConfig` holds an instance (``engine_settings``); the
engine is built from its fields (:func:`energybook.measure.runner.build_engine`); the sidecar records
every field (``engine_settings``); and ``energybook sweep`` has one flag per field, generated here
(:func:`add_flags`, :func:`from_flags`).

A field is declared with :func:`option`, which carries its help text, its flag and, for text, its choices::

    @dataclass(frozen=True)
    class MySettings:
        memory_fraction: float = option(0.92, "share of free GPU memory the KV cache may take")

Field names are the engine constructor's keyword arguments, so ``Engine(model, **asdict(settings))``
builds it.

Used in :doc:`/book/reproduce`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from typing import Any

#: Torch dtype names an engine's ``dtype`` setting takes.
DTYPES = ("float32", "float16", "bfloat16")
#: The command line's words for a dtype (``--dtype auto|bf16|fp16|fp32``) -> the setting's value; ``auto`` is None,
#: the model configuration's dtype, which a GPU without bf16 runs in fp16
#: (:func:`energybook.measure.gpu_support.choose_dtype`).
DTYPE_WORDS = {"auto": None, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
#: Words a text field takes on the command line besides its choices, by its choices (every field whose choices are
#: :data:`DTYPES` takes :data:`DTYPE_WORDS`), with a note for ``--help``.
ALIASES: dict[tuple, tuple[dict[str, Any], str]] = {
    DTYPES: (DTYPE_WORDS, "auto (as none): the configuration's, fp16 on a GPU without bf16; bf16, fp16, fp32: "
                          "short names"),
}
#: Words the command line takes for a switch that is on, off, or left to the engine.
SWITCH = {"on": True, "off": False, "auto": "auto"}


def option(default: Any, help: str, *, flag: str | None = None, choices: Iterable[Any] | None = None,
           low: float | None = None, high: float | None = None) -> Any:
    """A settings field: its default, one line of help, and optionally its flag, choices and range.

    Args:
        default: The engine's default.
        help: One line for ``--help`` (units in it).
        flag: The command-line flag (default ``--`` plus the name with dashes).
        choices: The values a text field takes (``None`` is always allowed where the default is ``None``).
        low: Smallest allowed number (inclusive).
        high: Largest allowed number (inclusive).
    """
    meta = dict(help=help, flag=flag, choices=tuple(choices) if choices is not None else None, low=low, high=high)
    return dataclasses.field(default=default, metadata=meta)


def is_settings(obj: Any) -> bool:
    """Whether ``obj`` is an instance of a settings dataclass."""
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def to_record(settings: Any) -> dict[str, Any]:
    """Every field, in JSON types, with the class's name under ``"settings"``."""
    rec: dict[str, Any] = {"settings": type(settings).__name__}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        rec[f.name] = list(value) if isinstance(value, tuple) else value
    return rec


def check(settings: Any) -> Any:
    """Check every field's type, choices and range; returns ``settings``.

    Raises:
        ValueError: naming the field, its value and what it takes.
    """
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        _check_value(type(settings).__name__, f, hints[f.name], value)
    return settings


def _allowed(tp: Any) -> tuple[type, ...]:
    """The types a field annotated ``tp`` takes (a union's members; ``tuple`` for ``tuple[...]``)."""
    if typing.get_origin(tp) is tuple:
        return (tuple,)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(tp) for t in _allowed(a))
    return (tp,) if isinstance(tp, type) else ()


def _check_value(owner: str, f: dataclasses.Field, tp: Any, value: Any, where: str | None = None) -> None:
    meta = f.metadata
    where = where or f"{owner}.{f.name}"
    if value is None:
        if type(None) not in _allowed(tp):
            raise ValueError(f"{where} must be set, got None")
        return
    allowed = _allowed(tp)
    ok = any(isinstance(value, a) and not (a in (int, float) and isinstance(value, bool) and bool not in allowed)
             for a in allowed)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        names = " or ".join(a.__name__ for a in allowed)
        raise ValueError(f"{where} must be {names}, got {value!r}")
    if meta.get("choices") and isinstance(value, str) and value not in meta["choices"]:
        raise ValueError(f"{where} must be one of {list(meta['choices'])}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        if meta.get("low") is not None and value < meta["low"]:
            raise ValueError(f"{where} must be at least {meta['low']}, got {value!r}")
        if meta.get("high") is not None and value > meta["high"]:
            raise ValueError(f"{where} must be at most {meta['high']}, got {value!r}")


# -- the command line ----------------------------------------------------------------------------------------


def flag_name(f: dataclasses.Field) -> str:
    """A field's command-line flag."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _dest(flag: str) -> str:
    return "setting_" + flag.lstrip("-").replace("-", "_")


def _aliases(f: dataclasses.Field) -> dict[str, Any]:
    """The words a field takes on the command line besides its choices (:data:`ALIASES`)."""
    return ALIASES.get(f.metadata.get("choices") or (), ({}, ""))[0]


def parse_text(owner: str, f: dataclasses.Field, tp: Any, text: str) -> Any:
    """A flag's text as the field's value: numbers, ``on``/``off``/``auto`` switches, ``none``, a field's
    :data:`ALIASES` (``--dtype bf16``), text."""
    allowed = _allowed(tp)
    word = text.strip().lower()
    if word in _aliases(f):
        return _aliases(f)[word]
    if word == "none" and type(None) in allowed:
        return None
    if bool in allowed and word in SWITCH and (word != "auto" or str in allowed):
        return SWITCH[word]
    for kind in (int, float):
        if kind in allowed:
            try:
                return kind(text)
            except ValueError:
                pass
    if str in allowed and (not f.metadata.get("choices") or text in f.metadata["choices"]):
        return text
    raise ValueError(f"{flag_name(f)} ({owner}) takes {_takes(f, tp)}, got {text!r}")


def _takes(f: dataclasses.Field, tp: Any) -> str:
    allowed = _allowed(tp)
    words = []
    if bool in allowed:
        words.append("on|off" + ("|auto" if str in allowed else ""))
    words += [a.__name__.upper() for a in allowed if a in (int, float)]
    if str in allowed and bool not in allowed:
        choices = [*_aliases(f), *f.metadata["choices"]] if f.metadata.get("choices") else []
        words.append("|".join(map(str, choices)) if choices else "TEXT")
    if type(None) in allowed:
        words.append("none")
    return " or ".join(words)


def add_flags(parser: argparse._ActionsContainer, classes: dict[str, type]) -> None:
    """One flag per field of the settings ``classes`` (engine name -> class); a flag shared by several engines
    once, its help naming them. Every flag defaults to ``None``: the engine's own default."""
    seen: dict[str, tuple[dataclasses.Field, Any, dict[str, str]]] = {}
    for engine, cls in classes.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            entry = seen.setdefault(flag_name(f), (f, hints[f.name], {}))
            entry[2][engine] = _word(f.default)
    for flag, (f, tp, defaults) in seen.items():
        if len(set(defaults.values())) == 1:
            said = f"{', '.join(defaults)}; default {next(iter(defaults.values()))}"
        else:
            said = "default " + ", ".join(f"{e} {d}" for e, d in defaults.items())
        note = ALIASES.get(f.metadata.get("choices") or (), ({}, ""))[1]
        parser.add_argument(flag, dest=_dest(flag), default=None, metavar=_takes(f, tp).replace(" or ", "|"),
                            help=f"{f.metadata.get('help', '')}{'; ' + note if note else ''} ({said})")


def _word(value: Any) -> str:
    """A default as the command line writes it."""
    if value is None:
        return "none"
    if isinstance(value, bool) or value == "auto":
        return next(k for k, v in SWITCH.items() if v == value and type(v) is type(value))
    return str(value)


def from_flags(args: argparse.Namespace, engine: str, cls: type | None, classes: dict[str, type]) -> Any:
    """The settings of ``engine`` (class ``cls``) with the flags given on the command line.

    Raises:
        ValueError: a flag of another engine's settings, or a value its field does not take.
    """
    flags = {flag_name(f) for c in classes.values() for f in dataclasses.fields(c)}
    given = {flag: getattr(args, _dest(flag)) for flag in flags if getattr(args, _dest(flag), None) is not None}
    if cls is None:
        if given:
            raise ValueError(f"--engine {engine} has no settings: {', '.join(sorted(given))} belong to other engines")
        return None
    hints = typing.get_type_hints(cls)
    mine = {flag_name(f): f for f in dataclasses.fields(cls)}
    foreign = sorted(set(given) - set(mine))
    if foreign:
        owners = {flag: [e for e, c in classes.items() if flag in map(flag_name, dataclasses.fields(c))]
                  for flag in foreign}
        said = "; ".join(f"{flag} is a setting of {', '.join(owners[flag])}" for flag in foreign)
        raise ValueError(f"{said}, not of --engine {engine}, which takes {', '.join(mine) or 'no settings'}")
    values = {}
    for flag, text in given.items():
        f = mine[flag]
        values[f.name] = parse_text(cls.__name__, f, hints[f.name], text)
        _check_value(cls.__name__, f, hints[f.name], values[f.name], where=flag)
    return check(cls(**values))


def from_record(cls: type, record: dict[str, Any]) -> Any:
    """The settings a sidecar's ``engine_settings`` records (unknown keys, and the class name, ignored)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for k, v in record.items():
        if k in names:
            values[k] = tuple(v) if isinstance(v, list) and tuple in _allowed(hints[k]) else v
    return check(cls(**values))
