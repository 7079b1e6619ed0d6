"""Cross-validation of the deep model beside the baselines, leave-one-batch-out, external cohorts,
regression, baselines on a real cohort, and Optuna search with nested MLflow runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genexflow import datasets
from genexflow.errors import InputError
from genexflow.simulate import simulate_cohort
from genexflow.training.baselines import fit_predict_baseline, make_baseline
from genexflow.training.config import MODEL_PRESETS, TrainConfig
from genexflow.training.cv import DEEP, cross_validate, external_validation


@pytest.fixture(scope="module")
def sim():
    torch.set_num_threads(1)
    c, truth = simulate_cohort(n_samples=72, n_genes=200, n_pathways=10, seed=1)
    return c


def _cfg(**kw):
    base = dict(epochs=3, lr=1e-3, batch_size=16, num_threads=1, model=MODEL_PRESETS["tiny"])
    return TrainConfig(**{**base, **kw})


def test_cv_deep_and_baselines_on_the_same_folds(sim):
    res = cross_validate(sim, _cfg(batch_column="batch", covariates=["age", "sex"]), n_splits=3,
                         baselines=["hist_gb", "pathway_logreg"])
    assert res.models == [DEEP, "hist_gb", "pathway_logreg"]
    assert len(res.folds) == 9
    # identical folds for every model
    for _, g in res.folds.groupby("split"):
        assert g["n_test"].nunique() == 1 and set(g["model"]) == set(res.models)
    p = res.predictions
    for m in res.models:
        pm = p[p["model"] == m]
        assert sorted(pm["sample_id"]) == sorted(sim.sample_ids)
        proba = pm[[f"proba_{c}" for c in res.class_names]].to_numpy()
        np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    tab = res.table()
    assert list(tab.columns) == ["balanced_accuracy", "macro_f1", "roc_auc"] and "±" in tab.iloc[0, 0]
    s = res.summary()
    assert ((s["balanced_accuracy_mean"] >= 0) & (s["balanced_accuracy_mean"] <= 1)).all()
    assert set(res.histories) == {"r0f0", "r0f1", "r0f2"} and all(len(h) >= 1 for h in res.histories.values())


def test_leave_one_batch_out_reports_each_held_out_batch(sim):
    res = cross_validate(sim, _cfg(batch_column="batch"), split="lobo", baselines=["hist_gb"])
    per = res.per_group("accuracy")
    assert sorted(per.columns) == sorted(sim.samples["batch"].unique())
    assert list(per.index) == [DEEP, "hist_gb"]
    for b in per.columns:
        row = res.folds[(res.folds["group"] == b) & (res.folds["model"] == "hist_gb")].iloc[0]
        assert row["n_test"] == (sim.samples["batch"] == b).sum()


def test_external_cohort_with_frozen_preprocessing(sim):
    other, _ = simulate_cohort(n_samples=30, n_genes=200, n_pathways=10, seed=1, batch_labels=["x", "y", "z"])
    res = external_validation(sim, other, _cfg(batch_column="batch"), baselines=["hist_gb"])
    assert set(res.folds["split"]) == {"external"} and (res.folds["n_test"] == 30).all()
    renamed = other.subset(np.arange(10))
    renamed.samples["label"] = "novel"
    with pytest.raises(InputError, match="unseen in training"):
        external_validation(sim, renamed, _cfg(), deep=False, baselines=["hist_gb"])


def test_regression_cv(sim):
    res = cross_validate(sim, _cfg(task="regression", label="target"), n_splits=3, baselines=["ridge"])
    assert {"r2", "mae", "rmse"} <= set(res.folds.columns)
    assert list(res.table().columns) == ["r2", "mae", "rmse"]
    assert (res.folds["rmse"] > 0).all()


def test_linear_baseline_near_ceiling_on_golub():
    golub = datasets.load_golub()
    res = cross_validate(golub, _cfg(label="label"), n_splits=3, deep=False, baselines=["logreg_l2", "random_forest"])
    s = res.summary()
    assert s.loc["logreg_l2", "balanced_accuracy_mean"] >= 0.85
    assert s.loc["logreg_l2", "roc_auc_mean"] >= 0.9


def test_baseline_outputs_cover_all_classes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 6))
    y = np.array([0, 1] * 15)
    _, p = fit_predict_baseline("hist_gb", "classification", X, y, X[:4], n_classes=3)
    assert p.shape == (4, 3) and (p[:, 2] == 0).all()
    with pytest.raises(InputError, match="unknown"):
        make_baseline("svm", "classification")
    with pytest.raises(InputError, match="gene sets"):
        make_baseline("pathway_logreg", "classification")


def test_hpo_tpe_nested_runs_and_best_config(sim, tmp_path):
    import mlflow

    from genexflow.training.hpo import run_hpo
    from genexflow.training.tracking import RunTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = {"lr": ("loguniform", 1e-4, 1e-2), "model.head_hidden": ("categorical", [16, 32])}
    with RunTracker("hpo-test", "search", uri) as tr:
        res = run_hpo(sim, _cfg(epochs=2), n_trials=3, space=space, n_splits=2, tracker=tr)
        parent = tr.run_id
    assert len(res.trials) == 3 and res.metric == "balanced_accuracy"
    assert res.best_config.lr == pytest.approx(res.best_params["lr"])
    assert res.best_config.model["head_hidden"] == res.best_params["model.head_hidden"]
    assert res.best_config.model["d_model"] == MODEL_PRESETS["tiny"]["d_model"]  # untouched keys kept
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["hpo-test"])
    children = runs[runs["tags.mlflow.parentRunId"] == parent]
    assert len(children) == 3
    assert children["params.lr"].notna().all() and "metrics.balanced_accuracy" in children


def test_hpo_grid_and_pruning(sim):
    from genexflow.training.hpo import apply_params, grid_from_lists, run_hpo

    grid = grid_from_lists(["lr=3e-3,1e-9", "epochs=3"])
    assert grid == {"lr": [3e-3, 1e-9], "epochs": [3]}
    res = run_hpo(sim, _cfg(), n_trials=10, sampler="grid", space=grid, n_splits=2)
    assert len(res.trials) == 2  # capped at the grid size
    assert set(res.trials["lr"]) == {3e-3, 1e-9}
    cfg = apply_params(_cfg(), {"model.d_model": 24})
    assert cfg.model["d_model"] == 24 and 24 % cfg.model["n_heads"] == 0
    with pytest.raises(InputError, match="unknown option 'optimizer.beta'"):
        apply_params(_cfg(), {"optimizer.beta": 0.9})


def test_hpo_prunes_hopeless_trials():
    import pandas as pd

    from genexflow.cohort import Cohort
    from genexflow.training.hpo import run_hpo

    rng = np.random.default_rng(0)
    y = np.repeat(["A", "B"], 30)
    X = rng.normal(size=(60, 60)) + np.where(y == "B", 2.0, 0.0)[:, None] * (np.arange(60) < 15)
    c = Cohort(X.astype(np.float32), [f"g{i}" for i in range(60)],
               pd.DataFrame({"label": y}, index=[f"s{i}" for i in range(60)]), value_type="log-expression")
    space = {"lr": ("categorical", [1e-2, 1e-9])}
    # wide_init="none": the network itself must learn (a GLM start would make every lr look good).
    res = run_hpo(c, _cfg(epochs=4, gene_set_min_size=3, wide_init="none"), n_trials=6, space=space, n_splits=3,
                  prune_startup=1)
    t = res.trials
    assert res.best_params["lr"] == 1e-2 and res.best_value > 0.8
    assert res.n_pruned >= 1
    assert (t.loc[t["state"] == "PRUNED", "lr"] == 1e-9).all()


def test_combat_off_keeps_the_batch_for_grouping_only(sim):
    from genexflow.training.cv import fit_preprocessing

    on = fit_preprocessing(sim, _cfg(batch_column="batch"))
    off = fit_preprocessing(sim, _cfg(batch_column="batch", combat=False))
    assert on.combat_ is not None and off.combat_ is None
    res = cross_validate(sim, _cfg(batch_column="batch", combat=False), split="lobo", deep=False,
                         baselines=["hist_gb"])
    assert sorted(res.per_group().columns) == sorted(sim.samples["batch"].unique())
