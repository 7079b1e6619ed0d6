"""ComBat-seq (Zhang, Parmigiani & Johnson 2020): negative-binomial batch correction of raw counts.

A port of ``sva/R/ComBat_seq.R`` + ``helper_seq.R`` (sva 3.46, unchanged since 2020) with the edgeR
pieces it calls in :mod:`._edger`:

1. genes with only zero counts in some batch are left untouched;
2. per batch, a common Cox-Reid dispersion (``estimateGLMCommonDisp``; intercept-only when the batch
   has too few samples for the covariate model) and gene-wise dispersions
   (``estimateGLMTagwiseDisp(prior.df = 0)``);
3. an NB GLM on batch indicators + covariates with library-size offsets (``glmFit``,
   ``prior.count = 1e-4``); its batch coefficients averaged with weights ``n_b / n`` give a gene
   background ``alpha_g`` that is folded into the offset of a second fit, whose batch coefficients are
   ``gamma_hat`` and whose fitted values are ``mu_hat``;
4. ``shrink = TRUE`` only: empirical-Bayes batch effects by Monte-Carlo integration over the other genes
   (``monte_carlo_int_NB``: gene ``g``'s counts weigh every other gene ``j`` by the NB likelihood
   ``prod_s dnbinom(y_gs; mu_js, phi_j)``; ``gamma*_g`` (and with ``shrink.disp``, ``phi*_gb``) is the
   weighted mean of the others' ``gamma_j`` (``phi_j``); ``gene.subset.n`` draws that many other genes per
   gene with R's ``sample`` after ``set.seed(random_state)``);
5. batch-free means ``mu* = mu_hat exp(-gamma*)`` (``gamma* = gamma_hat`` without shrinkage) and
   dispersion ``phi* = mean_b(phi*_b)``;
6. each count ``y > 1`` is mapped to ``1 + qnbinom(pnbinom(y - 1; mu_hat, phi_b); mu*, phi*)``
   (kept when that probability is within 1e-4 of 1); counts 0 and 1 are kept.

``fit`` freezes the gene-wise GLM coefficients, ``alpha_g``, ``gamma*`` and the dispersions;
``transform`` recomputes ``mu_hat`` for any sample of a seen batch from its own library size and
covariates and maps its counts the same way (``fit_transform`` is ComBat_seq on the training counts).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.special import gammaln
from sklearn.base import BaseEstimator, TransformerMixin

from genexflow.errors import InputError
from genexflow.preprocessing import _edger
from genexflow.preprocessing._rrng import RRandom
from genexflow.preprocessing._utils import (
    as_labels,
    as_matrix,
    check_finite,
    check_fitted,
    check_n_genes,
    gene_list,
    single_threaded_blas,
)
from genexflow.preprocessing.design import CovariateEncoder, check_confounding


def check_integer_counts(X: np.ndarray, names=None) -> None:
    check_finite(X, "ComBat-seq input", names, hint="counts cannot be missing; drop those genes or samples")
    if (X < 0).any():
        raise InputError("ComBat-seq input has negative values; it needs raw counts")
    frac = X != np.round(X)
    if frac.any():
        cols = np.flatnonzero(frac.any(axis=0))
        raise InputError(
            f"ComBat-seq needs integer counts but {int(frac.sum())} values in {len(cols)} genes are not whole "
            f"numbers (e.g. {gene_list(names, cols)}); round estimated counts (e.g. tximport/Salmon) first, "
            "or use ComBat on log-CPM"
        )


def monte_carlo_int_nb(dat: np.ndarray, mu: np.ndarray, gamma: np.ndarray, phi: np.ndarray,
                       gene_subset_n: int | None = None, rng: RRandom | None = None,
                       block_cells: int = 2_000_000) -> tuple[np.ndarray, np.ndarray]:
    """sva's ``monte_carlo_int_NB`` for one batch: posterior ``gamma*`` and ``phi*`` per gene.

    Parameters
    ----------
    dat, mu : ndarray of shape (G, n)
        Counts and fitted means of the batch's samples (genes as rows, as in R).
    gamma, phi : ndarray of shape (G,)
        The batch's GLM batch effects and gene-wise dispersions.
    gene_subset_n : int, optional
        Other genes drawn per gene (``sample(1:(G - 1), gene_subset_n)`` with ``rng``); all when None.
    rng : RRandom, optional
        R's generator, needed with ``gene_subset_n``.
    block_cells : int
        Genes are processed in blocks of about this many (gene, other gene, sample) cells.

    Returns
    -------
    gamma_star, phi_star : ndarray of shape (G,)
        Likelihood-weighted means over the other genes; a gene whose weights all underflow to 0 keeps its
        own ``gamma`` and ``phi`` (as R does).
    """
    G, n = dat.shape
    size = 1.0 / phi
    # log dnbinom(x; mu_j, size_j) = lgamma(x + r) - lgamma(r) - lgamma(x + 1) + r log(r / (r + mu)) + x log(mu / (r + mu))
    with np.errstate(divide="ignore"):
        log_p0 = size[:, None] * (np.log(size)[:, None] - np.log(size[:, None] + mu))  # (G, n)
        log_q = np.log(mu) - np.log(size[:, None] + mu)                               # (G, n)
    lg_x1 = gammaln(dat + 1)
    lg_r = gammaln(size)
    gamma_star = gamma.astype(np.float64).copy()
    phi_star = phi.astype(np.float64).copy()
    if gene_subset_n is not None:
        if rng is None:
            raise ValueError("gene_subset_n needs R's generator (rng)")
        draws = np.array([rng.sample(G - 1, gene_subset_n) for _ in range(G)], dtype=np.int64) - 1
        others = draws + (draws >= np.arange(G)[:, None])  # index into the genes without g
    else:
        others = None
    k = G - 1 if others is None else gene_subset_n
    step = max(1, block_cells // max(1, k * n))
    for start in range(0, G, step):
        rows = np.arange(start, min(G, start + step))
        if others is None:
            J = np.tile(np.arange(G), (len(rows), 1))
        else:
            J = others[rows]
        x = dat[rows][:, None, :]                                     # (b, 1, n)
        r = size[J][:, :, None]                                       # (b, k', 1)
        with np.errstate(invalid="ignore"):
            # 0 * log(0) (a zero count under a zero mean) is 0 in dnbinom
            xlq = np.where(x == 0, 0.0, x * log_q[J])
            ll = (gammaln(x + r) - lg_r[J][:, :, None] - lg_x1[rows][:, None, :] + log_p0[J] + xlq).sum(axis=2)
        LH = np.exp(ll)
        LH[np.isnan(LH)] = 0.0
        if others is None:
            LH[np.arange(len(rows)), rows] = 0.0  # gene g itself is not among the others
        tot = LH.sum(axis=1)
        ok = (tot != 0) & np.isfinite(tot)
        with np.errstate(invalid="ignore", divide="ignore"):
            gs = (gamma[J] * LH).sum(axis=1) / tot
            ps = (phi[J] * LH).sum(axis=1) / tot
        gamma_star[rows[ok]] = gs[ok]
        phi_star[rows[ok]] = ps[ok]
    return gamma_star, phi_star


class ComBatSeq(TransformerMixin, BaseEstimator):
    """Negative-binomial batch correction of counts with frozen parameters (``sva::ComBat_seq``).

    Parameters
    ----------
    full_mod : bool, default=True
        Include the biological ``group`` in the model (``full_mod``).
    shrink : bool, default=False
        Empirical-Bayes shrinkage of the batch effects (sva's ``shrink``; Monte-Carlo integration over the
        other genes: O(G^2 n) without ``gene_subset_n``).
    shrink_disp : bool, default=False
        With ``shrink``, also shrink the dispersions (``shrink.disp``).
    gene_subset_n : int, optional
        With ``shrink``, integrate over this many randomly drawn genes per gene (``gene.subset.n``).
    random_state : int, default=0
        With ``gene_subset_n``: the draws are R's ``sample`` after ``set.seed(random_state)``, so
        ``ComBatSeq(shrink=True, gene_subset_n=m, random_state=s)`` reproduces
        ``set.seed(s); ComBat_seq(..., shrink = TRUE, gene.subset.n = m)``.

    ``fit(X, batch=..., group=None, covariates=None)``: ``group`` is sva's ``group`` (condition of
    interest), ``covariates`` its ``covar_mod`` (a DataFrame; categorical columns one-hot).

    Attributes
    ----------
    batches_ : ndarray of shape (n_batches,)
    adjusted_genes_ : ndarray of bool, shape (n_genes,)
        False for genes with only zero counts in some training batch (returned unchanged).
    coef_ : ndarray of shape (n_genes, n_design_columns)
        Unshrunk GLM coefficients of the second fit (fitted means of new samples).
    alpha_ : ndarray of shape (n_genes,)
        Gene background folded into the offset.
    gamma_hat_ : ndarray of shape (n_genes, n_batches)
    gamma_star_ : ndarray of shape (n_genes, n_batches)
        Batch effects removed (``gamma_hat_`` unless ``shrink``).
    phi_hat_ : ndarray of shape (n_genes, n_batches)
        Gene-wise dispersions per batch.
    phi_star_ : ndarray of shape (n_genes,)
    common_dispersion_ : ndarray of shape (n_batches,)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> mu = rng.gamma(2, 50, size=40)
    >>> batch = np.repeat([0, 1], 6)
    >>> eff = np.where(np.arange(40) < 20, 3.0, 1.0)  # genes 0-19 are 3x higher in batch 1
    >>> X = rng.negative_binomial(10, 10 / (10 + mu * np.where(batch[:, None] == 1, eff, 1.0)))
    >>> out = ComBatSeq().fit_transform(X, batch=batch)
    >>> def lfc(M, genes):  # log fold change batch 1 vs 0 of a gene set
    ...     return np.log(M[batch == 1][:, genes].sum() / M[batch == 0][:, genes].sum())
    >>> shifted, other = slice(0, 20), slice(20, 40)
    >>> bool(lfc(X, shifted) - lfc(X, other) > 1.0)  # relative batch effect before (library sizes aside)
    True
    >>> bool(abs(lfc(out, shifted) - lfc(out, other)) < 0.1)  # and after
    True
    """

    def __init__(self, full_mod: bool = True, shrink: bool = False, shrink_disp: bool = False,
                 gene_subset_n: int | None = None, random_state: int = 0):
        self.full_mod = full_mod
        self.shrink = shrink
        self.shrink_disp = shrink_disp
        self.gene_subset_n = gene_subset_n
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None, *, batch: Any = None, group: Any = None, covariates: Any = None) -> ComBatSeq:
        with single_threaded_blas():
            self._fit(X, batch, group, covariates)
        return self

    def fit_transform(self, X: Any, y: Any = None, *, batch: Any = None, group: Any = None,
                      covariates: Any = None) -> np.ndarray:
        self.fit(X, batch=batch, group=group, covariates=covariates)
        return self.transform(X, batch=batch, group=group, covariates=covariates)

    # ------------------------------------------------------------------ design
    def _mod(self, group: Any, covariates: Any, n: int, fitting: bool) -> np.ndarray:
        """sva's ``mod``: intercept, group dummies (full model), covariate columns (intercepts dropped)."""
        cols = [np.ones((n, 1))]
        gframe = None if group is None else pd.DataFrame({"group": as_labels(group, n, "group").astype(str)})
        if fitting:
            self.uses_group_ = bool(gframe is not None and self.full_mod and gframe["group"].nunique() > 1)
            self.group_encoder_ = CovariateEncoder().fit(gframe if self.uses_group_ else None, n)
            self.covariate_encoder_ = CovariateEncoder().fit(covariates, n)
        if self.uses_group_:
            if gframe is None:
                raise InputError("this ComBat-seq model was fitted with a group; pass group= for new samples")
            cols.append(self.group_encoder_.transform(gframe, n))
        cols.append(self.covariate_encoder_.transform(covariates, n))
        return np.hstack(cols)

    # ------------------------------------------------------------------ fit
    def _fit(self, X: Any, batch: Any, group: Any, covariates: Any) -> None:
        X, names = as_matrix(X, "count matrix")
        check_integer_counts(X, names)
        n, G = X.shape
        labels = as_labels(batch, n, "batch")
        levels, bidx, counts = np.unique(labels, return_inverse=True, return_counts=True)
        if len(levels) < 2:
            raise InputError("ComBat-seq needs at least two batches; this data has one")
        if (counts <= 1).any():
            raise InputError(
                f"batch {', '.join(map(str, levels[counts <= 1][:5]))} has only one sample; ComBat-seq "
                "needs at least two samples per batch (merge or drop that batch)"
            )
        nb = len(levels)
        keep = np.ones(G, dtype=bool)
        for b in range(nb):
            keep &= (X[bidx == b] != 0).any(axis=0)
        if not keep.any():
            raise InputError("every gene has only zero counts in some batch; nothing to correct")
        Y = X[:, keep].T  # genes x samples, as in R
        mod = self._mod(group, covariates, n, fitting=True)
        batchmod = np.zeros((n, nb))
        batchmod[np.arange(n), bidx] = 1.0
        design = np.hstack([batchmod, mod])
        allone = np.all(design == 1, axis=0)
        design = design[:, ~allone]
        names_cov = [nm for nm, one in zip(self.group_encoder_.names_ + self.covariate_encoder_.names_,
                                           allone[nb + 1:], strict=True) if not one]
        check_confounding(design, nb, names_cov, tool="ComBat-seq")
        lib = Y.sum(axis=0)
        if (lib <= 0).any():
            raise InputError("a sample has no counts in the genes kept for ComBat-seq; remove empty samples")
        offset = np.log(lib)
        p_mod = mod.shape[1]
        common = np.empty(nb)
        phi_hat = np.empty((Y.shape[0], nb))
        for b in range(nb):
            cols = bidx == b
            mb = mod[cols]
            few = counts[b] <= p_mod or np.linalg.matrix_rank(mb) < p_mod
            yb = Y[:, cols]
            ob = np.log(yb.sum(axis=0))
            if few:
                common[b] = _edger.disp_cox_reid(yb, None, ob)
                phi_hat[:, b] = common[b]
            else:
                common[b] = _edger.disp_cox_reid(yb, mb, ob)
                phi_hat[:, b] = _edger.disp_cox_reid_interpolate_tagwise(yb, mb, common[b], ob)
        if not np.isfinite(phi_hat).all():
            raise InputError("ComBat-seq could not estimate dispersions (no residual degrees of freedom in a "
                             "batch); add samples or remove covariates")
        phi_mat = phi_hat[:, bidx]
        fit1 = _edger.glm_fit(Y, design, phi_mat, np.broadcast_to(offset, Y.shape), prior_count=1e-4)
        alpha = fit1["coefficients"][:, :nb] @ (counts / n)
        new_offset = offset[None, :] + alpha[:, None]
        fit2 = _edger.glm_fit(Y, design, phi_mat, new_offset, prior_count=1e-4)

        gamma_hat = fit2["coefficients"][:, :nb]
        gamma_star, phi_star_mat = gamma_hat, phi_hat
        if self.shrink:
            if self.gene_subset_n is not None and not 0 < self.gene_subset_n <= Y.shape[0] - 1:
                raise InputError(f"gene_subset_n must be between 1 and {Y.shape[0] - 1} (the other adjusted "
                                 f"genes), got {self.gene_subset_n}")
            rng = RRandom(self.random_state) if self.gene_subset_n is not None else None
            gamma_star, phi_shrunk = np.empty_like(gamma_hat), np.empty_like(phi_hat)
            for b in range(nb):  # in batch order: R draws the subsets batch after batch
                cols = bidx == b
                gamma_star[:, b], phi_shrunk[:, b] = monte_carlo_int_nb(
                    Y[:, cols], fit2["fitted"][:, cols], gamma_hat[:, b], phi_hat[:, b], self.gene_subset_n, rng)
            if self.shrink_disp:
                phi_star_mat = phi_shrunk

        self.batches_ = levels
        self.n_batch_samples_ = counts
        self.adjusted_genes_ = keep
        self.design_columns_ = int(design.shape[1])
        self._design_keep = ~allone
        self.coef_ = fit2["unshrunk"]
        self.alpha_ = alpha
        self.gamma_hat_ = gamma_hat
        self.gamma_star_ = gamma_star
        self.phi_hat_ = phi_hat
        self.phi_star_ = phi_star_mat.mean(axis=1)
        self.common_dispersion_ = common
        self.n_features_in_ = G
        if names is not None:
            self.feature_names_in_ = names

    # ------------------------------------------------------------------ transform
    def transform(self, X: Any, *, batch: Any = None, group: Any = None, covariates: Any = None) -> np.ndarray:
        """Adjusted counts (float64 holding whole numbers), shape (n_samples, n_genes)."""
        check_fitted(self, "gamma_hat_")
        X, names = as_matrix(X, "count matrix")
        check_n_genes(self, X, names)
        check_integer_counts(X, names)
        n = X.shape[0]
        labels = as_labels(batch, n, "batch").astype(str)
        lut = {str(b): i for i, b in enumerate(self.batches_)}
        bidx = np.array([lut.get(b, -1) for b in labels])
        if (bidx < 0).any():
            unseen = sorted(set(labels[bidx < 0]))
            raise InputError(f"batch {', '.join(unseen[:5])} was not seen in fit (known: "
                             f"{', '.join(map(str, self.batches_))}); refit ComBat-seq including that batch")
        nb = len(self.batches_)
        mod = self._mod(group, covariates, n, fitting=False)
        batchmod = np.zeros((n, nb))
        batchmod[np.arange(n), bidx] = 1.0
        design = np.hstack([batchmod, mod])[:, self._design_keep]
        keep = self.adjusted_genes_
        Y = X[:, keep].T
        lib = Y.sum(axis=0)
        if (lib <= 0).any():
            raise InputError("a sample has no counts in the genes kept for ComBat-seq; remove empty samples")
        eta = np.log(lib)[None, :] + self.alpha_[:, None] + self.coef_ @ design.T
        mu_hat = np.exp(eta)
        gamma = getattr(self, "gamma_star_", self.gamma_hat_)[:, bidx]  # models pickled before shrink
        with np.errstate(divide="ignore"):  # a zero fitted mean stays 0, as exp(log(0) - gamma) in R
            mu_star = np.exp(np.log(mu_hat) - gamma)
        old_size = 1 / self.phi_hat_[:, bidx]
        new_size = np.broadcast_to(1 / self.phi_star_[:, None], Y.shape)
        out = Y.copy()
        big = Y > 1
        p = _edger.pnbinom(Y[big] - 1, old_size[big], mu_hat[big])
        moved = np.abs(p - 1) >= 1e-4
        vals = Y[big].copy()
        vals[moved] = 1 + _edger.qnbinom(p[moved], new_size[big][moved], mu_star[big][moved])
        out[big] = vals
        res = X.copy()
        res[:, keep] = out.T
        return res
