"""Harmony batch integration (Korsunsky et al. 2019) on a PCA embedding, with a frozen mapping for
new samples (as symphony maps queries onto a reference; Kang et al. 2021).

:func:`run_harmony` is the algorithm of R ``harmony`` 1.x / ``harmonypy`` 2.x ("harmony2"), vectorized
over cells with numpy:

1. cosine-normalize the embedding ``Z`` (rows), k-means centroids ``Y`` (unit rows), soft assignment
   ``R = softmax(-2 (1 - Z_cos Y^T) / sigma)``; ``O`` (clusters x batches) the observed and
   ``E = rowsum(R) Pr_b`` the expected batch counts per cluster;
2. each Harmony iteration: (a) reassign cells in random blocks of 5% with the diversity penalty
   ``theta_b (log(2 E + 1) - log(O + E + 1))`` added to the logits of each of the cell's batches (E and
   O frozen within a block), ``max_iter_kmeans`` passes; (b) per cluster ``k`` a ridge regression of the
   original coordinates on ``[1, batch indicators]`` weighted by ``R[:, k]``, penalty
   ``lambda_b = alpha E[k, b]`` on the batch terms (harmony2's automatic lambda), the intercept
   unpenalized: the intercept is the new centroid, the batch terms ``M_b[k]`` are removed,
   ``Z_corr = Z - sum_k R[:, k] M_{batch}[k]``; (c) stop when the objective improves by less than
   ``epsilon_harmony`` (relative).

The random parts (k-means start, block order) use numpy's generator, not harmonypy's ``mt19937``, so
results agree with harmonypy statistically, not bit for bit; the agreement is measured in
``tests/test_preprocessing_harmony_reference.py`` and ``docs/preprocessing.md``.

:class:`Harmony` is the estimator the pipeline uses: PCA of the normalized expression (fitted on the
training rows), Harmony on the scores with the batch and any categorical covariates (one ``theta``
each), then the frozen map:

* a new sample's scores ``z = (x - mean) V^T`` are assigned softly to the fitted centroids with the fitted
  ``sigma`` (no diversity penalty: it needs the other samples), corrected with the fitted per-cluster
  corrections of its batch, and reassigned from the corrected position, ``map_iter`` times;
* the correction goes back to gene space through the fitted loadings:
  ``x_corrected = x - (z - z_corrected) V`` (only the top-PC subspace changes; the residual outside it is
  left as it was).

The training rows go through the same map (``fit_transform == fit().transform``), so training, CV,
serving and batch scoring apply exactly one fitted function. :class:`HarmonyOp` is that function as an
ONNX-exportable torch module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import KMeans
from torch import nn

from genexflow.errors import InputError
from genexflow.preprocessing._utils import (
    as_labels,
    as_matrix,
    check_finite,
    check_fitted,
    check_n_genes,
)


# --------------------------------------------------------------------------- the algorithm
@dataclass
class HarmonyResult:
    """What :func:`run_harmony` fitted.

    Attributes
    ----------
    Z_corr : ndarray of shape (n_samples, n_dims)
        Corrected embedding.
    R : ndarray of shape (n_samples, n_clusters)
        Soft cluster assignments of the last iteration.
    Y : ndarray of shape (n_clusters, n_dims)
        Unit-length centroids (the ridge intercepts of the last iteration, normalized).
    M : ndarray of shape (n_batches, n_clusters, n_dims)
        Per-cluster correction of each batch level (all variables' levels stacked; zero where a cluster
        does not correct a batch).
    sigma : ndarray of shape (n_clusters,)
    objective : list of float
        Harmony objective after initialization and each iteration.
    n_iter : int
    converged : bool
    """

    Z_corr: np.ndarray
    R: np.ndarray
    Y: np.ndarray
    M: np.ndarray
    sigma: np.ndarray
    objective: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False


def _unit_rows(X: np.ndarray) -> np.ndarray:
    norm = np.sqrt((X * X).sum(axis=1, keepdims=True))
    return X / np.where(norm > 0, norm, 1.0)


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def soft_assign(Z: np.ndarray, Y: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``softmax(-2 (1 - cos(z, y_k)) / sigma_k)`` over clusters, shape (n_samples, n_clusters)."""
    return _softmax_rows(-2.0 * (1.0 - _unit_rows(Z) @ Y.T) / sigma)


