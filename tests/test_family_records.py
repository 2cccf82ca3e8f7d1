"""One record per family is the only place a family's configuration keys are read (#21 item 1)."""

from __future__ import annotations

import re
from pathlib import Path

import energybook
from energybook.model import architecture as A

PACKAGE = Path(energybook.__file__).parent
#: A configuration key read: ``cfg.get("...")``, ``cfg["..."]`` (or ``cfg_dict``, ``config``).
READ = re.compile(r"\b(cfg|cfg_dict|hf_cfg)(\.get\(|\[)\s*[\"']")
#: Reads that are not a family's: a model's name for its folder; the hf engine raising OPT's learned positions.
ALLOWED = {("measure/lean/config.py", '"_name_or_path"'), ("measure/torch_engine.py", '"max_position_embeddings"')}


def test_no_engine_reads_a_configuration_key_the_family_records_own():
    found = []
    for path in sorted((PACKAGE / "measure").rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = READ.search(line)
            if m and not any(rel == f and key in line for f, key in ALLOWED):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "configuration keys read outside model/families/:\n" + "\n".join(found)


def test_every_shipped_family_has_a_parser_a_weight_map_and_a_compute_spec_in_one_record():
    from energybook.model.families import RECORDS

    for record in RECORDS:
        assert A.family(record.model_type) is record
        assert record.weights is not None and record.compute is not None, record.model_type


def test_a_configuration_the_compute_spec_cannot_express_is_unsupported_naming_the_key():
    import pytest

    from energybook.model.families.compute import Unsupported

    cfg = A.hf_config("Llama-3.2-1B")
    arch = A.Architecture.from_hf_config(cfg, name="x")
    spec = A.family("llama").compute_spec(arch, cfg)
    assert spec.rope_type == "llama3" and spec.qkv_layout == "separate"
    with pytest.raises(Unsupported, match="'yarn'"):
        A.family("llama").compute_spec(arch, dict(cfg, rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    falcon = A.hf_config("Falcon-RW-7B")
    farch = A.Architecture.from_hf_config(falcon, name="f")
    assert A.family("falcon").compute_spec(farch, falcon).positions == "alibi"
