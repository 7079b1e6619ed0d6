"""Pathway scores ``p_k = mean expression of the member genes of set k`` as a scikit-learn transformer.

Used by monitoring (drift on pathway scores) and by the baselines (pathway-level features).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin

from genexflow.errors import InputError, NotFittedError
from genexflow.priors.genesets import load_gene_sets, membership_matrix, restrict_gene_sets


def _as_frame_or_array(X: Any) -> tuple[np.ndarray | pd.DataFrame, list[str] | None]:
    if hasattr(X, "frame") and hasattr(X, "genes") and hasattr(X, "X"):  # a Cohort
        return X.frame(), list(X.genes)
    if isinstance(X, pd.DataFrame):
        return X, [str(c) for c in X.columns]
    return np.asarray(X), None


class PathwayScorer(TransformerMixin, BaseEstimator):
    """Score every gene set as the mean (preprocessed, log-scale) expression of its member genes.

    ``p_k(x) = (1 / |S_k|) Σ_{g ∈ S_k} x_g``; missing values (NaN, or genes absent at transform time) are
    left out of the mean, and a set with no observed member scores NaN.

    Parameters
    ----------
    gene_sets : str, Path or mapping of str to list of str
        ``"kegg"``, ``"go_bp"``, ``"progeny"``, a GMT path, or the sets themselves.
    id_type : {"symbol", "entrez"}
        ID type of the shipped collections.
    min_size, max_size : int
        Bounds on the number of set members present in the training genes (sets outside are dropped).
    genes : sequence of str, optional
        Gene IDs of the columns when ``fit`` gets a plain array (a DataFrame or Cohort names its own).

    Attributes
    ----------
    genes_ : list of str
        Training genes (column order expected for array input).
    pathways_ : list of str
        Names of the scored sets, the output columns.
    gene_sets_ : dict of str to list of str
        The sets restricted to ``genes_``.
    membership_ : scipy.sparse.csr_matrix of shape (n_genes, n_pathways)
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> X = pd.DataFrame(np.arange(6.0).reshape(2, 3), columns=["a", "b", "c"])
    >>> PathwayScorer({"s1": ["a", "b"], "s2": ["b", "c"]}, min_size=2).fit_transform(X).tolist()
    [[0.5, 1.5], [3.5, 4.5]]
    """

    def __init__(
        self,
        gene_sets: str | Path | Mapping[str, Sequence[str]] = "kegg",
        id_type: str = "symbol",
        min_size: int = 5,
        max_size: int | None = None,
        genes: Sequence[str] | None = None,
    ):
        self.gene_sets = gene_sets
        self.id_type = id_type
        self.min_size = min_size
        self.max_size = max_size
        self.genes = genes

    def fit(self, X: Any, y: Any = None) -> PathwayScorer:
        """Restrict the gene sets to the genes of ``X`` (n_samples, n_genes) and build the membership."""
        data, names = _as_frame_or_array(X)
        if names is None:
            if self.genes is None:
                raise InputError("PathwayScorer.fit got a plain array; pass genes= or a DataFrame with gene columns")
            names = [str(g) for g in self.genes]
        if data.ndim != 2 or data.shape[1] != len(names):
            raise InputError(f"X has shape {data.shape} but {len(names)} gene names")
        sets = (self.gene_sets if isinstance(self.gene_sets, Mapping)
                else load_gene_sets(self.gene_sets, id_type=self.id_type))
        kept = restrict_gene_sets(sets, names, min_size=self.min_size, max_size=self.max_size)
        if not kept:
            raise InputError(
                f"no gene set has >= {self.min_size} of the {len(names)} cohort genes; check the gene ID type "
                f"({self.id_type}) or lower min_size"
            )
        self.genes_ = names
        self.gene_sets_ = kept
        self.pathways_ = list(kept)
        self.membership_ = sp.csr_matrix(membership_matrix(kept, names, dtype=np.float64))
        self.n_features_in_ = len(names)
        if isinstance(data, pd.DataFrame):
            self.feature_names_in_ = np.asarray(names, dtype=object)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Pathway scores, ndarray of shape (n_samples, n_pathways) (float64)."""
        if not hasattr(self, "membership_"):
            raise NotFittedError("PathwayScorer is not fitted; call fit(X_train) first")
        data, names = _as_frame_or_array(X)
        if names is not None:
            # Select by name: new cohorts may order genes differently or lack some (those count as missing).
            arr = data.reindex(columns=self.genes_).to_numpy(dtype=np.float64)
        else:
            arr = np.asarray(data, dtype=np.float64)
            if arr.ndim != 2 or arr.shape[1] != self.n_features_in_:
                raise InputError(f"X has {arr.shape[-1]} columns; the scorer was fitted on {self.n_features_in_} genes")
        M = self.membership_
        observed = ~np.isnan(arr)
        if observed.all():
            sums = np.asarray(M.T @ arr.T).T
            counts = np.broadcast_to(np.asarray(M.sum(0)).ravel(), sums.shape)
        else:
            sums = np.asarray(M.T @ np.where(observed, arr, 0.0).T).T
            counts = np.asarray(M.T @ observed.T.astype(np.float64)).T
        out = np.full(sums.shape, np.nan)
        np.divide(sums, counts, out=out, where=counts > 0)
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        if not hasattr(self, "pathways_"):
            raise NotFittedError("PathwayScorer is not fitted; call fit(X_train) first")
        return np.asarray(self.pathways_, dtype=object)