def run_harmony(
    Z: np.ndarray,
    codes: np.ndarray,
    n_levels: list[int],
    theta: np.ndarray | float = 2.0,
    sigma: float = 0.1,
    nclust: int | None = None,
    alpha: float = 0.2,
    max_iter_harmony: int = 10,
    max_iter_kmeans: int = 4,
    epsilon_cluster: float = 1e-3,
    epsilon_harmony: float = 1e-2,
    block_size: float = 0.05,
    batch_prop_cutoff: float = 1e-5,
    random_state: int = 0,
) -> HarmonyResult:
    """Harmony on an embedding (``harmonypy.run_harmony`` defaults, lambda estimated from ``alpha``).

    Parameters
    ----------
    Z : ndarray of shape (n_samples, n_dims)
        Embedding (e.g. PCA scores).
    codes : ndarray of int, shape (n_samples, n_variables)
        Level of each sample for each batch variable, ``0 .. n_levels[v] - 1``.
    n_levels : list of int
        Levels per variable.
    theta : float or ndarray of shape (n_variables,)
        Diversity penalty per variable.
    sigma, nclust, alpha, max_iter_harmony, max_iter_kmeans, epsilon_cluster, epsilon_harmony,
    block_size, batch_prop_cutoff, random_state :
        As in harmonypy. ``nclust`` defaults to ``min(round(n / 30), 100)`` (at least 1).

    Returns
    -------
    HarmonyResult
    """
    Z = np.asarray(Z, dtype=np.float64)
    N, d = Z.shape
    codes = np.asarray(codes, dtype=np.int64).reshape(N, -1)
    n_var = codes.shape[1]
    offsets = np.concatenate([[0], np.cumsum(n_levels)[:-1]]).astype(np.int64)
    B = int(np.sum(n_levels))
    cols = codes + offsets  # (N, n_var) stacked level index of each variable
    Phi = np.zeros((N, B))
    Phi[np.arange(N)[:, None], cols] = 1.0
    batch_sizes = Phi.sum(axis=0)
    level_rows = [np.flatnonzero(Phi[:, b]) for b in range(B)]
    combos, combo_of = np.unique(cols, axis=0, return_inverse=True)
    combo_onehot = np.zeros((N, len(combos)))
    combo_onehot[np.arange(N), combo_of.reshape(-1)] = 1.0
    combo_phi = np.zeros((len(combos), B))
    combo_phi[np.arange(len(combos))[:, None], combos] = 1.0
    Pr_b = batch_sizes / N
    theta_v = np.broadcast_to(np.asarray(theta, dtype=np.float64), (n_var,))
    theta_b = np.repeat(theta_v, n_levels)
    level_var = np.repeat(np.arange(n_var), n_levels)
    K = int(nclust) if nclust is not None else max(1, int(min(round(N / 30.0), 100)))
    K = min(K, N)
    sig = np.full(K, float(sigma))
    rng = np.random.default_rng(random_state)

    Z_cos = _unit_rows(Z)
    if K > 1:
        km = KMeans(n_clusters=K, n_init=1, max_iter=10, random_state=random_state, algorithm="lloyd")
        Y = _unit_rows(km.fit(Z_cos).cluster_centers_)
    else:
        Y = _unit_rows(Z_cos.mean(axis=0, keepdims=True))
    dist = 2.0 * (1.0 - Z_cos @ Y.T)
    R = _softmax_rows(-dist / sig)
    E = R.sum(axis=0)[:, None] * Pr_b[None, :]
    Ob = R.T @ Phi
    norm_const = 2000.0 / N

    def objective() -> float:
        err = float(np.vdot(R, dist))
        ent = float((R * np.log(np.maximum(R, 1e-300))).sum(axis=0) @ sig)  # 0 log 0 = 0
        cross = float((sig[:, None] * theta_b[None, :] * Ob * np.log((Ob + E + 1) / (2 * E + 1))).sum())
        return (err + ent + cross) * norm_const

    obj_kmeans = [objective()]
    obj_harmony = [obj_kmeans[-1]]
    Z_corr = Z.copy()
    M = np.zeros((B, K, d))
    n_blocks = int(np.ceil(1.0 / block_size))
    per_block = max(1, int(N * block_size))
    window = 3
    converged = False
    n_iter = 0
    for it in range(1, max_iter_harmony + 1):
        n_iter = it
        # -- clustering with the diversity penalty
        if len(obj_harmony) > 1:
            Z_cos = _unit_rows(Z_corr)
            dist = 2.0 * (1.0 - Z_cos @ Y.T)
            R = _softmax_rows(-dist / sig)
            E = R.sum(axis=0)[:, None] * Pr_b[None, :]
            Ob = R.T @ Phi
        scaled = -dist / sig
        for i in range(max_iter_kmeans):
            # one gather per pass: the blocks are then contiguous slices (views) of the permuted arrays
            order = rng.permutation(N)
            Rp, Sp, Pp = R[order], scaled[order], Phi[order]
            for blk in range(n_blocks):
                lo = blk * per_block
                if lo >= N:
                    break
                hi = N if blk == n_blocks - 1 else min(N, (blk + 1) * per_block)
                Rb, Pb = Rp[lo:hi], Pp[lo:hi]
                Ob -= Rb.T @ Pb
                E -= Rb.sum(axis=0)[:, None] * Pr_b[None, :]
                log_div = theta_b[None, :] * (np.log(2 * E + 1) - np.log(Ob + E + 1))  # (K, B)
                Rb[:] = _softmax_rows(Sp[lo:hi] + Pb @ log_div.T)
                Ob += Rb.T @ Pb
                E += Rb.sum(axis=0)[:, None] * Pr_b[None, :]
            R[order] = Rp
            obj_kmeans.append(objective())
            if i > window and len(obj_kmeans) > window + 1:
                old = sum(obj_kmeans[-2 - j] for j in range(window))
                new = sum(obj_kmeans[-1 - j] for j in range(window))
                if abs(old - new) / abs(old) < epsilon_cluster:
                    break
        obj_harmony.append(obj_kmeans[-1])

        # -- ridge correction, all clusters at once
        avg = (Ob / batch_sizes[None, :]) > batch_prop_cutoff  # (K, B) batch present in cluster
        per_var = np.stack([avg[:, level_var == v].sum(axis=1) for v in range(n_var)], axis=1)  # (K, n_var)
        keep = avg & (per_var[:, level_var] > 1)  # (K, B)
        active = keep.any(axis=1)
        W = R * ((Phi @ keep.T.astype(np.float64)) > 0)  # weight of each cell in each cluster's system
        A = np.zeros((K, B + 1, B + 1))
        A[:, 0, 0] = W.sum(axis=0)
        A[:, 0, 1:] = A[:, 1:, 0] = W.T @ Phi
        # Phi' diag(w_k) Phi through the distinct level combinations (few), not the cells (many)
        A[:, 1:, 1:] = np.einsum("kc,ca,cb->kab", W.T @ combo_onehot, combo_phi, combo_phi, optimize=True)
        pen = alpha * E * keep
        A[:, np.arange(1, B + 1), np.arange(1, B + 1)] += pen
        rhs = np.empty((K, B + 1, d))
        rhs[:, 0] = W.T @ Z
        for b, rows in enumerate(level_rows):
            rhs[:, b + 1] = W[rows].T @ Z[rows]
        # batches a cluster does not correct: identity rows, zero coefficients
        drop = ~keep
        kk, bb = np.nonzero(drop)
        A[kk, bb + 1, :] = 0.0
        A[kk, :, bb + 1] = 0.0
        A[kk, bb + 1, bb + 1] = 1.0
        rhs[kk, bb + 1] = 0.0
        sol = np.linalg.solve(A[active], rhs[active])  # (K_active, B + 1, d)
        Y_new = Y.copy()
        Y_new[active] = sol[:, 0]
        M = np.zeros((B, K, d))
        M[:, active] = np.transpose(sol[:, 1:], (1, 0, 2))
        Z_corr = Z - apply_corrections(R, cols, M)
        Y = _unit_rows(Y_new)
        if len(obj_harmony) >= 2:
            old, new = obj_harmony[-2], obj_harmony[-1]
            delta = (old - new) / abs(old) if old != 0 else np.inf
            if 0 <= delta < epsilon_harmony:
                converged = True
                break
    return HarmonyResult(Z_corr=Z_corr, R=R, Y=Y, M=M, sigma=sig, objective=obj_harmony, n_iter=n_iter,
                         converged=converged)


