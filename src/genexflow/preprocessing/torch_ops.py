"""Frozen preprocessing steps as torch modules that export to ONNX.

Each module mirrors the numpy ``transform`` of one fitted estimator, in float64 inside (the TMM
trimming depends on exact ties of log-ratios, so float32 would change which genes are trimmed) and
with only ONNX-exportable operations: elementwise math, ``where``, reductions, ``sort``, ``cumsum``,
``gather``/``index_select`` with fixed index tensors. No ``torch.sparse``, no data-dependent Python
control flow: the batch dimension is dynamic, every other shape is fixed at fit time.

Shapes: ``x`` is (B, G) for the step's input genes; ``batch_index`` (B,) int64 positions in the
pipeline's ``batch_levels_``, or a negative code for a batch unseen in training (``-1 - k`` for the k-th
distinct unseen batch of the request, :func:`genexflow.bundle.batch_codes`); ``covariates`` (B, C) float in
the serving encoding of :func:`genexflow.bundle.encode_covariates` (from
:meth:`PreprocessingPipeline.covariate_design`).

Unseen batches (ComBat): :func:`unseen_batch_parameters` is the one implementation of what happens to
them, run by the ONNX graph and by the pipeline's numpy ``transform`` alike (see ``docs/preprocessing.md``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

F64 = torch.float64


def _buf(module: nn.Module, name: str, value, dtype=F64) -> None:
    module.register_buffer(name, torch.as_tensor(np.asarray(value), dtype=dtype).clone())


def average_ranks(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """R ``rank()`` (ties averaged, 1-based) of the valid entries of each row; invalid entries sort last.

    Sort-based and exportable: positions of tie-group starts come from a second sort of the "new group"
    markers, so no cummax / scatter-reduce is needed.

    Parameters
    ----------
    values, valid : Tensor of shape (B, G)
    """
    B, G = values.shape
    v = torch.where(valid, values, torch.full_like(values, math.inf))
    s, perm = torch.sort(v, dim=1)
    pos = torch.arange(G, device=v.device).unsqueeze(0).expand(B, G)
    prev = torch.cat([s[:, :1], s[:, :-1]], dim=1)
    is_new = (s != prev) | (pos == 0)
    group = torch.cumsum(is_new.to(torch.int64), dim=1) - 1
    # starts of the groups in order, then a sentinel G, then fillers > G
    marks = torch.where(is_new, pos, pos + 2 * G + 1)
    marks = torch.cat([marks, torch.full((B, 1), G, dtype=marks.dtype, device=v.device)], dim=1)
    starts, _ = torch.sort(marks, dim=1)
    start = torch.gather(starts, 1, group)
    nxt = torch.gather(starts, 1, group + 1)
    end = torch.minimum(nxt, torch.full_like(nxt, G)) - 1
    rank_sorted = (start + end).to(values.dtype) / 2 + 1
    inv = torch.argsort(perm, dim=1)
    return torch.gather(rank_sorted, 1, inv)


class SelectGenes(nn.Module):
    """Keep the fitted gene columns: (B, G_in) -> (B, G_kept)."""

    def __init__(self, index: np.ndarray):
        super().__init__()
        _buf(self, "index", index, torch.int64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, 1, self.index)


class LogCPM(nn.Module):
    """edgeR (log-)CPM with TMM factors against the frozen reference library (:class:`CPMNormalizer`)."""

    def __init__(self, est):
        super().__init__()
        self.log = bool(est.log)
        self.tmm = est.ref_counts_ is not None
        _buf(self, "prior_count", float(est.prior_count))
        _buf(self, "mean_lib", est.mean_lib_size_)
        if self.tmm:
            _buf(self, "ref", est.ref_counts_)
            _buf(self, "ref_lib", est.ref_lib_size_)
            _buf(self, "scale", est.factor_scale_)
            self.logratio_trim = float(est.logratio_trim)
            self.sum_trim = float(est.sum_trim)
            self.do_weighting = bool(est.do_weighting)
            self.a_cutoff = float(est.a_cutoff)

    def factors(self, x: torch.Tensor, lib: torch.Tensor) -> torch.Tensor:
        nO = lib.unsqueeze(1)
        nR = self.ref_lib
        ref = self.ref.unsqueeze(0)
        logR = torch.log2((x / nO) / (ref / nR))
        absE = (torch.log2(x / nO) + torch.log2(ref / nR)) / 2
        v = (nO - x) / nO / x + (nR - ref) / nR / ref
        fin = torch.isfinite(logR) & torch.isfinite(absE) & (absE > self.a_cutoff)
        n = fin.to(x.dtype).sum(1, keepdim=True)
        rL = average_ranks(logR, fin)
        rE = average_ranks(absE, fin)
        loL = torch.floor(n * self.logratio_trim) + 1
        hiL = n + 1 - loL
        loS = torch.floor(n * self.sum_trim) + 1
        hiS = n + 1 - loS
        keep = fin & (rL >= loL) & (rL <= hiL) & (rE >= loS) & (rE <= hiS)
        zero = torch.zeros_like(x)
        lr = torch.where(keep, logR, zero)
        if self.do_weighting:
            w = torch.where(keep, 1.0 / torch.where(keep, v, torch.ones_like(v)), zero)
            f = (lr * w).sum(1) / w.sum(1)
        else:
            f = lr.sum(1) / keep.to(x.dtype).sum(1)
        f = torch.where(torch.isnan(f), torch.zeros_like(f), f)
        maxabs = torch.where(fin, logR.abs(), zero).amax(1)
        f = torch.where(maxabs < 1e-6, torch.zeros_like(f), f)
        return torch.pow(torch.full_like(f, 2.0), f) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = torch.where(torch.isnan(x), torch.zeros_like(x), x).sum(1)
        eff = lib * self.factors(x, lib) if self.tmm else lib
        eff = eff.unsqueeze(1)
        if not self.log:
            return x * 1e6 / eff
        prior = self.prior_count * eff / self.mean_lib
        return (torch.log(x + prior) - torch.log(eff + 2 * prior) + math.log(1e6)) / math.log(2)


class Log2p1(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log2(x + 1.0)


class KNNFill(nn.Module):
    """Fill NaN from frozen neighbour genes (:class:`KNNImputer`), else the sample's mean of kept genes."""

    def __init__(self, est):
        super().__init__()
        G = est.neighbors_.shape[0]
        nb = np.where(est.neighbors_ >= 0, est.neighbors_, G)  # G = an always-missing padding column
        self.k = nb.shape[1]
        _buf(self, "neighbors", nb.reshape(-1), torch.int64)
        _buf(self, "kept", (~est.mean_imputed_).astype(np.float64))
        _buf(self, "aside", est.mean_imputed_, torch.bool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, G = x.shape
        obs = ~torch.isnan(x)
        x0 = torch.where(obs, x, torch.zeros_like(x))
        w = obs.to(x.dtype)
        xbar = (x0 * self.kept).sum(1, keepdim=True) / (w * self.kept).sum(1, keepdim=True)
        pad = torch.zeros(B, 1, dtype=x.dtype, device=x.device)
        xv = torch.index_select(torch.cat([x0, pad], 1), 1, self.neighbors).reshape(B, G, self.k)
        wv = torch.index_select(torch.cat([w, pad], 1), 1, self.neighbors).reshape(B, G, self.k)
        num = (xv * wv).sum(2)
        cnt = wv.sum(2)
        val = torch.where(cnt > 0, num / torch.clamp(cnt, min=1.0), xbar.expand(B, G))
        val = torch.where(self.aside.unsqueeze(0), xbar.expand(B, G), val)
        return torch.where(obs, x, val)


class MeanFill(nn.Module):
    """Fill NaN with frozen training gene means (used when the pipeline has no imputer)."""

    def __init__(self, means: np.ndarray):
        super().__init__()
        _buf(self, "means", means)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isnan(x), self.means.unsqueeze(0).expand_as(x), x)


