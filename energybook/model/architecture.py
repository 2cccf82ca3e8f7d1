"""Model architectures read from Hugging Face configurations.

An :class:`Architecture` holds the handful of numbers that set the cost of a Transformer
decoder: widths, layer and head counts, the FFN kind, the vocabulary and the dtype. It is
built from a ``config.json`` (a path or a dict) of any registered family, or by name from the
13 configurations shipped in the package data (``energybook/resources/architectures/``).
The families of the SweetSpot study
(llama, granite, qwen2, gemma2, opt, falcon) and mistral, phi3, gemma, starcoder2 and gpt_neox
are registered here from their records (:mod:`energybook.model.families`); :func:`register_family` adds others,
:func:`families` lists them, :func:`family` gives one's record.

Configuration values are type-checked: a string ``"false"`` for a boolean key, a float or a
string for an integer key, or a JSON list instead of an object raise ``ValueError`` naming the
key (or the file).

Used in :doc:`/book/counting`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from energybook import resources
from energybook.model.families import RECORDS, Family, Parser

logger = logging.getLogger(__name__)


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1}
POSITIONS = ("rope", "alibi", "learned")


@dataclass(frozen=True)
class Architecture:
    """The cost-relevant shape of a decoder-only Transformer.

    Attributes:
        name: Short label, e.g. ``"Llama-3.2-1B"``.
        model_type: Hugging Face ``model_type`` (``llama``, ``opt``, ...).
        hidden_size: Model width d.
        num_layers: Decoder layers L.
        num_heads: Query heads H.
        num_kv_heads: Key/value heads K (K = H is multi-head attention, K < H is GQA).
        head_dim: Width h of one head (not always hidden_size / num_heads).
        intermediate_size: Inner FFN width I.
        ffn_kind: ``"gated"`` (three matrices: gate, up, down) or ``"plain"`` (two: up, down).
        vocab_size: Vocabulary rows V of the embedding and the LM head.
        tie_word_embeddings: Whether the LM head shares the embedding matrix.
        dtype: Storage dtype of weights and KV cache (``bfloat16``, ``float16``, ``float32``).
        qkv_bias: Biases on the q, k and v projections.
        o_bias: Bias on the attention output projection.
        mlp_bias: Biases on the FFN matrices.
        norm: ``"rms"`` (weight only) or ``"layer"`` (weight and bias).
        norms_per_layer: Normalisation layers per decoder layer (4 for Gemma 2).
        position: ``"rope"``, ``"alibi"`` or ``"learned"``.
        max_position_embeddings: Longest context the configuration declares (tokens).
        sliding_window: Window of the sliding-window layers (tokens), or None.
        sliding_layers: How many layers use the sliding window (Gemma 2: every other one).
    """

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    ffn_kind: str
    vocab_size: int
    tie_word_embeddings: bool = True
    dtype: str = "bfloat16"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm: str = "rms"
    norms_per_layer: int = 2
    position: str = "rope"
    max_position_embeddings: int = 2048
    sliding_window: int | None = None
    sliding_layers: int = 0

    def __post_init__(self) -> None:
        for f in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "vocab_size", "norms_per_layer"):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"architecture {self.name!r}: {f} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"architecture {self.name!r}: num_heads ({self.num_heads}) is not a multiple "
                             f"of num_kv_heads ({self.num_kv_heads})")
        if self.ffn_kind not in ("gated", "plain"):
            raise ValueError(f"architecture {self.name!r}: ffn_kind must be 'gated' or 'plain', got {self.ffn_kind!r}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"architecture {self.name!r}: unknown dtype {self.dtype!r}; "
                             f"use one of {sorted(DTYPE_BYTES)}")
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"architecture {self.name!r}: norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"architecture {self.name!r}: position must be one of {POSITIONS}, got {self.position!r}")
        for f in ("tie_word_embeddings", "qkv_bias", "o_bias", "mlp_bias"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"architecture {self.name!r}: {f} must be True or False, got {getattr(self, f)!r}")
        for f, value in (("max_position_embeddings", self.max_position_embeddings),
                         ("sliding_window", 1 if self.sliding_window is None else self.sliding_window)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"architecture {self.name!r}: {f} must be a positive integer, "
                                 f"got {getattr(self, f)!r}")
        layers = self.sliding_layers
        if not isinstance(layers, int) or isinstance(layers, bool) or not 0 <= layers <= self.num_layers:
            raise ValueError(f"architecture {self.name!r}: sliding_layers must be an integer in 0..num_layers "
                             f"({self.num_layers}), got {layers!r}")
        if layers and self.sliding_window is None:
            raise ValueError(f"architecture {self.name!r}: {layers} sliding layers but no sliding_window")

    # ----- derived values -------------------------------------------------------------
    @property
    def bytes_per_element(self) -> int:
        """Bytes of one weight or KV-cache element in :attr:`dtype`."""
        return DTYPE_BYTES[self.dtype]

    @property
    def is_gqa(self) -> bool:
        """True when several query heads share one key/value head."""
        return self.num_kv_heads < self.num_heads

    @property
    def q_width(self) -> int:
        """Width of all query heads together, H*h."""
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of all key (or value) heads together, K*h."""
        return self.num_kv_heads * self.head_dim

    @property
    def kv_elements_per_token(self) -> int:
        """KV-cache elements one token adds over all layers: 2*L*K*h."""
        return 2 * self.num_layers * self.kv_width

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token adds over all layers."""
        return self.kv_elements_per_token * self.bytes_per_element

    @property
    def attention_params(self) -> int:
        """Parameters of one attention block (projections and their biases)."""
        d, q, kv = self.hidden_size, self.q_width, self.kv_width
        p = d * q + 2 * d * kv + q * d
        if self.qkv_bias:
            p += q + 2 * kv
        if self.o_bias:
            p += d
        return p

    @property
    def ffn_matrices(self) -> int:
        """Number of d x I matrices in one FFN: 3 gated, 2 plain."""
        return 3 if self.ffn_kind == "gated" else 2

    @property
    def ffn_params(self) -> int:
        """Parameters of one FFN block."""
        d, i = self.hidden_size, self.intermediate_size
        p = self.ffn_matrices * d * i
        if self.mlp_bias:
            p += (self.ffn_matrices - 1) * i + d
        return p

    @property
    def norm_params(self) -> int:
        """Parameters of one normalisation layer."""
        return self.hidden_size * (2 if self.norm == "layer" else 1)

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer."""
        return self.attention_params + self.ffn_params + self.norms_per_layer * self.norm_params

    @property
    def embedding_params(self) -> int:
        """Parameters of the token embedding (V*d), plus learned positions for OPT."""
        p = self.vocab_size * self.hidden_size
        if self.position == "learned":
            p += (self.max_position_embeddings + 2) * self.hidden_size
        return p

    @property
    def lm_head_params(self) -> int:
        """Parameters the LM head multiplies by, V*d, tied or not."""
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """Total parameters, tied weights counted once."""
        p = self.embedding_params + self.num_layers * self.layer_params + self.norm_params
        if not self.tie_word_embeddings:
            p += self.lm_head_params
        return p

    def replace(self, **changes: Any) -> Architecture:
        """A copy with some fields changed; unknown fields raise ``ValueError``."""
        _check_fields(changes, self.name)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for provenance records)."""
        return dataclasses.asdict(self)

    # ----- constructors ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Architecture:
        """Build from a dict of :class:`Architecture` field names; unknown names raise."""
        _check_fields(fields, fields.get("name", "?"))
        return cls(**fields)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any] | str | Path, name: str | None = None) -> Architecture:
        """Read the architecture from a Hugging Face configuration.

        Args:
            config: A ``config.json`` as a dict, a path to the file, or a checkpoint directory
                that holds one.
            name: Label for the architecture; defaults to ``_name_or_path`` or the file name.

        Raises:
            ValueError: for a model type outside the registered families (:func:`families`), a missing
                key, a wrongly typed value (``"tie_word_embeddings": "false"``, a float where an integer
                is needed; the key is named), or a file that does not hold a JSON object.
            FileNotFoundError: when the path holds no ``config.json``.
        """
        if not isinstance(config, dict):
            path = Path(config)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"no Hugging Face configuration at {path}: give a config.json "
                                        "or a checkpoint directory that holds one")
            try:
                cfg = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid JSON ({exc}); is it a config.json?") from None
            if not isinstance(cfg, dict):
                raise ValueError(f"{path} holds a JSON {type(cfg).__name__}, not an object: a config.json "
                                 "must be an object of keys and values")
            name = name or path.stem if path.stem != "config" else (name or path.parent.name)
        else:
            cfg = config
        name = name or str(cfg.get("_name_or_path") or cfg.get("model_type") or "model")
        model_type = cfg.get("model_type")
        parser = _FAMILIES.get(model_type) if isinstance(model_type, str) else None
        if parser is None:
            raise ValueError(f"unknown model_type {model_type!r} in configuration {name!r}; "
                             f"energybook reads {', '.join(families())} (register_family adds others)")
        try:
            fields = parser(cfg)
        except KeyError as exc:
            raise ValueError(f"configuration {name!r} ({model_type}) lacks the key {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ValueError(f"configuration {name!r} ({model_type}): {exc}") from None
        if not isinstance(fields, dict):
            raise ValueError(f"the parser of family {model_type!r} returned {type(fields).__name__}, "
                             "not a dict of Architecture fields")
        reserved = sorted({"name", "model_type"} & set(fields))
        if reserved:
            raise ValueError(f"the parser of family {model_type!r} returned {reserved}: these are set from "
                             "the configuration, leave them out")
        _check_fields(fields, name)
        if "dtype" not in fields:
            key = "torch_dtype" if cfg.get("torch_dtype") else "dtype"
            dtype = cfg.get(key) or "float32"
            if not isinstance(dtype, str):
                raise ValueError(f"configuration {name!r} ({model_type}): key {key!r} must be a dtype name "
                                 f"such as \"bfloat16\", got {dtype!r}")
            fields = dict(fields, dtype=dtype.replace("torch.", ""))
        return cls(name=name, model_type=model_type, **fields)


def _check_fields(fields: dict[str, Any], name: str) -> None:
    known = {f.name for f in dataclasses.fields(Architecture)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown architecture field(s) {unknown} for {name!r}; known fields: {sorted(known)}")


# ----- the family registry ------------------------------------------------------------
_FAMILIES: dict[str, Parser] = {}
#: The registered families' records (:class:`~energybook.model.families.Family`): parser and weight names.
_RECORDS: dict[str, Family] = {}


def register_family(model_type: str, parser: Parser | Family) -> Parser | Family:
    """Teach :meth:`Architecture.from_hf_config` a Hugging Face ``model_type``.

    Args:
        model_type: The configuration's ``model_type`` (``"mixtral"``, say); an existing one is replaced.
        parser: ``parser(config_dict)`` returns the :class:`Architecture` fields of that configuration
            (``hidden_size``, ``num_layers``, ...), all but ``name`` and ``model_type``. It may raise
            ``KeyError`` for a missing key (reported as such) or ``ValueError`` for a bad value. Or a
            :class:`~energybook.model.families.Family` record: its parser, and the names of its weights that the
            lean engine packs (:func:`family`).

    Returns:
        The parser (or record), unchanged.

    Raises:
        ValueError: for an empty ``model_type`` or a parser that is not callable.
    """
    if not isinstance(model_type, str) or not model_type.strip():
        raise ValueError(f"model_type must be a non-empty string, got {model_type!r}")
    record = parser if isinstance(parser, Family) else Family(model_type, parser) if callable(parser) else None
    if record is None or not callable(record.parse):
        raise ValueError(f"the parser of family {model_type!r} must be callable, got {parser!r}")
    if model_type in _FAMILIES and _FAMILIES[model_type] is not record.parse:
        logger.info("family %r: parser replaced", model_type)
    _FAMILIES[model_type] = record.parse
    _RECORDS[model_type] = record
    return parser


def family(model_type: str) -> Family:
    """The record of a registered family (a bare parser's record names no weights).

    Raises:
        ValueError: for a ``model_type`` outside :func:`families`.
    """
    if model_type not in _FAMILIES:
        raise ValueError(f"unknown model_type {model_type!r}; energybook reads {', '.join(families())}")
    record = _RECORDS.get(model_type)
    return record if record is not None and record.parse is _FAMILIES[model_type] else Family(model_type,
                                                                                                _FAMILIES[model_type])


def families() -> tuple[str, ...]:
    """The ``model_type`` values :meth:`Architecture.from_hf_config` reads, in registration order."""
    return tuple(_FAMILIES)


def __getattr__(name: str) -> Any:
    if name == "FAMILIES":  # the old constant: now the live registry
        return families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _record in RECORDS:
    register_family(_record.model_type, _record)


def available() -> list[str]:
    """Names of the architectures shipped in the package data (``energybook/resources/architectures/``)."""
    names = sorted(p.stem for p in resources.path("architectures").glob("*.json"))
    if not names:
        raise FileNotFoundError("no model configurations found in the package data: the installation is "
                                "incomplete; reinstall energybook")
    return names


def hf_config(name: str) -> dict[str, Any]:
    """The shipped Hugging Face configuration of a study model, as a dict."""
    path = resources.path("architectures") / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown model {name!r}; shipped models: {', '.join(available())}, "
                         "or give a config.json path or checkpoint directory")
    return json.loads(path.read_text())


def load(name_or_path: str | Path) -> Architecture:
    """An architecture by shipped name (``"Llama-3.2-1B"``) or from a config.json path.

    Raises:
        ValueError: naming the shipped models when the name is unknown.
    """
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_dir():
        return Architecture.from_hf_config(path)
    arch = Architecture.from_hf_config(hf_config(str(name_or_path)), name=str(name_or_path))
    served = SERVED_DTYPE.get(arch.name)
    return dataclasses.replace(arch, dtype=served) if served else arch


#: The dtype a shipped study model is served in where its configuration names another: Gemma 2's configurations
#: say float32 (the checkpoints' storage), and a server runs it in bfloat16, as every other study model's
#: configuration says. A config.json path keeps its own dtype.
SERVED_DTYPE = {"Gemma-2-2B": "bfloat16", "Gemma-2-9B": "bfloat16"}


def study_models() -> list[Architecture]:
    """The 13 architectures of the SweetSpot study, in the order of its tables."""
    return [load(n) for n in STUDY_ORDER]


STUDY_ORDER = ["Llama-3.2-1B", "OPT-1.3B", "Qwen2-1.5B", "Gemma-2-2B", "OPT-2.7B", "Llama-3.2-3B",
               "Granite-3B-Code-Base", "OPT-6.7B", "Qwen2-7B", "Falcon-RW-7B", "Granite-8B-Code-Base",
               "Llama-3.1-8B", "Gemma-2-9B"]

#: The study's labels (its tables' ``llm`` column) for our shipped names.
PAPER_LABELS = dict(zip(STUDY_ORDER, [
    "Llama 3.2 1B", "OPT 1.3B", "Qwen2 1.5B", "Gemma 2 2B", "OPT 2.7B", "Llama 3.2 3B", "Granite 3B",
    "OPT 6.7B", "Qwen2 7B", "Falcon-RW 7.5B", "Granite 8B", "Llama 3.1 8B", "Gemma 2 9B"]))