def apply_corrections(R: np.ndarray, cols: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``sum_v R @ M[cols[:, v]]`` per sample: the batch shift to subtract, shape (n_samples, n_dims).

    ``cols`` (n_samples, n_variables) are stacked level indices; -1 means no correction for that variable.
    """
    out = np.zeros((R.shape[0], M.shape[2]))
    for v in range(cols.shape[1]):
        for b in np.unique(cols[:, v]):
            if b < 0:
                continue
            rows = cols[:, v] == b
            out[rows] += R[rows] @ M[b]
    return out


# --------------------------------------------------------------------------- estimator
class Harmony(TransformerMixin, BaseEstimator):
    """Harmony on the top principal components, mapped back to genes, frozen for new samples.

    Parameters
    ----------
    n_components : int, default=20
        Principal components Harmony integrates (at most ``n_samples - 1``).
    theta : float or list of float, default=2.0
        Diversity penalty: one value for all batch variables, or one per variable (the batch first,
        then each covariate in order).
    sigma : float, default=0.1
        Soft-clustering bandwidth.
    nclust : int or None
        Clusters (default ``min(round(n / 30), 100)``, at least 1).
    alpha : float, default=0.2
        Ridge penalty per expected cell (harmony2's automatic lambda).
    max_iter_harmony, max_iter_kmeans : int
    epsilon_cluster, epsilon_harmony, block_size : float
        As in harmonypy.
    map_iter : int, default=1
        Reassign-and-correct rounds of the frozen map (0: assign on the uncorrected position only).
    unseen_batch : {"error", "ignore"}, default="error"
        A batch (or covariate level) not seen in ``fit``: raise, or leave that variable uncorrected.
    random_state : int, default=0

    Attributes
    ----------
    mean_ : ndarray of shape (n_genes,)
    components_ : ndarray of shape (n_components, n_genes)
        Orthonormal PCA loadings of the training rows.
    centroids_ : ndarray of shape (n_clusters, n_components)
        Unit-length cluster centroids.
    sigma_ : ndarray of shape (n_clusters,)
    corrections_ : ndarray of shape (n_levels_total, n_clusters, n_components)
        Per-cluster correction of each level of each variable (batch levels first).
    levels_ : list of ndarray
        Sorted levels of each variable (batch first, then covariates).
    variables_ : list of str
    embedding_ : ndarray of shape (n_samples, n_components)
        Harmony's own corrected embedding of the training rows (for diagnostics and the reference
        comparison; ``transform`` uses the frozen map).
    n_iter_ : int
    converged_ : bool
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 40)) + np.repeat([0.0, 3.0], 30)[:, None] * rng.normal(size=40)
    >>> batch = np.repeat(["a", "b"], 30)
    >>> Xc = Harmony(n_components=5).fit_transform(X, batch=batch)
    >>> gap = lambda M: float(np.linalg.norm(M[:30].mean(0) - M[30:].mean(0)))
    >>> gap(Xc) < 0.2 * gap(X)
    True
    """

    def __init__(
        self,
        n_components: int = 20,
        theta: float | list[float] = 2.0,
        sigma: float = 0.1,
        nclust: int | None = None,
        alpha: float = 0.2,
        max_iter_harmony: int = 10,
        max_iter_kmeans: int = 4,
        epsilon_cluster: float = 1e-3,
        epsilon_harmony: float = 1e-2,
        block_size: float = 0.05,
        map_iter: int = 1,
        unseen_batch: Literal["error", "ignore"] = "error",
        random_state: int = 0,
    ):
        self.n_components = n_components
        self.theta = theta
        self.sigma = sigma
        self.nclust = nclust
        self.alpha = alpha
        self.max_iter_harmony = max_iter_harmony
        self.max_iter_kmeans = max_iter_kmeans
        self.epsilon_cluster = epsilon_cluster
        self.epsilon_harmony = epsilon_harmony
        self.block_size = block_size
        self.map_iter = map_iter
        self.unseen_batch = unseen_batch
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    @staticmethod
    def _variables(batch: Any, covariates: Any, n: int) -> tuple[list[str], list[np.ndarray]]:
        names = ["batch"]
        values = [as_labels(batch, n, "batch").astype(str)]
        if covariates is not None:
            df = covariates if isinstance(covariates, pd.DataFrame) else pd.DataFrame(covariates)
            if len(df) != n:
                raise InputError(f"covariates have {len(df)} rows but the matrix has {n} samples")
            for col in df.columns:
                names.append(str(col))
                values.append(as_labels(df[col].to_numpy(), n, f"covariate {col!r}").astype(str))
        return names, values

    def fit(self, X: Any, y: Any = None, *, batch: Any = None, covariates: Any = None) -> Harmony:
        """Fit PCA and Harmony on the training rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_genes)
            Normalized, log-scale expression without missing values.
        y : ignored
        batch : array-like of shape (n_samples,)
        covariates : DataFrame of shape (n_samples, n_covariates), optional
            Categorical sample-sheet columns Harmony also integrates over (known at inference).
        """
        if self.unseen_batch not in ("error", "ignore"):
            raise InputError(f"unseen_batch must be 'error' or 'ignore' for Harmony, got {self.unseen_batch!r}")
        if int(self.map_iter) < 0:
            raise InputError(f"map_iter must be >= 0, got {self.map_iter}")
        X, names = as_matrix(X)
        check_finite(X, "Harmony input", names)
        n, G = X.shape
        variables, values = self._variables(batch, covariates, n)
        levels, codes = [], np.empty((n, len(values)), dtype=np.int64)
        for v, vals in enumerate(values):
            lv, inv = np.unique(vals, return_inverse=True)
            if v == 0 and len(lv) < 2:
                raise InputError("Harmony needs at least two batches; this data has one")
            if len(lv) > max(2, n // 2):
                raise InputError(f"{variables[v]} has {len(lv)} levels for {n} samples; Harmony integrates "
                                 "over categorical variables (batch, site, sex), not continuous ones")
            levels.append(lv)
            codes[:, v] = inv
        theta = np.asarray(self.theta, dtype=np.float64).reshape(-1)
        if theta.size not in (1, len(values)):
            raise InputError(f"theta needs one value or one per variable ({', '.join(variables)}), got {theta.size}")
        k = int(self.n_components)
        if k < 1:
            raise InputError(f"n_components must be >= 1, got {k}")
        k = min(k, n - 1, G)
        if k < 1:
            raise InputError("Harmony needs at least two samples")
        self.mean_ = X.mean(axis=0)
        Xc = X - self.mean_
        # exact SVD of the centred training rows; sign fixed so the largest loading of each PC is
        # positive (sklearn's svd_flip): the same data always gives the same components
        _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
        Vt = Vt[:k]
        signs = np.sign(Vt[np.arange(k), np.abs(Vt).argmax(axis=1)])
        self.components_ = Vt * np.where(signs == 0, 1.0, signs)[:, None]
        Z = Xc @ self.components_.T
        res = run_harmony(
            Z, codes, [len(lv) for lv in levels], theta=theta if theta.size > 1 else float(theta[0]),
            sigma=self.sigma, nclust=self.nclust, alpha=self.alpha, max_iter_harmony=self.max_iter_harmony,
            max_iter_kmeans=self.max_iter_kmeans, epsilon_cluster=self.epsilon_cluster,
            epsilon_harmony=self.epsilon_harmony, block_size=self.block_size, random_state=self.random_state,
        )
        self.variables_ = variables
        self.levels_ = levels
        self.centroids_ = res.Y
        self.sigma_ = res.sigma
        self.corrections_ = res.M
        self.embedding_ = res.Z_corr
        self.n_iter_ = res.n_iter
        self.converged_ = res.converged
        self.n_components_ = k
        self.n_features_in_ = G
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    def fit_transform(self, X: Any, y: Any = None, *, batch: Any = None, covariates: Any = None) -> np.ndarray:
        """Fit, then map the training rows with the frozen map (the same function as ``transform``)."""
        return self.fit(X, batch=batch, covariates=covariates).transform(X, batch=batch, covariates=covariates)

    # ------------------------------------------------------------------ transform
    def level_index(self, batch: Any, covariates: Any, n: int) -> np.ndarray:
        """Stacked level positions (n, n_variables) into ``corrections_``; -1 for unseen levels."""
        check_fitted(self, "corrections_")
        names, values = self._variables(batch, covariates, n)
        if names != self.variables_:
            raise InputError(f"Harmony was fitted on {', '.join(self.variables_)}; got {', '.join(names)}")
        out = np.full((n, len(values)), -1, dtype=np.int64)
        offset = 0
        for v, (vals, lv) in enumerate(zip(values, self.levels_, strict=True)):
            pos = np.searchsorted(lv, vals)
            pos = np.minimum(pos, len(lv) - 1)
            seen = lv[pos] == vals
            if not seen.all() and self.unseen_batch == "error":
                raise InputError(f"{names[v]} {', '.join(sorted(set(vals[~seen]))[:5])} was not seen in fit "
                                 f"(known: {', '.join(map(str, lv))}); refit, or use unseen_batch='ignore' to "
                                 "leave it uncorrected")
            out[seen, v] = pos[seen] + offset
            offset += len(lv)
        return out

    def map_embedding(self, Z: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Frozen map of PCA scores: assign, correct, reassign from the corrected position (``map_iter``)."""
        check_fitted(self, "corrections_")
        Zc = Z
        for _ in range(int(self.map_iter) + 1):
            R = soft_assign(Zc, self.centroids_, self.sigma_)
            Zc = Z - apply_corrections(R, cols, self.corrections_)
        return Zc

    def transform(self, X: Any, *, batch: Any = None, covariates: Any = None) -> np.ndarray:
        """Correct samples with the frozen PCA, centroids and per-cluster corrections.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_genes)
            Same genes and order as in ``fit``.
        batch : array-like of shape (n_samples,)
        covariates : DataFrame, required when fitted with covariates (same columns).

        Returns
        -------
        ndarray of shape (n_samples, n_genes), float64
        """
        check_fitted(self, "corrections_")
        X, names = as_matrix(X)
        check_n_genes(self, X, names)
        check_finite(X, "Harmony input", names)
        cols = self.level_index(batch, covariates, X.shape[0])
        Z = (X - self.mean_) @ self.components_.T
        shift = Z - self.map_embedding(Z, cols)
        return X - shift @ self.components_


