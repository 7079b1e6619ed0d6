"""Library-size normalization with edgeR numerics: CPM, log-CPM, TMM; plus TPM, FPKM and log2(x+1).

Ports of edgeR (4.x; the algorithms below are unchanged since edgeR 3.26):

* ``calcNormFactors(method="TMM")`` (``R/calcNormFactors.R``): the reference library is the one whose
  upper-quartile fraction (R ``quantile`` type 7 on genes with a non-zero count somewhere) is closest to
  the mean of those fractions (the one with the largest ``sum(sqrt(counts))`` when the median fraction is
  ~0). Each library's factor is a weighted mean of log-ratios against the reference over genes with
  positive counts in both, trimmed by *average ranks*: keep ranks in ``[floor(n * 0.3) + 1, n - floor(n *
  0.3)]`` of ``M`` and ``[floor(n * 0.05) + 1, n - floor(n * 0.05)]`` of ``A``, weights ``1 / v`` with the
  delta-method variance ``v = (N_o - o)/(N_o o) + (N_r - r)/(N_r r)``. Factors are divided by their
  geometric mean.
* ``cpm(log=TRUE, prior.count=2)`` (``src/compute_cpm.c``): the prior is scaled per library by
  ``lib.size / mean(lib.size)`` and twice that prior is added to the library size:
  ``log2((y + p_j) / (L_j + 2 p_j) * 1e6)`` with ``p_j = prior.count * L_j / mean(L)`` and ``L_j`` the
  effective (TMM-scaled) library size.

Fit on training samples, apply everywhere: ``fit`` freezes the TMM reference library, the geometric-mean
constant and the mean library size used to scale the prior, so ``fit_transform`` on the training
samples equals edgeR on them and a new sample is normalized without looking at other new samples.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, TransformerMixin

from genexflow.errors import InputError
from genexflow.preprocessing._utils import as_matrix, check_finite, check_fitted, check_n_genes

LOG2_1E6 = np.log2(1e6)


# --------------------------------------------------------------------------- pure edgeR functions
def check_counts(X: np.ndarray, what: str = "count matrix", names=None) -> None:
    check_finite(X, what, names, hint="counts cannot be missing; impute or drop those genes")
    check_nonnegative(X, what)


def check_nonnegative(X: np.ndarray, what: str = "count matrix") -> None:
    if (X < 0).any():
        raise InputError(f"{what} has negative values; CPM/TMM need raw non-negative counts")


def upper_quartile_fractions(X: np.ndarray, lib_size: np.ndarray, p: float = 0.75) -> np.ndarray:
    """edgeR ``.calcFactorQuantile``: per-sample ``quantile(counts, p) / lib.size`` (R type 7).

    ``X`` is (n_samples, n_genes); genes with zero counts in every sample are dropped first, as
    ``calcNormFactors`` does. Missing values (only allowed in :class:`CPMNormalizer`) are skipped.
    """
    keep = (X > 0).any(axis=0)
    return np.nanquantile(X[:, keep], p, axis=1) / lib_size


def tmm_reference_column(X: np.ndarray, lib_size: np.ndarray) -> int:
    """The reference library of ``calcNormFactors(method="TMM")`` (0-based row of ``X``)."""
    f75 = upper_quartile_fractions(X, lib_size)
    if np.median(f75) < 1e-20:
        keep = (X > 0).any(axis=0)
        return int(np.argmax(np.sqrt(X[:, keep]).sum(axis=1)))
    return int(np.argmin(np.abs(f75 - f75.mean())))


def tmm_factors_vs_reference(
    X: np.ndarray, lib_size: np.ndarray, ref: np.ndarray, ref_lib_size: float,
    logratio_trim: float = 0.3, sum_trim: float = 0.05, do_weighting: bool = True, a_cutoff: float = -1e10,
) -> np.ndarray:
    """edgeR ``.calcFactorTMM`` of every row of ``X`` against one reference library (unnormalized).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_genes)
    lib_size : ndarray of shape (n_samples,)
    ref : ndarray of shape (n_genes,)
        Reference library counts.
    ref_lib_size : float

    Returns
    -------
    ndarray of shape (n_samples,)
        ``2 ** (trimmed weighted mean of log-ratios)``, before division by the geometric mean.
    """
    nO = lib_size[:, None]
    nR = float(ref_lib_size)
    with np.errstate(divide="ignore", invalid="ignore"):
        logR = np.log2((X / nO) / (ref / nR))
        absE = (np.log2(X / nO) + np.log2(ref / nR)) / 2
        v = (nO - X) / nO / X + (nR - ref) / nR / ref
    fin = np.isfinite(logR) & np.isfinite(absE) & (absE > a_cutoff)
    n = fin.sum(axis=1)
    # ranks among the finite genes only, ties averaged (R rank()); non-finite entries get NaN
    rL = rankdata(np.where(fin, logR, np.nan), axis=1, nan_policy="omit")
    rE = rankdata(np.where(fin, absE, np.nan), axis=1, nan_policy="omit")
    loL = np.floor(n * logratio_trim) + 1
    hiL = n + 1 - loL
    loS = np.floor(n * sum_trim) + 1
    hiS = n + 1 - loS
    keep = fin & (rL >= loL[:, None]) & (rL <= hiL[:, None]) & (rE >= loS[:, None]) & (rE <= hiS[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.where(keep, logR, 0.0)
        if do_weighting:
            w = np.where(keep, 1.0 / v, 0.0)
            f = (lr * w).sum(axis=1) / w.sum(axis=1)
        else:
            f = lr.sum(axis=1) / keep.sum(axis=1)
    f = np.where(np.isnan(f), 0.0, f)  # no shared positive genes: factor 1, as edgeR
    maxabs = np.where(fin, np.abs(logR), 0.0).max(axis=1)
    f = np.where(maxabs < 1e-6, 0.0, f)  # identical libraries (or none finite): factor 1
    return 2.0**f


def calc_norm_factors(
    X: Any, lib_size: np.ndarray | None = None, logratio_trim: float = 0.3, sum_trim: float = 0.05,
    do_weighting: bool = True, a_cutoff: float = -1e10, ref_column: int | None = None,
    method: Literal["TMM", "upperquartile", "RLE", "none"] = "TMM", p: float = 0.75,
) -> np.ndarray:
    """``edgeR::calcNormFactors(t(X), method=method)`` (edgeR 3.40).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_genes)
        Raw counts, samples as rows.
    lib_size : ndarray of shape (n_samples,), optional
        Defaults to the row sums.
    method : {"TMM", "upperquartile", "RLE", "none"}
        TMM (trimmed mean of M-values against a reference library), upper quartile (the ``p`` quantile
        of each library over the genes not zero everywhere, over its library size), RLE (median ratio to
        the genes' geometric means, DESeq style, over the library size), or all ones.
    p : float, default=0.75
        Quantile of ``method="upperquartile"``.

    Returns
    -------
    ndarray of shape (n_samples,)
        Normalization factors with geometric mean 1.

    Examples
    --------
    >>> X = np.array([[10, 20, 30, 0], [20, 40, 60, 5], [5, 10, 20, 1]])
    >>> calc_norm_factors(X).round(4).tolist()
    [1.0772, 1.0341, 0.8977]
    """
    X, _ = as_matrix(X, "count matrix")
    check_counts(X)
    if method not in ("TMM", "upperquartile", "RLE", "none"):
        raise InputError(f"method must be TMM, upperquartile, RLE or none, got {method!r}")
    lib_size = X.sum(axis=1) if lib_size is None else np.asarray(lib_size, np.float64)
    if X.shape[0] == 1 or not (X > 0).any() or method == "none":
        return np.ones(X.shape[0])
    if method == "upperquartile":
        f = upper_quartile_fractions(X, lib_size, p)
        return f / np.exp(np.mean(np.log(f)))
    if method == "RLE":
        Xk = X[:, (X > 0).any(axis=0)]
        with np.errstate(divide="ignore"):
            gm = np.exp(np.log(Xk).mean(axis=0))  # 0 for a gene with a zero anywhere: left out below
        f = np.median(Xk[:, gm > 0] / gm[gm > 0], axis=1) / lib_size
        return f / np.exp(np.mean(np.log(f)))
    ref = tmm_reference_column(X, lib_size) if ref_column is None else int(ref_column)
    f = tmm_factors_vs_reference(X, lib_size, X[ref], lib_size[ref], logratio_trim, sum_trim,
                                 do_weighting, a_cutoff)
    return f / np.exp(np.mean(np.log(f)))


def cpm(X: Any, lib_size: np.ndarray | None = None, log: bool = False, prior_count: float = 2.0,
        mean_lib_size: float | None = None) -> np.ndarray:
    """``edgeR::cpm`` on a samples x genes matrix.

    ``log=True``: ``log2((y + p_j) / (L_j + 2 p_j) * 1e6)``, ``p_j = prior_count * L_j / mean(L)``.
    ``mean_lib_size`` freezes ``mean(L)`` (the training value) for new samples.

    Returns
    -------
    ndarray of shape (n_samples, n_genes)
    """
    X, _ = as_matrix(X, "count matrix")
    check_counts(X)
    L = X.sum(axis=1) if lib_size is None else np.asarray(lib_size, np.float64)
    if (L <= 0).any():
        raise InputError(f"{int((L <= 0).sum())} samples have library size 0; remove empty libraries")
    return _cpm_values(X, L, log, prior_count, mean_lib_size)


def _cpm_values(X, L, log, prior_count, mean_lib_size=None) -> np.ndarray:
    if not log:
        return X * (1e6 / L[:, None])  # as edgeR's calculate_cpm_raw (same rounding)
    ave = L.mean() if mean_lib_size is None else float(mean_lib_size)
    prior = prior_count * L / ave
    return (np.log(X + prior[:, None]) - np.log(L + 2 * prior)[:, None] + np.log(1e6)) / np.log(2)


# --------------------------------------------------------------------------- estimators
class CPMNormalizer(TransformerMixin, BaseEstimator):
    """Counts per million (optionally log2 with edgeR's prior) with optional TMM factors.

    Parameters
    ----------
    log : bool, default=True
        log-CPM with edgeR's library-size-scaled prior count.
    prior_count : float, default=2.0
        edgeR ``prior.count``.
    tmm : bool, default=True
        Scale library sizes by TMM factors (``calcNormFactors``) against the frozen training reference.
    logratio_trim, sum_trim, do_weighting, a_cutoff :
        edgeR TMM settings (``logratioTrim=0.3, sumTrim=0.05, doWeighting=TRUE, Acutoff=-1e10``).

    Attributes
    ----------
    norm_factors_ : ndarray of shape (n_train_samples,)
        TMM factors of the training samples (edgeR's ``norm.factors``; ones without TMM).
    ref_counts_ : ndarray of shape (n_genes,)
        Counts of the TMM reference library; ``ref_lib_size_`` its library size.
    ref_index_ : int
        Row of the reference library in the training matrix.
    factor_scale_ : float
        Geometric mean of the raw training factors; new factors are divided by it.
    mean_lib_size_ : float
        Mean effective library size of the training samples, used to scale the prior.

    Examples
    --------
    >>> X = np.array([[10, 20, 30, 0], [20, 40, 60, 5], [5, 10, 20, 1]])
    >>> CPMNormalizer(tmm=False, log=False).fit_transform(X)[0].round(1).tolist()
    [166666.7, 333333.3, 500000.0, 0.0]
    """

    def __init__(self, log: bool = True, prior_count: float = 2.0, tmm: bool = True,
                 logratio_trim: float = 0.3, sum_trim: float = 0.05, do_weighting: bool = True,
                 a_cutoff: float = -1e10):
        self.log = log
        self.prior_count = prior_count
        self.tmm = tmm
        self.logratio_trim = logratio_trim
        self.sum_trim = sum_trim
        self.do_weighting = do_weighting
        self.a_cutoff = a_cutoff

    def fit(self, X: Any, y: Any = None, **_: Any) -> CPMNormalizer:
        """Freeze the TMM reference and the library-size scale from training counts (n_samples, n_genes).

        Missing counts (NaN; edgeR rejects them) are left out of library sizes and TMM and stay missing
        in the output, for the imputer that follows in a pipeline.
        """
        X, names = as_matrix(X, "count matrix")
        check_nonnegative(X)
        lib = np.nansum(X, axis=1)
        if (lib <= 0).any():
            raise InputError(f"{int((lib <= 0).sum())} samples have no counts; remove empty libraries")
        self.n_features_in_ = X.shape[1]
        if names is not None:
            self.feature_names_in_ = names
        if self.tmm and X.shape[0] > 1 and (X > 0).any():
            ref = tmm_reference_column(X, lib)
            raw = self._raw_factors(X, lib, X[ref], lib[ref])
            self.ref_index_ = ref
            self.ref_counts_ = np.nan_to_num(X[ref], nan=0.0)  # a missing reference count: gene left out
            self.ref_lib_size_ = float(lib[ref])
            self.factor_scale_ = float(np.exp(np.mean(np.log(raw))))
        else:
            raw = np.ones(X.shape[0])
            self.ref_index_ = -1
            self.ref_counts_ = None
            self.ref_lib_size_ = float("nan")
            self.factor_scale_ = 1.0
        self.norm_factors_ = raw / self.factor_scale_
        self.mean_lib_size_ = float((lib * self.norm_factors_).mean())
        return self

    def _raw_factors(self, X, lib, ref, ref_lib) -> np.ndarray:
        return tmm_factors_vs_reference(X, lib, ref, ref_lib, self.logratio_trim, self.sum_trim,
                                        self.do_weighting, self.a_cutoff)

    def norm_factors(self, X: np.ndarray) -> np.ndarray:
        """TMM factors of new samples against the frozen reference, shape (n_samples,)."""
        check_fitted(self, "norm_factors_")
        if self.ref_counts_ is None:
            return np.ones(X.shape[0])
        return self._raw_factors(X, np.nansum(X, axis=1), self.ref_counts_, self.ref_lib_size_) / self.factor_scale_

    def transform(self, X: Any) -> np.ndarray:
        """(log-)CPM of counts of shape (n_samples, n_genes) -> float64 of the same shape."""
        check_fitted(self, "norm_factors_")
        X, names = as_matrix(X, "count matrix")
        check_n_genes(self, X, names)
        check_nonnegative(X)
        lib = np.nansum(X, axis=1)
        if (lib <= 0).any():
            raise InputError(f"{int((lib <= 0).sum())} samples have no counts; remove empty libraries")
        eff = lib * self.norm_factors(X)
        return _cpm_values(X, eff, self.log, self.prior_count, self.mean_lib_size_)


class Log2p1(TransformerMixin, BaseEstimator):
    """``log2(x + 1)`` (for TPM/FPKM or other non-negative values). Stateless apart from the gene count."""

    def fit(self, X: Any, y: Any = None, **_: Any) -> Log2p1:
        X, names = as_matrix(X)
        self.n_features_in_ = X.shape[1]
        if names is not None:
            self.feature_names_in_ = names
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_fitted(self, "n_features_in_")
        X, names = as_matrix(X)
        check_n_genes(self, X, names)
        if (X[np.isfinite(X)] <= -1).any():
            raise InputError("log2(x + 1) needs values > -1; is the input already on a log scale?")
        return np.log2(X + 1.0)


class LengthNormalizer(TransformerMixin, BaseEstimator):
    """TPM or FPKM from raw counts and gene lengths (bp).

    TPM: ``rate = count / length``, ``TPM = rate / sum(rate) * 1e6``.
    FPKM: ``count * 1e9 / (length * library size)`` (edgeR ``rpkm`` without norm factors).

    Parameters
    ----------
    gene_lengths : array-like of shape (n_genes,) or Series indexed by gene ID
        A Series is aligned to the matrix columns (``feature_names_in_``) at fit.
    unit : {"tpm", "fpkm"}
    """

    def __init__(self, gene_lengths: Any = None, unit: Literal["tpm", "fpkm"] = "tpm"):
        self.gene_lengths = gene_lengths
        self.unit = unit

    def fit(self, X: Any, y: Any = None, **_: Any) -> LengthNormalizer:
        X, names = as_matrix(X, "count matrix")
        if self.unit not in ("tpm", "fpkm"):
            raise InputError(f"unit must be 'tpm' or 'fpkm', got {self.unit!r}")
        if self.gene_lengths is None:
            raise InputError("TPM/FPKM need gene lengths (--gene-lengths FILE with gene_id and length)")
        lengths = self.gene_lengths
        if isinstance(lengths, pd.Series):
            if names is None:
                raise InputError("gene lengths given by gene ID need a DataFrame input with gene columns")
            aligned = lengths.reindex(names)
            missing = aligned.index[aligned.isna()]
            if len(missing):
                raise InputError(f"no gene length for {len(missing)} genes (e.g. {', '.join(missing[:5])}); "
                                 "filter them out or supply lengths for them")
            lengths = aligned.to_numpy(np.float64)
        lengths = np.asarray(lengths, np.float64)
        if lengths.shape != (X.shape[1],):
            raise InputError(f"{len(lengths)} gene lengths for {X.shape[1]} genes")
        if not (lengths > 0).all():
            raise InputError("gene lengths must be positive")
        self.lengths_ = lengths
        self.n_features_in_ = X.shape[1]
        if names is not None:
            self.feature_names_in_ = names
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_fitted(self, "lengths_")
        X, names = as_matrix(X, "count matrix")
        check_n_genes(self, X, names)
        check_counts(X, names=names)
        if self.unit == "tpm":
            rate = X / self.lengths_
            return rate / rate.sum(axis=1, keepdims=True) * 1e6
        lib = X.sum(axis=1, keepdims=True)
        return X * 1e9 / (self.lengths_ * lib)


SHIPPED_LENGTHS = {"hg19": "hg19_gene_lengths.csv.gz"}


def read_gene_lengths(path: str | Path, column: str | None = None) -> pd.Series:
    """Gene lengths from a CSV/TSV/Parquet file: a gene column (``gene_id``/``gene``) and a length column.

    ``path="hg19"`` reads the shipped hg19 table (geneLenDataBase median transcript lengths for gene
    symbols, Ensembl and Entrez IDs; see ``preprocessing/data/README.md``). The length column is
    ``column`` or the first of ``length``, ``median_length`` (the shared hg19 tables, goseq
    convention), ``mean_length``, ``effective_length``.
    """
    if str(path) in SHIPPED_LENGTHS:
        path = Path(str(files("genexflow.preprocessing") / "data" / SHIPPED_LENGTHS[str(path)]))
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: gene length file not found")
    if path.suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path, sep="\t" if path.name.endswith((".tsv", ".txt", ".tsv.gz", ".txt.gz")) else ",")
    gcol = next((c for c in df.columns if str(c).lower() in ("gene_id", "gene", "symbol", "id")), df.columns[0])
    candidates = [column] if column else ["length", "median_length", "mean_length", "effective_length"]
    lcol = next((c for c in candidates if c in df.columns), None)
    if lcol is None:
        raise InputError(f"{path}: no length column (tried {', '.join(candidates)}; columns: "
                         f"{', '.join(map(str, df.columns))})")
    s = pd.Series(df[lcol].to_numpy(np.float64), index=df[gcol].astype(str), name="length")
    return s[~s.index.duplicated()]
