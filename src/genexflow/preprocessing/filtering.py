"""Low-expression gene filters. The gene set is chosen in ``fit`` and frozen for ``transform``.

* :class:`LowCountFilter`: the blueprint rule, drop genes with fewer than ``min_count`` counts in more
  than ``max_fraction_below`` of the samples (defaults 5 and 0.8).
* :class:`FilterByExpr`: ``edgeR::filterByExpr`` (``R/filterByExpr.R``): keep genes with
  ``CPM >= min.count / median(lib.size) * 1e6`` in at least ``MinSampleSize`` samples (the smallest
  group size, or all samples without groups; above ``large.n`` it grows only by ``min.prop`` per
  sample) and a total count of at least ``min.total.count`` (tolerance 1e-14 as in edgeR).
* :class:`VarianceFilter`: drop genes whose variance is (near) zero, e.g. before ComBat on log data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from genexflow.errors import InputError
from genexflow.preprocessing._utils import as_labels, as_matrix, check_fitted, check_n_genes
from genexflow.preprocessing.normalize import check_counts


class _GeneFilter(TransformerMixin, BaseEstimator):
    """Shared transform: keep the columns chosen in fit (``keep_``)."""

    def _store(self, keep: np.ndarray, names: np.ndarray | None, what: str) -> None:
        if not keep.any():
            raise InputError(f"{what} removes every gene; lower the thresholds or check the input units")
        self.keep_ = keep
        self.n_features_in_ = len(keep)
        if names is not None:
            self.feature_names_in_ = names

    def get_support(self, indices: bool = False) -> np.ndarray:
        """Boolean mask (or positions) of the kept genes, shape (n_genes_in,)."""
        check_fitted(self, "keep_")
        return np.flatnonzero(self.keep_) if indices else self.keep_.copy()

    def transform(self, X: Any) -> np.ndarray:
        """Columns of the kept genes, in input order: shape (n_samples, n_kept)."""
        check_fitted(self, "keep_")
        X, names = as_matrix(X)
        check_n_genes(self, X, names)
        return X[:, self.keep_]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_fitted(self, "keep_")
        names = input_features if input_features is not None else getattr(self, "feature_names_in_", None)
        if names is None:
            names = np.array([f"x{i}" for i in range(self.n_features_in_)], dtype=object)
        return np.asarray(names, dtype=object)[self.keep_]


class LowCountFilter(_GeneFilter):
    """Drop genes with ``< min_count`` counts in more than ``max_fraction_below`` of the samples.

    Parameters
    ----------
    min_count : float, default=5
    max_fraction_below : float, default=0.8
        A gene is kept when the fraction of samples with ``count < min_count`` is at most this.

    Examples
    --------
    >>> X = np.array([[0, 10, 6], [1, 12, 4], [0, 9, 7], [2, 11, 5], [0, 8, 9]])
    >>> LowCountFilter().fit(X).get_support().tolist()
    [False, True, True]
    """

    def __init__(self, min_count: float = 5, max_fraction_below: float = 0.8):
        self.min_count = min_count
        self.max_fraction_below = max_fraction_below

    def fit(self, X: Any, y: Any = None, **_: Any) -> LowCountFilter:
        X, names = as_matrix(X, "count matrix", allow_nan=True)
        if not 0 <= self.max_fraction_below <= 1:
            raise InputError(f"max_fraction_below must be in [0, 1], got {self.max_fraction_below}")
        below = np.where(np.isnan(X), True, X < self.min_count).mean(axis=0)
        self._store(below <= self.max_fraction_below, names, "the low-count filter")
        return self


class FilterByExpr(_GeneFilter):
    """``edgeR::filterByExpr`` with a frozen gene set.

    Parameters
    ----------
    min_count : float, default=10
    min_total_count : float, default=15
    large_n : int, default=10
    min_prop : float, default=0.7

    ``fit(X, group=None, lib_size=None)``: ``group`` (n_samples,) labels define the smallest group size;
    ``lib_size`` defaults to the row sums (pass ``lib.size * norm.factors`` to mimic a DGEList).
    """

    def __init__(self, min_count: float = 10, min_total_count: float = 15, large_n: int = 10,
                 min_prop: float = 0.7):
        self.min_count = min_count
        self.min_total_count = min_total_count
        self.large_n = large_n
        self.min_prop = min_prop

    def fit(self, X: Any, y: Any = None, *, group: Any = None, lib_size: Any = None, **_: Any) -> FilterByExpr:
        X, names = as_matrix(X, "count matrix")
        check_counts(X, names=names)
        lib = X.sum(axis=1) if lib_size is None else np.asarray(lib_size, np.float64)
        if group is None:
            min_n = float(X.shape[0])
        else:
            _, counts = np.unique(as_labels(group, X.shape[0], "group").astype(str), return_counts=True)
            min_n = float(counts.min())
        if min_n > self.large_n:
            min_n = self.large_n + (min_n - self.large_n) * self.min_prop
        cutoff = self.min_count / np.median(lib) * 1e6
        cpm = X * (1e6 / lib[:, None])  # edgeR's C code: count * (1e6 / lib.size); ties at the cutoff depend on it
        tol = 1e-14
        keep = ((cpm >= cutoff).sum(axis=0) >= min_n - tol) & (X.sum(axis=0) >= self.min_total_count - tol)
        self.cpm_cutoff_ = float(cutoff)
        self.min_sample_size_ = min_n
        self._store(keep, names, "filterByExpr")
        return self


class VarianceFilter(_GeneFilter):
    """Drop genes whose variance across training samples is ``<= threshold`` (within any batch too,
    when ``batch`` is given to ``fit``: ComBat cannot scale a gene that is constant in a batch)."""

    def __init__(self, threshold: float = 0.0):
        self.threshold = threshold

    def fit(self, X: Any, y: Any = None, *, batch: Any = None, **_: Any) -> VarianceFilter:
        X, names = as_matrix(X)
        keep = np.nanvar(X, axis=0) > self.threshold
        if batch is not None:
            labels = as_labels(batch, X.shape[0], "batch").astype(str)
            for b in np.unique(labels):
                rows = labels == b
                if rows.sum() > 1:
                    keep &= np.nanvar(X[rows], axis=0) > self.threshold
        self._store(keep, names, "the variance filter")
        return self
