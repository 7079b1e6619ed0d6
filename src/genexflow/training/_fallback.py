"""Minimal stand-in preprocessing, used only when ``genexflow.preprocessing.PreprocessingPipeline`` is not
importable (it is built in the preprocessing area). Same calling convention: ``fit(cohort, batch_column,
covariates)``, ``transform(cohort_or_X, batch=None, covariates=None) -> ndarray``, ``genes_out_``.

log2-CPM for counts (prior count 1), drop genes with near-zero training variance, keep the most variable
``max_genes``, mean-impute NaN, ComBat (frozen, unseen batches estimated) when a batch column is given,
standardize with training mean/SD.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from genexflow.cohort import Cohort, ValueType
from genexflow.errors import InputError, NotFittedError


class SimplePreprocessing:
    """Fallback preprocessing (see the module docstring)."""

    def __init__(self, max_genes: int | None = None, combat: bool = True, min_variance: float = 1e-8, **_: Any):
        self.max_genes = max_genes
        self.combat = combat
        self.min_variance = min_variance

    def _log(self, X: np.ndarray, value_type: ValueType) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if value_type in (ValueType.COUNTS, ValueType.TPM, ValueType.FPKM):
            lib = np.nansum(X, axis=1, keepdims=True)
            X = np.log2(X / np.maximum(lib, 1) * 1e6 + 1.0)
        return X

    def fit(self, cohort: Cohort, batch_column: str | None = None, covariates: list[str] | None = None):
        self.value_type_ = cohort.value_type
        self.genes_in_ = list(cohort.genes)
        X = self._log(cohort.X, cohort.value_type)
        var = np.nanvar(X, axis=0)
        keep = np.flatnonzero(var > self.min_variance)
        if self.max_genes and len(keep) > self.max_genes:
            keep = keep[np.argsort(-var[keep], kind="stable")[: self.max_genes]]
            keep.sort()
        self.keep_ = keep
        self.genes_out_ = [self.genes_in_[i] for i in keep]
        X = X[:, keep]
        self.impute_ = np.nanmean(X, axis=0)
        X = np.where(np.isnan(X), self.impute_, X)
        self.batch_column_ = batch_column if self.combat else None
        self.covariates_ = list(covariates or [])
        self.combat_ = None
        if self.batch_column_:
            from genexflow.preprocessing.combat import ComBat

            cov = cohort.samples[self.covariates_] if self.covariates_ else None
            self.combat_ = ComBat(unseen_batch="estimate", constant_genes="passthrough", mean_only=False)
            b = cohort.samples[batch_column].astype(str).to_numpy()
            if pd.Series(b).value_counts().min() < 2:
                self.combat_.set_params(mean_only=True)
            X = self.combat_.fit_transform(X, batch=b, covariates=cov)
        self.mean_ = X.mean(0)
        self.scale_ = X.std(0)
        self.scale_[self.scale_ < 1e-8] = 1.0
        return self

    def transform(self, cohort_or_X: Cohort | np.ndarray, batch: Any = None, covariates: Any = None) -> np.ndarray:
        if not hasattr(self, "mean_"):
            raise NotFittedError("preprocessing is not fitted; call fit(train_cohort) first")
        if isinstance(cohort_or_X, Cohort):
            c = cohort_or_X
            X = c.frame().reindex(columns=self.genes_in_).to_numpy(np.float64)
            if self.combat_ is not None:
                batch = c.samples[self.batch_column_].astype(str).to_numpy()
                covariates = c.samples[self.covariates_] if self.covariates_ else None
        else:
            X = np.asarray(cohort_or_X, dtype=np.float64)
            if X.shape[1] != len(self.genes_in_):
                raise InputError(f"expected {len(self.genes_in_)} genes, got {X.shape[1]}")
        X = self._log(X, self.value_type_)[:, self.keep_]
        X = np.where(np.isnan(X), self.impute_, X)
        if self.combat_ is not None:
            if batch is None:
                raise InputError(f"this preprocessing corrects batches; pass the {self.batch_column_!r} column")
            X = self.combat_.transform(X, batch=np.asarray(batch).astype(str), covariates=covariates)
        return ((X - self.mean_) / self.scale_).astype(np.float32)
