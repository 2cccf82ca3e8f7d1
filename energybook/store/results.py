"""Measured results on disk: one tidy CSV per (GPU, model, protocol) run plus a provenance sidecar.

Layout: ``data/measured/<gpu-slug>/<engine>/<model>/<name>.csv`` with ``<name>.json`` beside it. The CSV holds one row
per measured point (columns :data:`COLUMNS`, one vocabulary with the book); the sidecar records what ran,
where, when and how (GPU name and UUID, driver, CUDA, torch, transformers and energybook versions, engine
settings, dtype, weights kind, meter method, the protocol, start and end time of every point, the command that
regenerates the file), the sha256, byte size and row count of the CSV, and its ``schema``.

This module is the store's one entry point; the work is done in

* :mod:`~energybook.store.schema`: the columns, the type and range of every cell, the file names;
* :mod:`~energybook.store.lock`: the writer's exclusive lock;
* :mod:`~energybook.store.writer`: :class:`ResultsFile`, atomic appends and the recovery of an interrupted one;
* :mod:`~energybook.store.loader`: :func:`load_measured` and the checks of a CSV against its sidecar;
* :mod:`~energybook.store.merge`: :func:`absorb`, the part files of a torchrun sweep merged into their file.

Used in :doc:`/book/experiment` and :doc:`/book/status`.
"""

from __future__ import annotations

# Explicit re-exports (``name as name``): every name importers use from here.
from energybook.store.loader import MeasuredRun as MeasuredRun
from energybook.store.loader import count_once as count_once
from energybook.store.loader import load_measured as load_measured
from energybook.store.loader import read_sidecar as read_sidecar
from energybook.store.merge import Absorbed as Absorbed
from energybook.store.merge import absorb as absorb
from energybook.store.schema import _SCHEMA_PREFIX as _SCHEMA_PREFIX
from energybook.store.schema import COLUMNS as COLUMNS
from energybook.store.schema import KEY as KEY
from energybook.store.schema import SCHEMA as SCHEMA
from energybook.store.schema import SCHEMA1 as SCHEMA1
from energybook.store.schema import SCHEMA2_COLUMNS as SCHEMA2_COLUMNS
from energybook.store.schema import DataError as DataError
from energybook.store.schema import LockedError as LockedError
from energybook.store.schema import Row as Row
from energybook.store.schema import _fmt as _fmt
from energybook.store.schema import lock_path as lock_path
from energybook.store.schema import part_of as part_of
from energybook.store.schema import row_key as row_key
from energybook.store.schema import sha256_file as sha256_file
from energybook.store.schema import sidecar_path as sidecar_path
from energybook.store.writer import ResultsFile as ResultsFile
from energybook.store.writer import _write_sidecar as _write_sidecar
from energybook.store.writer import file_gpus as file_gpus
from energybook.store.writer import gpu_file as gpu_file
