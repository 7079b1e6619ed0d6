"""Batch-correction quality report: PCA before/after coloured by batch and by biology, with silhouettes.

A good correction lowers the batch silhouette (samples no longer cluster by batch) and keeps the
biology silhouette (the biological groups stay apart). Silhouettes are computed on the top principal
components (Euclidean), where the biology lives, not on all genes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import silhouette_score

from genexflow.errors import InputError
from genexflow.preprocessing._utils import as_labels, as_matrix


def _pca(X: np.ndarray, n_pcs: int) -> tuple[np.ndarray, np.ndarray]:
    Xc = X - X.mean(axis=0)
    if Xc.shape[0] <= Xc.shape[1]:  # few samples, many genes: eigen-decompose the samples' Gram matrix
        lam, U = np.linalg.eigh(Xc @ Xc.T)
        order = np.argsort(lam)[::-1]
        lam, U = np.clip(lam[order], 0, None), U[:, order]
        S = np.sqrt(lam)
    else:
        U, S, _ = np.linalg.svd(Xc, full_matrices=False)
    k = min(n_pcs, len(S))
    var = S**2 / max(1, X.shape[0] - 1)
    return U[:, :k] * S[:k], var[:k] / var.sum()


def _silhouette(Z: np.ndarray, labels: np.ndarray) -> float:
    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
        return float("nan")
    return float(silhouette_score(Z, labels, metric="euclidean"))


def batch_correction_report(
    X_before: Any, X_after: Any, batch: Any, biology: Any, out_dir: str | Path, n_pcs: int = 10,
    title: str = "batch correction",
) -> dict:
    """Write ``batch_correction.png`` and ``batch_correction.json`` into ``out_dir``.

    Parameters
    ----------
    X_before, X_after : array-like of shape (n_samples, n_genes)
        Expression before and after correction (same samples; genes may differ).
    batch, biology : array-like of shape (n_samples,)
        Batch labels and the biological grouping that must be kept.
    out_dir : folder (created)
    n_pcs : principal components used for the silhouettes.

    Returns
    -------
    dict
        ``{"before": {"batch_silhouette", "biology_silhouette", "explained_variance"}, "after": {...},
        "batch_silhouette_change", "biology_silhouette_change", "png", "json"}``.
    """
    # lazy: matplotlib is only needed for plots
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib is only needed for plots
    import matplotlib.pyplot as plt

    A, _ = as_matrix(X_before, "matrix before correction")
    B, _ = as_matrix(X_after, "matrix after correction")
    if A.shape[0] != B.shape[0]:
        raise InputError(f"before has {A.shape[0]} samples but after has {B.shape[0]}")
    if np.isnan(A).any() or np.isnan(B).any():
        raise InputError("the report needs complete matrices; impute missing values first")
    n = A.shape[0]
    batch = as_labels(batch, n, "batch").astype(str)
    biology = as_labels(biology, n, "biology").astype(str)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    result: dict[str, Any] = {"title": title, "n_samples": int(n), "n_pcs": int(n_pcs)}
    pcs = {}
    for name, M in (("before", A), ("after", B)):
        Z, ev = _pca(M, n_pcs)
        pcs[name] = (Z, ev)
        result[name] = {
            "n_genes": int(M.shape[1]),
            "batch_silhouette": _silhouette(Z, batch),
            "biology_silhouette": _silhouette(Z, biology),
            "explained_variance": [round(float(v), 6) for v in ev],
        }
    result["batch_silhouette_change"] = result["after"]["batch_silhouette"] - result["before"]["batch_silhouette"]
    result["biology_silhouette_change"] = (result["after"]["biology_silhouette"]
                                           - result["before"]["biology_silhouette"])

    fig, axes = plt.subplots(2, 2, figsize=(11, 9), constrained_layout=True)
    for row, (labels, what) in enumerate(((batch, "batch"), (biology, "biology"))):
        levels = sorted(set(labels))
        cmap = plt.get_cmap("tab10" if len(levels) <= 10 else "tab20")
        for col, name in enumerate(("before", "after")):
            ax = axes[row, col]
            Z, ev = pcs[name]
            for i, lv in enumerate(levels):
                sel = labels == lv
                ax.scatter(Z[sel, 0], Z[sel, 1] if Z.shape[1] > 1 else np.zeros(sel.sum()), s=22,
                           color=cmap(i % cmap.N), label=lv, alpha=0.85, edgecolors="none")
            sil = result[name][f"{what}_silhouette"]
            ax.set_title(f"{name}: coloured by {what} (silhouette {sil:.3f})")
            ax.set_xlabel(f"PC1 ({ev[0]:.1%})")
            ax.set_ylabel(f"PC2 ({ev[1]:.1%})" if len(ev) > 1 else "PC2")
            if col == 1:
                ax.legend(title=what, fontsize=8, loc="best", markerscale=1.2)
    fig.suptitle(title)
    png = out / "batch_correction.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    js = out / "batch_correction.json"
    result["png"] = str(png)
    result["json"] = str(js)
    js.write_text(json.dumps(result, indent=2))
    return result
