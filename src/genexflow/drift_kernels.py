"""Vectorized kernels for full-matrix drift: log transform by gene chunks, per-gene quantile sketches,
grid ECDF comparison (KS / PSI / Wasserstein) and multiple-testing control.

Everything works on gene chunks laid out genes x samples (C order) so a row sort is one SIMD call per
chunk and memory stays bounded (a 2,048-gene chunk of 5,000 samples is 40 MB).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special, stats

from genexflow.cohort import ValueType

#: Genes per chunk: large enough for SIMD sorts to dominate, small enough to stay cache- and RAM-friendly.
CHUNK_GENES = 2048


def library_sizes(X: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Per-sample sum of (non-negative, non-missing) values over ``columns`` (all when None), float64."""
    n = X.shape[0]
    out = np.zeros(n, np.float64)
    cols = np.arange(X.shape[1]) if columns is None else np.asarray(columns)
    for start in range(0, len(cols), CHUNK_GENES):
        block = X[:, cols[start:start + CHUNK_GENES]].astype(np.float64, copy=False)
        out += np.nansum(np.clip(block, 0, None), axis=1)
    return out


def log_chunk(X: np.ndarray, columns: np.ndarray, value_type: ValueType, lib: np.ndarray | None,
              offset: np.ndarray | None = None) -> np.ndarray:
    """Log-scale values of ``X[:, columns]`` transposed to (len(columns), n_samples) float32, C order.

    counts -> log2(CPM + 1) with ``lib`` as library sizes; TPM/FPKM -> log2(x + 1); log-expression as is.
    ``offset`` (log2 size factor per sample, see :func:`sample_offsets`) divides the scaled values *before*
    the log (``log2(CPM / 2^offset + 1)``), so zero counts stay exactly zero: subtracting it after the log
    would move the atoms of low-count genes and KS would see shifted atoms as drift. For log-expression it
    is subtracted. NaN stays NaN.
    """
    cols = np.asarray(columns)
    if len(cols) and cols[-1] - cols[0] == len(cols) - 1 and np.all(np.diff(cols) == 1):
        block = X[:, cols[0]:cols[-1] + 1]  # contiguous slice: no fancy-index copy
    else:
        block = X[:, cols]
    Y = np.empty((block.shape[1], block.shape[0]), np.float32)
    np.copyto(Y, block.T, casting="unsafe")
    if value_type in (ValueType.COUNTS, ValueType.TPM, ValueType.FPKM):
        np.maximum(Y, 0, out=Y)
        scale = np.ones(Y.shape[1])
        if value_type is ValueType.COUNTS:
            scale = 1e6 / np.where(lib > 0, lib, 1.0)
        if offset is not None:
            scale = scale * np.exp2(-offset.astype(np.float64))
        if value_type is ValueType.COUNTS or offset is not None:
            Y *= scale.astype(np.float32)[None, :]
        Y += 1
        np.log2(Y, out=Y)
    elif offset is not None:
        Y -= offset.astype(np.float32)[None, :]
    return Y


