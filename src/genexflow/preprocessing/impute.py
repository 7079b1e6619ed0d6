"""KNN imputation with ``impute::impute.knn`` semantics (Troyanskaya et al. 2001; Hastie et al.).

A port of ``impute/R/allknnimp.R`` and ``src/knnimpute.f`` (impute 1.7x-1.8x). Neighbours are
*genes*; the matrix here is samples x genes (impute.knn takes genes x samples).

What impute.knn does, step by step (and what this port reproduces):

1. A sample with more than ``colmax`` (80%) of its genes missing is an error.
2. Genes with more than ``trunc(rowmax * n_samples)`` missing values are set aside and imputed with
   the *per-sample* mean of the other genes (``mean.miss``: the sample's mean over the kept genes that
   are observed in it).
3. If more than ``maxp`` (1500) genes remain, they are split recursively by two-means clustering into
   clusters of at most ``maxp`` genes; the two starting genes are drawn with ``set.seed(362436069)``
   and ``sample(seq(p), 2)`` (reproduced with R's Mersenne-Twister in :mod:`._rrng`). Quirk kept for
   parity: the clustering sees missing entries as observed zeros (``twomeans.miss`` is called on the
   zero-filled matrix).
4. Within a cluster, the distance between genes ``i`` and ``j`` is the *mean* squared difference over
   the samples where both are observed (1e10 when none are). For a gene with missing values the ``k + 1``
   nearest genes are taken (ties: lower index first) and the first dropped (normally the gene itself).
   A missing entry is the mean of those ``k`` neighbours *that are observed in that sample* (not the
   ``k`` nearest among the observed ones, as scikit-learn's ``KNNImputer`` does); when none is, the
   per-sample mean of step 2. Quirks kept for parity: a cluster of at most ``k`` genes is "mean
   imputed" on the zero-filled matrix, i.e. its missing entries become 0; and the per-sample means are
   computed after ``x[imiss] <- 0`` with an *integer* 0/1 matrix ``imiss``, which R reads as positions,
   so the first sample's mean counts the first kept gene as 0 (found by the real-R parity test); and
   ``meanimp`` fills only matrices of more than one row, so a single set-aside gene keeps 0 where it
   was missing.

Fit on train, apply everywhere: ``fit`` freezes, for every kept gene, its ``k`` neighbours (step 4, in
its cluster, on the training samples) and which genes were set aside (step 2). ``transform`` fills a
new sample's missing entries from its own observed values of those frozen neighbours, falling back to
its per-sample mean; this is a fixed ``(n_genes, k)`` gather, so the torch/ONNX export is exact.
``fit_transform`` is impute.knn on the training matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from genexflow.errors import InputError
from genexflow.preprocessing._rrng import RRandom
from genexflow.preprocessing._utils import as_matrix, check_fitted, check_n_genes, single_threaded_blas

DISMAX = 1e10
_BLOCK = 4_000_000


# --------------------------------------------------------------------------- Fortran ports
def misdis(x0: np.ndarray, m0: np.ndarray, X: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``misdis``: mean squared distance of ``x0`` to each row of ``X`` over co-observed columns."""
    both = M & m0[None, :]
    cnt = both.sum(axis=1)
    ss = np.where(both, (X - x0[None, :]) ** 2, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, ss / np.maximum(cnt, 1), DISMAX)


def twomeans(X: np.ndarray, M: np.ndarray, starters: list[int], maxit: int = 5, eps: float = 1e-3) -> np.ndarray:
    """``twomis``: two-means clustering of rows with missing entries; returns cluster labels 1/2."""
    x0 = [X[starters[0]].copy(), X[starters[1]].copy()]
    m0 = [M[starters[0]].copy(), M[starters[1]].copy()]
    labels = np.ones(X.shape[0], dtype=np.int64)
    it, ratio, dold = 0, 10.0, 0.0
    while it < maxit and ratio > eps:
        it += 1
        d1 = misdis(x0[0], m0[0], X, M)
        d2 = misdis(x0[1], m0[1], X, M)
        labels = np.where(d1 < d2, 1, 2)
        dnew = float(np.where(labels == 1, d1, d2).sum())
        if dnew == 0.0:
            break
        if it == 1:
            dold = dnew * 10.0
        ratio = abs(dnew - dold) / dold
        dold = dnew
        for c in (0, 1):
            rows = labels == c + 1
            Mc = M[rows]
            cnt = Mc.sum(axis=0)
            tot = np.where(Mc, X[rows], 0.0).sum(axis=0)
            x0[c] = np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0)
            m0[c] = cnt > 0
    return labels