# --------------------------------------------------------------------------- torch / ONNX
class HarmonyOp(nn.Module):
    """Frozen Harmony map as a torch module (float64 inside, ONNX-exportable).

    ``forward(x, level_index)``: ``x`` (B, G) normalized expression; ``level_index`` (B, V) int64 stacked
    level positions of each variable (from :meth:`Harmony.level_index`, -1 = no correction for that
    variable). Returns (B, G):

    ``z = (x - mean) V^T``; ``map_iter + 1`` times ``R = softmax(-2 (1 - cos(z_c, Y)) / sigma)``,
    ``z_c = z - sum_v R M[level_v]``; ``x - (z - z_c) V``.
    """

    def __init__(self, est: Harmony):
        super().__init__()
        check_fitted(est, "corrections_")
        Bt, K, d = est.corrections_.shape
        f64 = torch.float64
        self.register_buffer("mean", torch.as_tensor(est.mean_, dtype=f64).clone())
        self.register_buffer("components", torch.as_tensor(est.components_, dtype=f64).clone())
        self.register_buffer("centroids", torch.as_tensor(est.centroids_, dtype=f64).clone())
        self.register_buffer("sigma", torch.as_tensor(est.sigma_, dtype=f64).clone())
        # one extra all-zero level: index -1 (unseen) points at it
        M = np.concatenate([est.corrections_, np.zeros((1, K, d))]).reshape(Bt + 1, K * d)
        self.register_buffer("corrections", torch.as_tensor(M, dtype=f64).clone())
        self.n_levels = Bt
        self.n_clusters = K
        self.n_dims = d
        self.n_variables = len(est.levels_)
        self.map_iter = int(est.map_iter)

    def forward(self, x: torch.Tensor, level_index: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) @ self.components.T
        idx = torch.where(level_index < 0, torch.full_like(level_index, self.n_levels), level_index)
        # per-sample correction table: sum of the sample's levels' (K x d) corrections
        Mv = torch.index_select(self.corrections, 0, idx.reshape(-1))
        Ms = Mv.reshape(-1, self.n_variables, self.n_clusters, self.n_dims).sum(1)
        zc = z
        for _ in range(self.map_iter + 1):
            zn = zc / torch.clamp(torch.linalg.vector_norm(zc, dim=1, keepdim=True), min=1e-300)
            R = torch.softmax(-2.0 * (1.0 - zn @ self.centroids.T) / self.sigma, dim=1)
            zc = z - torch.bmm(R.unsqueeze(1), Ms).squeeze(1)
        return x - (z - zc) @ self.components


