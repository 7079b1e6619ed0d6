"""One fold's fitted inputs, without leakage: the preprocessing pipeline fitted on the fold's training rows
only, the priors restricted to the genes it keeps (or co-expression modules), the covariate encoding, and
the model inputs of both sides transformed by the frozen pipeline. The final model is a fold whose
training rows are every labeled row (and whose preprocessing may be given, already fitted)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from genexflow.bundle import CovariateSpec, encode_covariates, fit_covariates
from genexflow.cohort import Cohort
from genexflow.errors import InputError
from genexflow.preprocessing.pipeline import PreprocessingConfig, PreprocessingPipeline
from genexflow.priors import build_priors
from genexflow.training.config import DEFAULT_MAX_GENES, TrainConfig
from genexflow.training.trainer import TensorData


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
