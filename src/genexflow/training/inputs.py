"""Resolve what a user passes on the command line into a cohort and a :class:`TrainConfig` (shared by
``genexflow train`` and the ``torchrun`` entry point, so both read inputs identically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genexflow import datasets
from genexflow.cohort import Cohort
from genexflow.errors import InputError
from genexflow.io import read_cohort, read_sample_sheet
from genexflow.overrides import load_config_file
from genexflow.training.config import TrainConfig


def load_training_cohort(source: str | Path, samples: str | Path | None = None,
                         value_type: str | None = None) -> tuple[Cohort, Path | None]:
    """A cohort folder, ``.h5ad``, a matrix file (+ ``samples`` sheet), or a shipped dataset name.

    Returns the cohort and the path to record as lineage (``None`` for a shipped dataset).
    """
    p = Path(source)
    if not p.exists():
        if str(source) in datasets.LOADERS:
            return datasets.load(str(source)), None
        raise InputError(f"{source}: no such cohort folder or matrix file (shipped datasets: "
                         f"{', '.join(datasets.LOADERS)})")
    if p.is_dir() or p.suffix == ".h5ad":
        c = Cohort.read(p)
        if samples is not None:
            sheet = read_sample_sheet(samples)
            c = Cohort(c.X, c.genes, sheet.reindex(c.sample_ids), c.value_type, c.name, c.meta)
        if value_type:
            c.value_type = c.value_type.parse(value_type)
        return c, p
    if samples is None:
        raise InputError(f"{p}: a matrix file needs --samples SHEET with the label column")
    if not value_type:
        raise InputError("a matrix file needs --value-type (counts, tpm, fpkm or log-expression)")
    return read_cohort(p, samples, value_type=value_type, name=p.stem), p


def build_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 **fields: Any) -> TrainConfig:
    """TrainConfig from a YAML/JSON file, then explicit fields (None = keep), then ``--set`` overrides
    (:func:`genexflow.training.config.parse_overrides`); ``model`` / ``preprocessing`` dicts merge."""
    base = load_config_file(config_file) if config_file else {}
    for k, v in fields.items():
        if v is not None:
            base[k] = v
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return TrainConfig.from_dict(base)