#: Parametric EB iterations for an unseen batch: a fixed count (the graph has no data-dependent loop);
#: sva's rule (relative change < 1e-4) is met well before it on real data, and extra iterations stay at
#: the fixed point.
UNSEEN_EB_ITERATIONS = 50

#: ``batch_status`` values: how each row's batch was corrected.
BATCH_UNCORRECTED, BATCH_TRAINING, BATCH_ESTIMATED = 0, 1, 2


def unseen_group_sizes(batch_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(same, n)``: (B, B) float membership of rows in the same unseen batch (codes < 0) and (B,) the
    number of request rows in each row's unseen batch (0 for rows of training batches)."""
    unseen = batch_index < 0
    same = (batch_index.unsqueeze(0) == batch_index.unsqueeze(1)) & unseen.unsqueeze(0) & unseen.unsqueeze(1)
    same = same.to(F64)
    return same, same.sum(1)


def batch_status(batch_index: torch.Tensor, min_samples: int) -> torch.Tensor:
    """(B,) int64 per row: 1 corrected with its training batch's parameters, 2 an unseen batch estimated
    from the request (>= ``min_samples`` rows of it; 0 disables estimation), 0 an unseen batch passed
    through uncorrected."""
    _, n = unseen_group_sizes(batch_index)
    seen = batch_index >= 0
    est = (~seen) & (n >= max(int(min_samples), 1)) if min_samples > 0 else torch.zeros_like(seen)
    one = torch.ones_like(batch_index)
    return torch.where(seen, one * BATCH_TRAINING, torch.where(est, one * BATCH_ESTIMATED, one * BATCH_UNCORRECTED))


def unseen_batch_parameters(s: torch.Tensor, batch_index: torch.Tensor, min_samples: int, mean_only: bool,
                            adjusted: torch.Tensor, n_iter: int = UNSEEN_EB_ITERATIONS
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ComBat's parametric empirical-Bayes estimates for batches unseen in training, from the request.

    Each unseen batch with at least ``min_samples`` rows in the request gets ``gamma*``/``delta*`` from its
    own rows of ``s`` (standardized with the frozen training model), with sva's priors computed over its
    genes and ``n_iter`` iterations of ``it.sol``; ``mean_only`` estimates the location only. Rows of
    smaller unseen batches get the identity (``gamma 0``, ``delta 1``); training rows are not estimated.

    Parameters
    ----------
    s : Tensor of shape (B, G), float64
    batch_index : Tensor of shape (B,), int64 (negative = unseen batch code)
    min_samples : int (>= 2 unless ``mean_only``)
    adjusted : Tensor of shape (G,), bool -- genes ComBat corrects (others stay as they are)

    Returns
    -------
    gamma, delta : Tensor of shape (B, G), per row
    estimated : Tensor of shape (B,), bool
    """
    same, n = unseen_group_sizes(batch_index)
    est = batch_status(batch_index, min_samples) == BATCH_ESTIMATED
    n1 = n.unsqueeze(1)
    mean = same @ s / torch.clamp(n1, min=1.0)
    ss = same @ torch.square(s - mean)
    w = adjusted.to(F64).unsqueeze(0)
    nw = w.sum()

    def gene_mean(v):
        return (v * w).sum(1, keepdim=True) / nw

    def gene_var(v):  # over adjusted genes, ddof 1 (R's var)
        return (torch.square(v - gene_mean(v)) * w).sum(1, keepdim=True) / (nw - 1)

    g_hat = mean
    g_bar, t2 = gene_mean(g_hat), gene_var(g_hat)
    if mean_only:
        gamma = (t2 * g_hat + g_bar) / (t2 + 1.0)  # postmean with n = 1, delta = 1 (sva's mean.only)
        delta = torch.ones_like(s)
    else:
        d_hat = ss / torch.clamp(n1 - 1.0, min=1.0)
        m, v = gene_mean(d_hat), gene_var(d_hat)
        a = (2 * v + m * m) / v
        b = (m * v + m * m * m) / v
        delta = d_hat
        gamma = g_hat
        for _ in range(n_iter):
            gamma = (t2 * n1 * g_hat + delta * g_bar) / (t2 * n1 + delta)
            delta = (0.5 * (ss + n1 * torch.square(mean - gamma)) + b) / (n1 / 2 + a - 1)
    keep = est.unsqueeze(1) & adjusted.unsqueeze(0)
    gamma = torch.where(keep, gamma, torch.zeros_like(gamma))
    delta = torch.where(keep, delta, torch.ones_like(delta))
    return gamma, delta, est


class ComBatOp(nn.Module):
    """Frozen ComBat: ``((x - m) / s - gamma*_b) / sqrt(delta*_b) * s + m``.

    ``batch_index`` indexes ``batch_order`` (the serving batch levels); a negative code (an unseen batch)
    is estimated from the request by :func:`unseen_batch_parameters` when the request holds at least
    ``min_samples`` rows of it, and otherwise gets no batch adjustment (``gamma = 0``, ``delta = 1``: the
    identity). ``covariates`` come in the serving encoding and are mapped to ComBat's design columns by
    the affine map ``cov @ A + b``.
    """

    def __init__(self, est, batch_order: np.ndarray, cov_map: np.ndarray, cov_offset: np.ndarray,
                 min_samples: int = 0):
        super().__init__()
        G = est.gamma_star_.shape[1]
        nb = len(est.batches_)
        gamma = np.vstack([est.gamma_star_[batch_order], np.zeros((1, G))])
        delta = np.vstack([est.delta_star_[batch_order], np.ones((1, G))])
        self.n_batches = len(batch_order)
        self.n_cov = cov_map.shape[0]
        coef = est.coef_[nb:]
        _buf(self, "mean0", est.grand_mean_ + cov_offset @ coef)
        _buf(self, "cov_coef", cov_map @ coef if self.n_cov else np.zeros((0, G)))
        _buf(self, "sd", np.sqrt(est.var_pooled_))
        _buf(self, "gamma", gamma)
        _buf(self, "delta_sd", np.sqrt(delta))
        _buf(self, "adjusted", est.adjusted_genes_, torch.bool)
        self.min_samples = int(min_samples)
        self.mean_only = bool(est.mean_only)

    def forward(self, x: torch.Tensor, batch_index: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        m = self.mean0.unsqueeze(0)
        if self.n_cov:
            m = m + covariates.to(x.dtype) @ self.cov_coef
        s = (x - m) / self.sd
        idx = torch.where(batch_index < 0, torch.full_like(batch_index, self.n_batches), batch_index)
        g = torch.index_select(self.gamma, 0, idx)
        d = torch.index_select(self.delta_sd, 0, idx)
        if self.min_samples > 0:
            gu, du, est = unseen_batch_parameters(s, batch_index, self.min_samples, self.mean_only, self.adjusted)
            g = torch.where(est.unsqueeze(1), gu, g)
            d = torch.where(est.unsqueeze(1), torch.sqrt(du), d)
        return (s - g) / d * self.sd + m


class Scale(nn.Module):
    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        super().__init__()
        _buf(self, "mean", mean)
        _buf(self, "scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class PreprocessingModule(nn.Module):
    """Raw expression (B, G_in) in training gene order -> preprocessed (B, G_out), float32 out.

    ``forward(x, batch_index=None, covariates=None)``; ``batch_index`` (B,) int64 and
    ``covariates`` (B, C) float are needed only when the pipeline has ComBat (and covariates).
    """

    def __init__(self, steps: list[nn.Module], combat_at: int | None, n_covariates: int,
                 unseen_min_samples: int = 0):
        super().__init__()
        self.unseen_min_samples = int(unseen_min_samples)
        self.steps = nn.ModuleList(steps)
        self.combat_at = -1 if combat_at is None else combat_at
        self.n_covariates = n_covariates
        # read by genexflow.export to wire the serving graph's inputs
        self.takes_batch = combat_at is not None
        self.takes_covariates = n_covariates > 0

    def forward(self, x: torch.Tensor, batch_index: torch.Tensor | None = None,
                covariates: torch.Tensor | None = None) -> torch.Tensor:
        h = x.to(F64)
        for i, step in enumerate(self.steps):
            if i == self.combat_at:
                h = step(h, batch_index, covariates)
            else:
                h = step(h)
        return h.to(torch.float32)

    def batch_status(self, batch_index: torch.Tensor) -> torch.Tensor:
        """(B,) int64 per row: how its batch was corrected (see :func:`batch_status`)."""
        return batch_status(batch_index, self.unseen_min_samples)
