"""Cross-validation without leakage: inside each training fold, fit the whole preprocessing pipeline (filter,
normalize, impute, ComBat, scale), restrict the priors to the genes it keeps, encode covariates, train the
deep model (early stopping on an inner validation split of the training rows) and every baseline; then
apply the frozen fold pipeline to the test rows. Test rows are never seen by anything fitted.

Also: external-cohort validation (train on one cohort, evaluate on another with the frozen preprocessing).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from genexflow.bundle import CovariateSpec, encode_covariates, fit_covariates
from genexflow.cohort import Cohort
from genexflow.errors import InputError
from genexflow.metrics import evaluate, summarize
from genexflow.training.baselines import baseline_names, fit_predict_baseline
from genexflow.training.config import DEFAULT_MAX_GENES, TrainConfig
from genexflow.training.splits import Split, make_splits, train_val_split
from genexflow.training.trainer import EpochCallback, TensorData, Trainer, TrainResult, predict_module

DEEP = "pathwaynet"


# --------------------------------------------------------------------------------------------- labels
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


# --------------------------------------------------------------------------------------------- fold pieces
def make_preprocessing(cfg: TrainConfig, train: Cohort | None = None) -> Any:
    """An unfitted preprocessing pipeline with ``cfg.preprocessing`` options.

    With a batch column, batches unseen in training (leave-one-batch-out, new sites at inference) are
    corrected with parameters estimated from their own samples unless the options say otherwise, and
    ComBat falls back to mean-only when a training batch has a single sample (its scale is undefined).
    Unless ``preprocessing.max_genes`` is given (``None`` keeps every gene), the pipeline keeps the
    :data:`~genexflow.training.config.DEFAULT_MAX_GENES` most variable genes of the training rows.
    """
    opts = dict(cfg.preprocessing)
    # In-fold top-variance filter by default (label-free): on tens to hundreds of samples, thousands of
    # noise genes drown the penalized GLMs and the network (benchmarks/results/defaults.md).
    opts.setdefault("max_genes", DEFAULT_MAX_GENES)
    if cfg.batch_column and cfg.combat:
        opts.setdefault("unseen_batch", "estimate")
        if train is not None and "combat_mean_only" not in opts:
            sizes = train.samples[cfg.batch_column].astype(str).value_counts()
            if sizes.min() < 2:
                opts["combat_mean_only"] = True
    try:
        from genexflow.preprocessing.pipeline import PreprocessingConfig, PreprocessingPipeline
    except ImportError:  # preprocessing area not installed: documented minimal fallback
        from genexflow.training._fallback import SimplePreprocessing

        return SimplePreprocessing(**opts)
    return PreprocessingPipeline(PreprocessingConfig(**opts))


def fit_preprocessing(train: Cohort, cfg: TrainConfig) -> Any:
    """Fit the pipeline on training rows only: the batch column and, for ComBat, the inference-time
    covariates (never the label)."""
    pre = make_preprocessing(cfg, train)
    batch = cfg.batch_column if cfg.combat else None
    covs = list(cfg.covariates) if batch and cfg.covariates else None
    pre.fit(train, batch_column=batch, covariates=covs)
    return pre


def transform(pre: Any, cohort: Cohort) -> np.ndarray:
    """Frozen preprocessing of any cohort (training, test or new) -> (n_samples, n_genes_out) float32."""
    return np.asarray(pre.transform(cohort), dtype=np.float32)


def data_driven_gene_sets(X: np.ndarray, genes: Sequence[str], n_sets: int | None = None,
                          seed: int = 0) -> dict[str, list[str]]:
    """Gene modules from k-means of the training genes' standardized profiles.

    Used when the gene IDs match no gene set (e.g. unannotated microarray probes), so the pathway tokens
    become co-expression modules. Fitted on training rows only, like everything else in a fold.
    """
    from sklearn.cluster import KMeans

    G = X.shape[1]
    k = n_sets or int(np.clip(G // 25, 4, 64))
    Z = X - X.mean(0)
    Z = Z / np.maximum(np.linalg.norm(Z, axis=0), 1e-8)
    lab = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(Z.T)
    g = np.asarray(genes, dtype=object)
    return {f"module_{i:02d}": list(g[lab == i]) for i in range(k) if (lab == i).sum() >= 3}


def fold_priors(genes: Sequence[str], cfg: TrainConfig, X_train: np.ndarray | None = None) -> Any:
    """Priors over the fold's kept genes: the configured gene sets restricted to them, or (when fewer than
    3 sets survive, e.g. probe IDs) co-expression modules of the training rows."""
    from genexflow.priors import build_priors

    try:
        pri = build_priors(list(genes), cfg.gene_sets, min_size=cfg.gene_set_min_size)
        if pri.n_pathways >= 3:
            pri.source = str(cfg.gene_sets)
            return pri
    except InputError:
        pass
    if X_train is None:
        raise InputError(f"no gene set of {cfg.gene_sets!r} matches the cohort's genes; harmonize gene IDs to "
                         "symbols (`genexflow ingest`) or pass --gene-sets with a GMT in the cohort's IDs")
    sets = data_driven_gene_sets(X_train, genes, seed=cfg.seed)
    pri = build_priors(list(genes), sets, min_size=3)
    pri.source = "kmeans-modules"
    return pri


def build_model(priors: Any, n_covariates: int, n_outputs: int, cfg: TrainConfig):
    """A fresh :class:`~genexflow.models.PathwayNet` for the fold's priors (seeded by the caller)."""
    from genexflow.models import PathwayNet

    opts = {"recon_weight": cfg.recon_weight, **cfg.model}
    if cfg.init_from:  # the autoencoder branch takes the pretrained encoder's sizes
        from genexflow.training.pretrain import encoder_sizes

        opts.update(encoder_sizes(cfg.init_from))
    return PathwayNet.from_priors(priors, n_covariates=n_covariates, n_outputs=n_outputs, task=cfg.task, **opts)


