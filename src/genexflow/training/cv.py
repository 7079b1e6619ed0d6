"""Cross-validation of the deep model beside the baselines on the same folds: for each split the fold's
inputs are prepared without leakage (:mod:`.folds`: preprocessing fitted on the training rows only), the
deep model is fitted (:mod:`.fit`) and every baseline too, and the test rows are scored with the frozen
fold pipeline. Also: external-cohort validation (train on one cohort, evaluate on another).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from genexflow.cohort import Cohort
from genexflow.errors import InputError
from genexflow.metrics import evaluate, higher_is_better, paired_bootstrap_difference, summarize
from genexflow.training.baselines import baseline_names, fit_predict_baseline
from genexflow.training.config import TrainConfig
from genexflow.training.fit import build_model, fold_target_scaling, train_deep
from genexflow.training.folds import (
    PreparedFold,
    data_driven_gene_sets,
    fit_preprocessing,
    fold_priors,
    make_preprocessing,
    prepare_fold,
    transform,
)
from genexflow.training.labels import Labels, encode_labels
from genexflow.training.model import TrainedModel
from genexflow.training.modular import RANK_METRIC, modular_scores
from genexflow.training.splits import Split, make_splits
from genexflow.training.trainer import EpochCallback, predict_module

DEEP = "pathwaynet"

# The fold pieces and labels lived here before; their names stay importable from this module.
__all__ = [
    "DEEP", "CVResult", "Labels", "PreparedFold", "build_model", "cross_validate", "data_driven_gene_sets",
    "encode_labels", "external_validation", "fit_preprocessing", "fold_priors", "fold_target_scaling",
    "make_preprocessing", "prepare_fold", "train_deep", "transform",
]


# --------------------------------------------------------------------------------------------- results
@dataclass
class CVResult:
    """Per-fold metrics and out-of-fold predictions of the deep model and the baselines.

    Attributes
    ----------
    task : str
    class_names : list of str
    folds : DataFrame
        One row per (model, split): ``model, split, repeat, group, n_train, n_test, seconds`` + metrics.
    predictions : DataFrame
        Out-of-fold rows: ``sample_id, model, split, repeat, group, y_true`` + ``proba_<class>`` or
        ``prediction``.
    histories : dict
        Split name -> the deep model's per-epoch history.
    """

    task: str
    class_names: list[str]
    folds: pd.DataFrame
    predictions: pd.DataFrame
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    split_kind: str = "stratified"
    #: split name -> the deep model trained on that fold (``cross_validate(keep_models=True)``): exporting
    #: one gives the graph that would serve what the fold's out-of-fold predictions measured
    fold_models: dict[str, Any] = field(default_factory=dict)
    #: Pathway-specific heads' held-out scores per fold (``model.pathway_heads > 0``), see
    #: :mod:`genexflow.training.modular`; empty otherwise.
    modular: pd.DataFrame = field(default_factory=pd.DataFrame)

    def modular_summary(self) -> pd.DataFrame:
        """Each pathway head's held-out score averaged over folds, best first (the "modular" reading)."""
        if self.modular.empty:
            return self.modular
        num = self.modular.drop(columns=["split"]).groupby("pathway").mean()

        return num.sort_values(RANK_METRIC[self.task], ascending=False, kind="stable")

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.folds["model"]))

    def metric_names(self) -> list[str]:
        fixed = {"model", "split", "repeat", "group", "n_train", "n_test", "seconds", "best_epoch"}
        return [c for c in self.folds.columns if c not in fixed]

    def summary(self, metrics: Sequence[str] | None = None) -> pd.DataFrame:
        """Mean and SD over folds per model: columns ``<metric>_mean``, ``<metric>_sd``; one row per model."""
        metrics = list(metrics or self.metric_names())
        rows = {}
        for m, g in self.folds.groupby("model", sort=False):
            s = summarize(g[metrics].to_dict("records"))
            rows[m] = {f"{k}_{stat}": v[i] for k, v in s.items() for i, stat in enumerate(("mean", "sd"))}
            rows[m]["n_folds"] = len(g)
        out = pd.DataFrame.from_dict(rows, orient="index")
        out.index.name = "model"
        return out

    def table(self, metrics: Sequence[str] = ("balanced_accuracy", "macro_f1", "roc_auc")) -> pd.DataFrame:
        """``mean ± sd`` strings per model (the comparison table logged to MLflow and in benchmarks)."""
        if self.task == "regression" and metrics == ("balanced_accuracy", "macro_f1", "roc_auc"):
            metrics = ("r2", "mae", "rmse")
        s = self.summary(metrics)
        out = pd.DataFrame({m: [f"{a:.3f} ± {b:.3f}" for a, b in zip(s[f"{m}_mean"], s[f"{m}_sd"], strict=True)]
                            for m in metrics}, index=s.index)
        return out

    def per_group(self, metric: str = "accuracy") -> pd.DataFrame:
        """Metric per held-out group (leave-one-batch-out): rows models, columns held-out batches."""
        return self.folds.pivot_table(index="model", columns="group", values=metric, sort=False)

    def outputs(self, model: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """``(y_true, output, keys)`` of ``model``'s out-of-fold rows, every repeat pooled, ordered by
        (repeat, sample_id) so two models' rows pair up."""
        p = self.predictions[self.predictions["model"] == model].sort_values(["repeat", "sample_id"])
        cols = [f"proba_{c}" for c in self.class_names] if self.task == "classification" else ["prediction"]
        out = p[cols].to_numpy(np.float64)
        return p["y_true"].to_numpy(), (out if self.task == "classification" else out[:, 0]), \
            p[["repeat", "sample_id"]].reset_index(drop=True)

    def pooled(self, model: str) -> dict[str, float]:
        """Metrics of ``model``'s pooled out-of-fold predictions (all repeats), by :mod:`genexflow.metrics`."""
        y, out, _ = self.outputs(model)
        return evaluate(self.task, y, out)

    def oof_comparison(self, metric: str | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        """The stable estimate the registry gate and monitoring use: pooled out-of-fold metrics of every
        model, and the deep model paired with the best baseline (by pooled ``metric``) on the same rows,
        with a bootstrap interval of the difference.

        Returns ``{"metric", "pathwaynet": {...}, "baselines": {name: {...}}, "vs_best_baseline": {"baseline",
        "difference", "ci_low", "ci_high", ...}, "n_rows", "n_repeats", "split"}``.
        """
        metric = metric or ("balanced_accuracy" if self.task == "classification" else "r2")
        if self.predictions.empty:
            return {}
        models = self.models
        pooled = {m: self.pooled(m) for m in models}
        finite = {m: v for m, v in pooled.items() if np.isfinite(v.get(metric, np.nan))}
        out: dict[str, Any] = {"metric": metric, "split": self.split_kind,
                               "n_repeats": int(self.predictions["repeat"].nunique())}
        if DEEP in pooled:
            out[DEEP] = pooled[DEEP]
        out["baselines"] = {m: v for m, v in pooled.items() if m != DEEP}
        base = {m: v[metric] for m, v in finite.items() if m != DEEP}
        if DEEP in finite and base:
            sign = 1.0 if higher_is_better(metric) else -1.0
            best = max(base, key=lambda m: sign * base[m])
            y, a, ka = self.outputs(DEEP)
            _, b, kb = self.outputs(best)
            if ka.equals(kb):  # the same folds, the same rows
                cmp = paired_bootstrap_difference(self.task, y, a, b, metric, n_boot=n_boot, seed=seed)
                out["vs_best_baseline"] = {"baseline": best, **cmp}
            out["n_rows"] = len(y)
        return out

    def best_baseline(self, metric: str = "balanced_accuracy") -> tuple[str, float]:
        s = self.summary([metric])[f"{metric}_mean"].drop(DEEP, errors="ignore")
        return str(s.idxmax()), float(s.max())


# --------------------------------------------------------------------------------------------- CV driver
def cross_validate(
    cohort: Cohort,
    cfg: TrainConfig,
    split: str = "stratified",
    n_splits: int = 5,
    n_repeats: int = 1,
    baselines: Sequence[str] | str | None = None,
    deep: bool = True,
    splits: Sequence[Split] | None = None,
    epoch_callbacks: Callable[[Split], Sequence[EpochCallback]] | None = None,
    on_fold: Callable[[Split, str, dict[str, float]], None] | None = None,
    keep_models: bool = False,
) -> CVResult:
    """Cross-validate the deep model and the baselines on the same folds.

    Parameters
    ----------
    cohort : Cohort
        Raw cohort; rows without a label are left out (reported in ``CVResult.folds.attrs``).
    cfg : TrainConfig
    split : {"stratified", "kfold", "lobo"}
    n_splits, n_repeats : int
        k and repeats for (stratified) k-fold.
    baselines : list of str, "all", or None (the defaults); ``[]`` for none
    deep : bool
        Train the deep model (False: baselines only).
    splits : list of Split, optional
        Explicit splits (positions into the labeled rows) instead of ``split``.
    epoch_callbacks : callable ``split -> [callback]``
        Per-fold epoch callbacks (MLflow, progress bars, pruning).
    on_fold : callable ``(split, model, metrics)``
        Called when a model finishes a fold.
    keep_models : bool
        Keep each fold's deep model (:class:`~genexflow.training.model.TrainedModel`) in ``CVResult.fold_models``.
    """
    labels = encode_labels(cohort, cfg)
    data = cohort.subset(labels.labeled) if not labels.labeled.all() else cohort
    y = labels.y[labels.labeled]
    batches = data.samples[cfg.batch_column].astype(str).to_numpy() if cfg.batch_column else None
    if splits is None:
        splits = make_splits(split, y, batches, n_splits=n_splits, n_repeats=n_repeats, seed=cfg.seed,
                             task=cfg.task)
    names = baseline_names(cfg.task, baselines) if baselines != [] else []
    fold_rows: list[dict] = []
    pred_rows: list[pd.DataFrame] = []
    histories: dict[str, list] = {}
    trained: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for i, sp in enumerate(splits):
        fcfg = cfg.with_(seed=cfg.seed + i)
        fold = prepare_fold(data.subset(sp.train), data.subset(sp.test), y[sp.train],
                            y[sp.test], fcfg)
        _run_fold(fold, sp, fcfg, labels.class_names, names, deep, data.sample_ids[sp.test], epoch_callbacks,
                  on_fold, fold_rows, pred_rows, histories, trained if keep_models else None)
        if sp.name in trained:
            models[sp.name] = TrainedModel.from_fold(data.subset(sp.train), fold, trained.pop(sp.name), fcfg,
                                                     labels.class_names)
    res = _result(cfg.task, labels, fold_rows, pred_rows, histories, split)
    res.fold_models = models
    return res


def _run_fold(fold: PreparedFold, sp: Split, cfg: TrainConfig, class_names: list[str], names: Sequence[str],
              deep: bool, test_ids: pd.Index, epoch_callbacks, on_fold, fold_rows: list, pred_rows: list,
              histories: dict, trained: dict | None = None) -> None:
    """Train the deep model and the baselines on one prepared fold; append metrics and predictions."""
    k = len(class_names) if cfg.task == "classification" else 1
    y_test = fold.test.y
    base = {"split": sp.name, "repeat": sp.repeat, "group": sp.group, "n_train": len(fold.train),
            "n_test": len(fold.test)}
    outputs: dict[str, np.ndarray] = {}
    if deep:
        t0 = time.perf_counter()
        cbs = list(epoch_callbacks(sp)) if epoch_callbacks else []
        res = train_deep(fold, cfg, k, cbs)
        out = predict_module(res.module, fold.test, cfg.task, res.target_mean, res.target_std)
        outputs[DEEP] = out["proba"] if cfg.task == "classification" else out["prediction"]
        histories[sp.name] = res.history
        if trained is not None:
            trained[sp.name] = res
        if "pathway_output" in out:
            m = modular_scores(y_test, out["pathway_output"], fold.priors.pathways, cfg.task)
            histories.setdefault("_modular", []).append(m.reset_index().assign(split=sp.name))
        info = {**base, "seconds": time.perf_counter() - t0 + fold.seconds, "best_epoch": res.best_epoch}
        _record(fold_rows, DEEP, info, cfg.task, y_test, outputs[DEEP], on_fold, sp)
    for name in names:
        t0 = time.perf_counter()
        Xtr, Xte = _baseline_inputs(fold, name)
        extra = {"gene_sets": fold.priors.gene_sets, "genes": fold.genes} if name.startswith("pathway_") else {}
        _, outputs[name] = fit_predict_baseline(name, cfg.task, Xtr, fold.train.y, Xte, n_classes=k,
                                                seed=cfg.seed, **extra)
        _record(fold_rows, name, {**base, "seconds": time.perf_counter() - t0 + fold.seconds}, cfg.task,
                y_test, outputs[name], on_fold, sp)
    for model, o in outputs.items():
        pr = pd.DataFrame({"sample_id": np.asarray(test_ids), "model": model, "split": sp.name,
                           "repeat": sp.repeat, "group": sp.group, "y_true": y_test})
        if cfg.task == "classification":
            for j, cname in enumerate(class_names):
                pr[f"proba_{cname}"] = o[:, j]
        else:
            pr["prediction"] = o
        pred_rows.append(pr)


def _result(task: str, labels: Labels, fold_rows: list, pred_rows: list, histories: dict, kind: str) -> CVResult:
    folds = pd.DataFrame(fold_rows)
    folds.attrs["n_unlabeled"] = int((~labels.labeled).sum())
    preds = pd.concat(pred_rows, ignore_index=True) if pred_rows else pd.DataFrame()
    modular = histories.pop("_modular", [])
    return CVResult(task, labels.class_names, folds, preds, histories, kind,
                    modular=pd.concat(modular, ignore_index=True) if modular else pd.DataFrame())


def _baseline_inputs(fold: PreparedFold, name: str) -> tuple[np.ndarray, np.ndarray]:
    # Pathway-score baselines read gene columns by name; the others also see the encoded covariates,
    # exactly like the deep model.
    if name.startswith("pathway_") or fold.train.covariates.shape[1] == 0:
        return fold.train.X, fold.test.X
    return (np.hstack([fold.train.X, fold.train.covariates]), np.hstack([fold.test.X, fold.test.covariates]))


def _record(rows: list, model: str, base: dict, task: str, y_true: np.ndarray, output: np.ndarray,
            on_fold, sp: Split) -> None:
    m = evaluate(task, y_true, output)
    rows.append({"model": model, **base, **m})
    if on_fold is not None:
        on_fold(sp, model, m)


def external_validation(train: Cohort, test: Cohort, cfg: TrainConfig, baselines: Sequence[str] | str | None = None,
                        deep: bool = True, epoch_callbacks: Sequence[EpochCallback] = ()) -> CVResult:
    """Train on one cohort and evaluate on another with the frozen (train-fitted) preprocessing.

    Classes are the training cohort's; test rows with a class unseen in training are refused.
    """
    ltr = encode_labels(train, cfg)
    lte = encode_labels(test, cfg, class_names=ltr.class_names if cfg.task == "classification" else None)
    if cfg.task == "classification":
        raw = test.column(cfg.label).astype("string")
        unseen = sorted(set(raw[raw.notna()].unique()) - set(ltr.class_names))
        if unseen:
            raise InputError(f"the external cohort has classes unseen in training: {', '.join(unseen)}")
    tr = train.subset(ltr.labeled)
    te = test.subset(lte.labeled)
    fold = prepare_fold(tr, te, ltr.y[ltr.labeled], lte.y[lte.labeled], cfg)
    sp = Split("external", np.arange(tr.n_samples), np.arange(te.n_samples), group=test.name)
    names = baseline_names(cfg.task, baselines) if baselines != [] else []
    fold_rows: list[dict] = []
    pred_rows: list[pd.DataFrame] = []
    histories: dict[str, list] = {}
    _run_fold(fold, sp, cfg, ltr.class_names, names, deep, te.sample_ids,
              (lambda s: epoch_callbacks) if epoch_callbacks else None, None, fold_rows, pred_rows, histories)
    return _result(cfg.task, ltr, fold_rows, pred_rows, histories, "external")