def iter_log_chunks(
    X: np.ndarray, columns: np.ndarray, value_type: ValueType, lib: np.ndarray | None,
    offset: np.ndarray | None = None, chunk: int = CHUNK_GENES,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(positions into columns, chunk of shape (g, n_samples))`` over ``columns`` in order."""
    for start in range(0, len(columns), chunk):
        sl = slice(start, min(start + chunk, len(columns)))
        yield sl, log_chunk(X, columns[sl], value_type, lib, offset)


def needs_offsets(value_type: ValueType) -> bool:
    """Compositional data (counts, TPM, FPKM) get a robust per-sample scale correction."""
    return value_type in (ValueType.COUNTS, ValueType.TPM, ValueType.FPKM)


def choose_anchors(X: np.ndarray, value_type: ValueType, lib: np.ndarray | None, n_anchors: int = 2000,
                   max_zero_fraction: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Anchor genes for :func:`sample_offsets`: the most expressed genes that are (almost) never zero.

    Returns the anchor columns (sorted) and their mean log-scale expression (before any offset).
    """
    g = X.shape[1]
    mean = np.empty(g)
    zero = np.empty(g)
    for sl, Y in iter_log_chunks(X, np.arange(g), value_type, lib):
        mean[sl] = np.nanmean(Y, axis=1)
        zero[sl] = (Y <= 0).mean(1)
    ok = np.flatnonzero(np.isfinite(mean) & (zero <= max_zero_fraction))
    if len(ok) < 50:  # sparse data: fall back to the least-zero genes
        ok = np.argsort(zero)[: min(g, 500)]
    cols = np.sort(ok[np.argsort(-mean[ok])][:n_anchors])
    return cols, mean[cols]


def sample_offsets(X: np.ndarray, anchor_cols: np.ndarray, anchor_mean: np.ndarray, value_type: ValueType,
                   lib: np.ndarray | None) -> np.ndarray:
    """Per-sample log2 scale offset: the median over anchor genes of (log expression - reference mean).

    This is DESeq's median-of-ratios size factor taken after CPM: a program that changes a few hundred
    genes a lot (a new subtype) moves the library total and with it every gene's CPM, but not the median
    ratio, so gene-level tests see the genes that really changed. NaN-free (0 when nothing is observed).
    """
    if len(anchor_cols) == 0:
        return np.zeros(X.shape[0], np.float32)
    Y = log_chunk(X, anchor_cols, value_type, lib)
    Y -= anchor_mean.astype(np.float32)[:, None]
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            off = np.nanmedian(Y, axis=0)
    return np.nan_to_num(off).astype(np.float32)


@dataclass
class ChunkSketch:
    """Per-gene summaries of one chunk (genes x samples, NaN = missing)."""

    n_valid: np.ndarray  # (g,) int64
    mean: np.ndarray  # (g,)
    var: np.ndarray  # (g,)
    quantiles: np.ndarray  # (g, m) at the probability grid
    le: np.ndarray | None = None  # (g, m) fraction <= grid value (only when a grid was given)
    lt: np.ndarray | None = None  # (g, m) fraction < grid value


def sketch_chunk(Y: np.ndarray, probs: np.ndarray, grid: np.ndarray | None = None) -> ChunkSketch:
    """Sort each gene's values once and read off moments, quantiles and (optionally) ECDF values.

    Parameters
    ----------
    Y : ndarray of shape (g, n)
        Log-scale values, one gene per row; NaN is missing. Modified in place (sorted).
    probs : ndarray of shape (m,)
        Probabilities in [0, 1] at which quantiles are read (linear interpolation between order stats).
    grid : ndarray of shape (g, m), optional
        Values at which the empirical CDF ``F(x) = #{y <= x} / n`` and ``F(x-) = #{y < x} / n`` are taken.
    """
    nan = np.isnan(Y)
    n_valid = Y.shape[1] - nan.sum(1)
    Y[nan] = np.inf  # sorts last; finite queries never count it
    Y.sort(axis=1)
    nv = np.maximum(n_valid, 1)
    finite = np.where(np.isinf(Y), 0.0, Y)
    mean = finite.sum(1, dtype=np.float64) / nv
    var = np.maximum((finite.astype(np.float64) ** 2).sum(1) / nv - mean**2, 0.0)
    del finite
    # Quantiles by linear interpolation between order statistics 0..n_valid-1 of each gene.
    pos = probs[None, :] * (nv - 1)[:, None]
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, (nv - 1)[:, None])
    frac = (pos - lo).astype(np.float32)
    q_lo = np.take_along_axis(Y, lo, 1)
    q_hi = np.take_along_axis(Y, hi, 1)
    quant = q_lo + (q_hi - q_lo) * frac
    quant[n_valid == 0] = np.nan
    out = ChunkSketch(n_valid=n_valid, mean=mean, var=var, quantiles=quant)
    if grid is not None:
        S = torch.from_numpy(Y)
        G = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))
        le = torch.searchsorted(S, G, right=True).numpy()
        lt = torch.searchsorted(S, G, right=False).numpy()
        out.le = (le / nv[:, None]).astype(np.float32)
        out.lt = (lt / nv[:, None]).astype(np.float32)
    return out


def ks_from_grid(le_ref: np.ndarray, lt_ref: np.ndarray, le_new: np.ndarray, lt_new: np.ndarray) -> np.ndarray:
    """KS statistic ``sup |F_ref - F_new|`` read at the reference grid values (both one-sided limits).

    Exact (equal to scipy's ``ks_2samp`` statistic) when the grid holds every reference order statistic; a
    lower bound within one grid step of the reference ECDF otherwise. NaN where a side has no values.
    """
    d = np.maximum(np.abs(le_ref - le_new), np.abs(lt_ref - lt_new)).max(1)
    return d


def ks_pvalue(d: np.ndarray, n_ref: np.ndarray, n_new: np.ndarray) -> np.ndarray:
    """Asymptotic two-sample KS p-value with Stephens' small-sample correction (vectorized)."""
    n_ref = np.asarray(n_ref, np.float64)
    n_new = np.asarray(n_new, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        en = np.sqrt(n_ref * n_new / (n_ref + n_new))
        lam = (en + 0.12 + 0.11 / en) * d
        p = special.kolmogorov(lam)
    p = np.clip(p, 0.0, 1.0)
    p[~np.isfinite(d) | (n_ref < 1) | (n_new < 1)] = np.nan
    return p


def bin_proportions(le: np.ndarray, edge_idx: np.ndarray) -> np.ndarray:
    """Bin proportions (g, B) from ECDF values at the B-1 internal edges ``le[:, edge_idx]``."""
    inner = le[:, edge_idx]
    cdf = np.concatenate([np.zeros((le.shape[0], 1), le.dtype), inner, np.ones((le.shape[0], 1), le.dtype)], 1)
    return np.clip(np.diff(cdf, axis=1), 0, None)


def psi(p_ref: np.ndarray, p_new: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Population stability index ``sum (p_new - p_ref) * ln(p_new / p_ref)`` per row (eps-smoothed)."""
    a = np.clip(p_ref, eps, None)
    b = np.clip(p_new, eps, None)
    return ((b - a) * np.log(b / a)).sum(1)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values, :func:`scipy.stats.false_discovery_control`); NaN
    p-values stay NaN and are not counted."""
    p = np.asarray(p, np.float64)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(np.clip(p[ok], 0, 1), method="bh")
    return q