@dataclass
class PreparedFold:
    """Everything fitted on a fold's training rows, and the model inputs for both sides."""

    preprocessing: Any
    priors: Any
    covariates: list[CovariateSpec]
    train: TensorData
    test: TensorData | None
    genes: list[str]
    seconds: float = 0.0


def prepare_fold(train_c: Cohort, test_c: Cohort | None, y_train: np.ndarray, y_test: np.ndarray | None,
                 cfg: TrainConfig, preprocessing: Any = None) -> PreparedFold:
    """Fit preprocessing, priors and covariate encoding on ``train_c``; transform both cohorts.

    ``preprocessing``: a pipeline already fitted on exactly ``train_c``'s rows (the pipeline's
    ``preprocess-fit`` step), used as it is instead of fitting one.
    """
    t0 = time.perf_counter()
    pre = fit_preprocessing(train_c, cfg) if preprocessing is None else preprocessing
    Xtr = transform(pre, train_c)
    genes = [str(g) for g in pre.genes_out_]
    pri = fold_priors(genes, cfg, Xtr)
    specs = fit_covariates(train_c.samples, list(cfg.covariates))
    train = TensorData(Xtr, encode_covariates(train_c.samples, specs), y_train, _batch_codes(train_c, cfg))
    test = None
    if test_c is not None:
        test = TensorData(transform(pre, test_c), encode_covariates(test_c.samples, specs), y_test,
                          _batch_codes(test_c, cfg))
    return PreparedFold(pre, pri, specs, train, test, genes, time.perf_counter() - t0)


def _batch_codes(c: Cohort, cfg: TrainConfig) -> np.ndarray | None:
    if not cfg.batch_column or cfg.batch_column not in c.samples.columns:
        return None
    return pd.factorize(c.samples[cfg.batch_column].astype(str), sort=True)[0].astype(np.int64)


def train_deep(fold: PreparedFold, cfg: TrainConfig, n_outputs: int,
               callbacks: Sequence[EpochCallback] = ()) -> TrainResult:
    """Train the deep model on the fold's training rows, early-stopping on an inner stratified split."""
    from genexflow.training.trainer import seed_everything

    fit_idx, val_idx = train_val_split(fold.train.y, cfg.val_fraction, cfg.seed,
                                       stratify=cfg.task == "classification")
    seed_everything(cfg.seed, cfg.deterministic)
    module = build_model(fold.priors, fold.train.covariates.shape[1], n_outputs, cfg)
    fit = fold.train.take(fit_idx)
    if cfg.init_from:
        from genexflow.training.pretrain import init_from_pretrained

        init_from_pretrained(module, cfg.init_from, fold.genes)
    started = False
    if getattr(module, "wide", None) is not None and cfg.wide_init != "none":
        from genexflow.training.wide import init_wide

        # The GLM sees every training row of the fold, the early-stopping rows included: on cohorts of
        # tens of samples those rows are worth more to it than an unbiased start score. The start's
        # validation loss is then optimistic, so the deep branches have to beat the GLM clearly to be kept.
        y = fold.train.y
        if cfg.task == "regression":  # in the trainer's units: standardized by the fit rows' mean and SD
            y = (y - np.mean(fit.y)) / (np.std(fit.y) or 1.0)
        started = init_wide(module, fold.train.X, y, cfg.task, cfg.wide_init, cfg.seed, cfg.wide_trainable)
    res = Trainer(cfg, callbacks).fit(module, fit, fold.train.take(val_idx), start_is_candidate=started)
    fold_target_scaling(res)
    return res


def fold_target_scaling(res: TrainResult) -> None:
    """Fold regression target standardization into the module's last linear layer, so the saved model
    (and its ONNX export) outputs targets on the original scale."""
    if res.target_mean == 0.0 and res.target_std == 1.0:
        return
    import torch

    head = getattr(res.module, "head", None)
    last = head[-1] if isinstance(head, torch.nn.Sequential) else None
    if not isinstance(last, torch.nn.Linear):
        return  # keep target_mean/std on the result; predict_module applies them
    with torch.no_grad():
        last.weight.mul_(res.target_std)
        last.bias.mul_(res.target_std).add_(res.target_mean)
        wide = getattr(res.module, "wide", None)
        if isinstance(wide, torch.nn.Linear):
            wide.weight.mul_(res.target_std)
            wide.bias.mul_(res.target_std)
    res.target_mean, res.target_std = 0.0, 1.0


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
        from genexflow.training.modular import RANK_METRIC

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
    from genexflow.training.model import TrainedModel

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
            from genexflow.training.modular import modular_scores

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
                    pd.concat(modular, ignore_index=True) if modular else pd.DataFrame())


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
