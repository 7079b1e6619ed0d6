"""Nested cross-validation: each outer fold's search sees only its training rows, and the reported score
comes from outer test rows no search saw."""

from __future__ import annotations

import numpy as np
import pandas as pd

from genexflow.cohort import Cohort
from genexflow.training.config import MODEL_PRESETS, TrainConfig
from genexflow.training.cv import DEEP
from genexflow.training.hpo import nested_cv


def _cohort(seed: int = 0) -> Cohort:
    rng = np.random.default_rng(seed)
    y = np.repeat(["A", "B"], 30)
    X = rng.normal(size=(60, 60)) + np.where(y == "B", 2.0, 0.0)[:, None] * (np.arange(60) < 15)
    return Cohort(X.astype(np.float32), [f"g{i}" for i in range(60)],
                  pd.DataFrame({"label": y}, index=[f"s{i}" for i in range(60)]), value_type="log-expression")


def test_nested_cv_tunes_inside_each_outer_fold(one_torch_thread):
    c = _cohort()
    cfg = TrainConfig(epochs=4, lr=1e-3, batch_size=16, num_threads=1, gene_set_min_size=3, wide_init="none",
                      model=MODEL_PRESETS["tiny"])
    # one hopeless value: every outer fold's own search must reject it
    res = nested_cv(c, cfg, n_trials=2, sampler="grid", space={"lr": [1e-2, 1e-9]}, n_splits=3,
                    inner_splits=2, baselines=["logreg_l2"])
    folds = res.cv.folds
    assert sorted(folds["model"].unique()) == sorted([DEEP, "logreg_l2"]) and len(folds) == 6
    assert [p["lr"] for p in res.best_params] == [1e-2] * 3
    preds = res.cv.predictions[res.cv.predictions["model"] == DEEP]
    assert sorted(preds["sample_id"]) == sorted(c.sample_ids)  # every sample scored once, out of fold
    for (_, g), ids in zip(preds.groupby("split", sort=False), res.searched, strict=True):
        assert not set(g["sample_id"]) & set(ids)  # the search never saw its outer test rows
        assert len(ids) + len(g) == c.n_samples
    assert folds.loc[folds["model"] == DEEP, "balanced_accuracy"].mean() > 0.8
    assert np.isfinite(res.optimism())


def test_batch_size_sweep_is_nested_too(one_torch_thread):
    """With a batch-size sweep the reported CV is nested as well: each outer fold sweeps on its own training
    rows (the same choice batch_size_sweep makes on exactly those rows), with the scaled learning rate."""
    from genexflow.training.hpo import batch_size_sweep, scaled_lr

    c = _cohort(1)
    cfg = TrainConfig(epochs=4, lr=1e-3, batch_size=16, num_threads=1, gene_set_min_size=3, wide_init="none",
                      model=MODEL_PRESETS["tiny"])
    res = nested_cv(c, cfg, n_trials=0, n_splits=3, inner_splits=2, baselines=[], batch_sizes=[4, 32])
    assert [sorted(p) for p in res.best_params] == [["batch_size", "lr"]] * 3
    for p in res.best_params:
        assert p["batch_size"] in (4, 32) and p["lr"] == scaled_lr(1e-3, p["batch_size"], 16, "sqrt")
    preds = res.cv.predictions[res.cv.predictions["model"] == DEEP]
    assert sorted(preds["sample_id"]) == sorted(c.sample_ids)
    first_ids = res.searched[0]
    assert len(first_ids) < c.n_samples
    again = batch_size_sweep(c.subset(np.isin(c.sample_ids, first_ids)), cfg.with_(seed=cfg.seed), [4, 32],
                             n_splits=2)
    assert again.best_batch_size == res.best_params[0]["batch_size"]
