"""Labels of a cohort as training sees them: class indices over sorted class names (or float targets), and
which rows have a label at all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from genexflow.cohort import Cohort
from genexflow.errors import InputError
from genexflow.training.config import TrainConfig


@dataclass
class Labels:
    """Encoded labels of a cohort: ``y`` (class index or float), class names, and which rows have one."""

    y: np.ndarray
    class_names: list[str]
    labeled: np.ndarray  # bool mask over the cohort rows

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def encode_labels(cohort: Cohort, cfg: TrainConfig, class_names: Sequence[str] | None = None) -> Labels:
    """Class indices (sorted label strings, or the given order) or float targets; unlabeled rows flagged."""
    col = cohort.column(cfg.label)
    if cfg.task == "classification":
        s = col.astype("string")
        labeled = s.notna().to_numpy() & (s.str.strip() != "").fillna(False).to_numpy()
        names = list(class_names) if class_names is not None else sorted(map(str, s[labeled].unique()))
        if len(names) < 2:
            raise InputError(f"label column {cfg.label!r} has {len(names)} class(es); classification needs >= 2")
        lut = {n: i for i, n in enumerate(names)}
        y = np.array([lut.get(str(v), -1) if ok else -1 for v, ok in zip(s.to_numpy(), labeled, strict=True)],
                     dtype=np.int64)
        labeled &= y >= 0
        return Labels(y, names, labeled)
    v = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
    labeled = np.isfinite(v)
    if labeled.sum() < 4:
        raise InputError(f"label column {cfg.label!r} has fewer than 4 numeric values; is --task right?")
    return Labels(v.astype(np.float32), [], labeled)