class HarmonyStep(nn.Module):
    """:class:`HarmonyOp` wired to the pipeline's serving inputs (the batch-correction step of
    :class:`genexflow.preprocessing.pipeline.PreprocessingPipeline.to_torch`).

    ``forward(x, batch_index, covariates)``: ``batch_index`` (B,) int64 positions in the pipeline's
    ``batch_levels_`` (the same sorted order as Harmony's batch levels; -1 = unseen, uncorrected) and
    ``covariates`` (B, C) in the :func:`genexflow.bundle.encode_covariates` encoding, whose one-hot blocks
    give each categorical covariate's level (an all-zero block, i.e. an unknown category, is uncorrected).
    """

    def __init__(self, est: Harmony, specs: list):
        super().__init__()
        self.op = HarmonyOp(est)
        self.n_cov = sum(s.width for s in specs)
        offsets = np.concatenate([[0], np.cumsum([len(lv) for lv in est.levels_])])
        # (C, V - 1): column c of a covariate's one-hot block -> its stacked level index + 1
        lut = np.zeros((self.n_cov, max(len(est.levels_) - 1, 0)))
        block = np.zeros_like(lut)  # which serving columns make up each covariate's one-hot block
        col = 0
        for s in specs:
            if s.kind == "categorical" and s.name in est.variables_:
                v = est.variables_.index(s.name)
                levels = est.levels_[v]
                block[col:col + s.width, v - 1] = 1.0
                for j, cat in enumerate(s.categories):
                    pos = int(np.searchsorted(levels, cat))
                    if pos < len(levels) and levels[pos] == cat:
                        lut[col + j, v - 1] = offsets[v] + pos + 1
            col += s.width
        self.register_buffer("lut", torch.as_tensor(lut, dtype=torch.float64))
        self.register_buffer("block", torch.as_tensor(block, dtype=torch.float64))
        self.n_batches = len(est.levels_[0])

    def forward(self, x: torch.Tensor, batch_index: torch.Tensor, covariates: torch.Tensor | None = None
                ) -> torch.Tensor:
        b = batch_index.reshape(-1, 1).to(torch.int64)
        idx = torch.where((b >= 0) & (b < self.n_batches), b, torch.full_like(b, -1))
        if self.lut.shape[1]:
            # a level only for an exact one-hot block (sum 1 and sum of squares 1); else uncorrected
            cov = covariates.to(torch.float64)
            raw = cov @ self.lut
            ok = ((cov @ self.block) == 1) & (((cov * cov) @ self.block) == 1) & (raw >= 1)
            lvl = torch.where(ok, torch.round(raw), torch.zeros_like(raw)).to(torch.int64) - 1
            idx = torch.cat([idx, lvl], dim=1)
        return self.op(x, idx)