def knn_clusters(X0: np.ndarray, k: int, maxp: int, rng: RRandom, max_depth: int = 64) -> list[np.ndarray]:
    """Gene clusters of ``knnimp``/``knnimp.split`` in R's processing order (depth first).

    ``X0`` is the zero-filled genes x samples matrix of the kept genes (``twomeans.miss`` is called on
    it, so all entries count as observed). Returns lists of row positions.
    """
    out: list[np.ndarray] = []
    allobs = np.ones_like(X0, dtype=bool)

    def split(idx: np.ndarray, depth: int) -> None:
        if len(idx) <= maxp:
            out.append(idx)
            return
        if depth >= max_depth:
            raise InputError("impute.knn's two-means splitting does not converge on this data "
                             "(many identical genes?); raise maxp or remove duplicated genes")
        starters = [s - 1 for s in rng.sample(len(idx), 2)]
        labels = twomeans(X0[idx], allobs[idx], starters)
        for c in (1, 2):
            sub = idx[labels == c]
            if len(sub) == 0:
                continue
            if len(sub) <= k:
                out.append(sub)  # size <= k: R's meanimp branch (see module docstring)
            else:
                split(sub, depth + 1)

    split(np.arange(X0.shape[0]), 0)
    return out


def nearest_genes(X: np.ndarray, M: np.ndarray, k: int) -> np.ndarray:
    """For each row (gene) of ``X``, the ``k`` nearest other rows as ``knnimp`` picks them.

    ``k + 1`` nearest by ``misdis`` distance, ties broken by the lower index (``porder``'s strict
    ``<`` insertion), then the first dropped. Candidates are found with a matrix-product distance and
    re-ranked with exact, directly summed distances, so the choice equals the Fortran loop's.

    Parameters
    ----------
    X : ndarray of shape (p, n), zero where missing
    M : ndarray of bool, shape (p, n), True where observed

    Returns
    -------
    ndarray of int64, shape (p, min(k, p - 1)): positions into the rows of ``X``.
    """
    p, n = X.shape
    m = min(k + 1, p)
    extra = min(p, m + 8)
    Mf = M.astype(np.float64)
    X2 = X * X
    out = np.empty((p, m), dtype=np.int64)
    rows = max(1, _BLOCK // max(p, 1))
    for start in range(0, p, rows):
        stop = min(p, start + rows)
        Xb, Mb = X[start:stop], Mf[start:stop]
        cnt = Mb @ Mf.T
        ss = (X2[start:stop]) @ Mf.T + Mb @ X2.T - 2.0 * Xb @ X.T
        with np.errstate(invalid="ignore", divide="ignore"):
            D = np.where(cnt > 0, np.maximum(ss, 0.0) / np.maximum(cnt, 1), DISMAX)
        cand = np.argpartition(D, extra - 1, axis=1)[:, :extra] if extra < p else np.tile(np.arange(p), (stop - start, 1))
        # exact distances of the candidates (direct sums, as the Fortran computes them)
        xi = X[start:stop][:, None, :]
        both = M[start:stop][:, None, :] & M[cand]
        cnt_c = both.sum(axis=2)
        ss_c = np.where(both, (xi - X[cand]) ** 2, 0.0).sum(axis=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            Dc = np.where(cnt_c > 0, ss_c / np.maximum(cnt_c, 1), DISMAX)
        order = np.lexsort((cand, Dc), axis=1)
        best = np.take_along_axis(cand, order, axis=1)
        bestd = np.take_along_axis(Dc, order, axis=1)
        out[start:stop] = best[:, :m]
        if extra < p:
            # a row whose m-th distance might tie with genes outside the candidate pool: sort it fully
            pool_max = np.take_along_axis(D, cand, axis=1).max(axis=1)
            risky = np.flatnonzero(bestd[:, m - 1] >= pool_max - 1e-9 * np.maximum(1.0, np.abs(pool_max)))
            for r in risky:  # rare (duplicated genes); per-row exact fallback
                i = start + r
                d = misdis(X[i], M[i], X, M)
                out[i] = np.lexsort((np.arange(p), d))[:m]
    return out[:, 1:]


def impute_knn(data: Any, k: int = 10, rowmax: float = 0.5, colmax: float = 0.8, maxp: int = 1500,
               rng_seed: int = 362436069) -> np.ndarray:
    """``impute::impute.knn(t(data), k, rowmax, colmax, maxp, rng.seed)$data`` on samples x genes.

    Returns
    -------
    ndarray of shape (n_samples, n_genes) without missing values.
    """
    return KNNImputer(k=k, rowmax=rowmax, colmax=colmax, maxp=maxp, rng_seed=rng_seed).fit_transform(data)


# --------------------------------------------------------------------------- estimator
class KNNImputer(TransformerMixin, BaseEstimator):
    """Gene-neighbour KNN imputation, ``impute.knn`` on the training data and frozen neighbours after.

    Parameters
    ----------
    k : int, default=10
        Number of neighbour genes.
    rowmax : float, default=0.5
        Genes with more than this fraction of missing samples get the per-sample mean.
    colmax : float, default=0.8
        A sample with more than this fraction of missing genes is an error.
    maxp : int, default=1500
        Largest gene block handled without two-means splitting.
    rng_seed : int, default=362436069
        impute.knn's ``rng.seed`` for the splitting.

    Attributes
    ----------
    neighbors_ : ndarray of int64, shape (n_genes, k)
        Frozen neighbour genes (column positions); -1 pads genes in clusters of fewer than ``k + 1``
        genes and rows of set-aside genes.
    mean_imputed_ : ndarray of bool, shape (n_genes,)
        Genes set aside for per-sample mean imputation (too many missing values in training).
    clusters_ : list of ndarray
        Gene clusters (column positions) in R's processing order.
    training_missing_ : int
        Number of missing entries in the training data.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(8, 30)) + np.arange(30)
    >>> X[2, 5] = np.nan
    >>> out = KNNImputer(k=3).fit_transform(X)
    >>> bool(np.isfinite(out).all()) and bool(abs(out[2, 5] - 5) < 3)
    True
    """

    def __init__(self, k: int = 10, rowmax: float = 0.5, colmax: float = 0.8, maxp: int = 1500,
                 rng_seed: int = 362436069):
        self.k = k
        self.rowmax = rowmax
        self.colmax = colmax
        self.maxp = maxp
        self.rng_seed = rng_seed

    def fit(self, X: Any, y: Any = None, **_: Any) -> KNNImputer:
        """Freeze neighbour genes and set-aside genes from training data (n_samples, n_genes)."""
        self._fit(X)
        return self

    def fit_transform(self, X: Any, y: Any = None, **_: Any) -> np.ndarray:
        """``impute.knn`` on the training matrix (including its quirks, see the module docstring)."""
        Xa = self._fit(X)
        out = self._fill(Xa, r_mean_quirk=True)
        small = np.zeros(Xa.shape[1], dtype=bool)
        for c in self.clusters_:
            if len(c) <= self.k and len(self.clusters_) > 1:
                small[c] = True
        if small.any():  # R's meanimp() on a zero-filled block leaves zeros
            miss = np.isnan(Xa) & small[None, :]
            out[miss] = 0.0
        return out

    def _fit(self, X: Any) -> np.ndarray:
        with single_threaded_blas():
            return self._fit_blas(X)

    def _fit_blas(self, X: Any) -> np.ndarray:
        X, names = as_matrix(X)
        n, G = X.shape
        if not (isinstance(self.k, int | np.integer) and self.k >= 1):
            raise InputError(f"k must be a positive integer, got {self.k!r}")
        if G <= self.k:
            raise InputError(f"KNN imputation with k={self.k} needs more than {self.k} genes, got {G}")
        miss = np.isnan(X)
        self._check_samples(miss)
        imax = int(self.rowmax * n)  # trunc(maxmiss * n)
        aside = miss.sum(axis=0) > imax
        kept = np.flatnonzero(~aside)
        if len(kept) <= self.k:
            raise InputError(f"only {len(kept)} genes have at most {self.rowmax:.0%} missing values; "
                             f"KNN imputation with k={self.k} needs more (lower k or raise rowmax)")
        Xg = np.where(miss, 0.0, X).T[kept]  # genes x samples, zero-filled (as knnimp does)
        Mg = ~miss.T[kept]
        if len(kept) <= self.maxp:
            clusters = [np.arange(len(kept))]
        else:
            clusters = knn_clusters(Xg, self.k, self.maxp, RRandom(self.rng_seed))
        neighbors = np.full((G, self.k), -1, dtype=np.int64)
        for c in clusters:
            if len(c) < 2:
                continue
            nb = nearest_genes(Xg[c], Mg[c], self.k)  # positions within the cluster
            neighbors[kept[c], : nb.shape[1]] = kept[c][nb]
        self.neighbors_ = neighbors
        self.mean_imputed_ = aside
        self.clusters_ = [kept[c] for c in clusters]
        self.training_missing_ = int(miss.sum())
        self.n_features_in_ = G
        if names is not None:
            self.feature_names_in_ = names
        return X

    def _check_samples(self, miss: np.ndarray) -> None:
        frac = miss.mean(axis=1)
        bad = np.flatnonzero(miss.sum(axis=1) > self.colmax * miss.shape[1])
        if len(bad):
            raise InputError(
                f"{len(bad)} samples have more than {self.colmax:.0%} missing values (rows "
                f"{', '.join(map(str, bad[:5]))}, worst {frac[bad].max():.0%}); remove them or raise colmax"
            )

    def transform(self, X: Any) -> np.ndarray:
        """Fill missing values of new samples from their frozen neighbour genes; shape kept."""
        check_fitted(self, "neighbors_")
        X, names = as_matrix(X)
        check_n_genes(self, X, names)
        self._check_samples(np.isnan(X))
        return self._fill(X)

    def _fill(self, X: np.ndarray, r_mean_quirk: bool = False) -> np.ndarray:
        miss = np.isnan(X)
        out = X.copy()
        if not miss.any():
            return out
        kept = ~self.mean_imputed_
        X0 = np.where(miss, 0.0, X)
        obs = ~miss
        # per-sample mean over the kept genes observed in it (mean.miss)
        cnt = (obs & kept).sum(axis=1)
        if (cnt == 0).any():
            raise InputError("a sample has no observed value among the imputable genes; remove it")
        if r_mean_quirk and (miss & kept).any():
            # impute 1.72's knnimp passes its integer missingness matrix (of the kept genes) to mean.miss,
            # whose `x[imiss] <- 0` then indexes by position: element [1, 1] (first kept gene, first
            # sample) becomes 0 while still counted as observed, so sample 1's fallback mean uses 0 for it
            # (mean.miss works on its own copy: the neighbour averages below still see the real value)
            Xm = X0.copy()
            Xm[0, np.flatnonzero(kept)[0]] = 0.0
        else:
            Xm = X0
        xbar = (Xm * kept).sum(axis=1) / cnt
        s, g = np.nonzero(miss)
        nb = self.neighbors_[g]  # (m, k)
        valid = nb >= 0
        nbc = np.where(valid, nb, 0)
        w = obs[s[:, None], nbc] & valid
        tot = np.where(w, X0[s[:, None], nbc], 0.0).sum(axis=1)
        num = w.sum(axis=1)
        val = np.where(num > 0, tot / np.maximum(num, 1), xbar[s])
        aside = self.mean_imputed_[g]
        if r_mean_quirk and self.mean_imputed_.sum() == 1:
            # knnimp's meanimp() only fills a matrix of more than one row: a single set-aside gene keeps
            # the zeros knnimp wrote into its missing entries
            val = np.where(aside, 0.0, val)
        else:
            val = np.where(aside, xbar[s], val)
        out[s, g] = val
        return out
