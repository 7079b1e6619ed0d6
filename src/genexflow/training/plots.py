"""Figures logged with every run: learning curves, ROC curves, confusion matrix, latent-space PCA coloured
by label and by batch, top genes / pathways. Each function returns a matplotlib Figure (Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from genexflow.priors.names import pathway_label


def _plt():
    # lazy: matplotlib is only needed for plots
    import matplotlib

    matplotlib.use("Agg", force=False)
    # lazy: matplotlib is only needed for plots
    import matplotlib.pyplot as plt

    return plt


def learning_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], title: str = "learning curves"):
    """Train and validation loss per epoch, one line pair per fold / run."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, hist in histories.items():
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        line = axes[0].plot(ep, [h.get("train_prediction_loss", np.nan) for h in hist], label=f"{name} train")[0]
        axes[0].plot(ep, [h.get("val_loss", np.nan) for h in hist], "--", color=line.get_color(),
                     label=f"{name} val")
        key = "val_balanced_accuracy" if "val_balanced_accuracy" in hist[0] else "val_r2"
        axes[1].plot(ep, [h.get(key, np.nan) for h in hist], color=line.get_color(), label=name)
        axes[1].set_ylabel(key)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("prediction loss")
    axes[1].set_xlabel("epoch")
    if len(histories) <= 6:
        axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def roc_curves(y_true: np.ndarray, probas: Mapping[str, np.ndarray], class_names: Sequence[str]):
    """One-vs-rest ROC (macro over classes shown as the positive class for binary) per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    y_true = np.asarray(y_true).astype(int)
    k = len(class_names)
    for name, p in probas.items():
        if k == 2:
            fpr, tpr, _ = roc_curve(y_true, p[:, 1])
            auc = roc_auc_score(y_true, p[:, 1])
        else:  # micro-average curve over one-vs-rest indicators
            onehot = (y_true[:, None] == np.arange(k)[None, :]).astype(int)
            fpr, tpr, _ = roc_curve(onehot.ravel(), p.ravel())
            auc = roc_auc_score(onehot, p, average="micro")
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (out-of-fold)" + ("" if k == 2 else ", micro-average OvR"))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def confusion_matrix_plot(cm: np.ndarray, class_names: Sequence[str], title: str = "confusion matrix"):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def latent_pca(latent: np.ndarray, colour_by: Mapping[str, Sequence], title: str = "latent space (PCA)"):
    """First two principal components of the latent space, one panel per colouring (label, batch)."""
    plt = _plt()
    Z = np.asarray(latent, dtype=np.float64)
    Z = Z - Z.mean(0)
    _, s, vt = np.linalg.svd(Z, full_matrices=False)
    pc = Z @ vt[:2].T
    var = (s[:2] ** 2) / max((s**2).sum(), 1e-12)
    fig, axes = plt.subplots(1, len(colour_by), figsize=(5 * len(colour_by), 4.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], colour_by.items(), strict=True):
        v = pd.Series(list(values))
        if pd.api.types.is_numeric_dtype(v) and v.nunique() > 10:
            sc = ax.scatter(pc[:, 0], pc[:, 1], c=v.to_numpy(float), s=12, cmap="viridis")
            fig.colorbar(sc, ax=ax)
        else:
            for lv in sorted(v.astype(str).unique()):
                m = (v.astype(str) == lv).to_numpy()
                ax.scatter(pc[m, 0], pc[m, 1], s=12, label=lv)
            ax.legend(fontsize=7, title=name)
        ax.set_xlabel(f"PC1 ({var[0]:.0%})")
        ax.set_ylabel(f"PC2 ({var[1]:.0%})" if len(var) > 1 else "PC2")
        ax.set_title(f"{title}: {name}")
    fig.tight_layout()
    return fig


def top_bar(series: pd.Series, title: str, k: int = 20, xlabel: str = "mean |attribution|",
            names: Mapping[str, str] | None = None):
    """Horizontal bar chart of the top ``k`` entries of a score series; with ``names`` (pathway ID ->
    name) each bar reads ``"hsa04110 Cell cycle"`` instead of the bare ID."""
    plt = _plt()
    s = series.sort_values(ascending=False).head(k)[::-1]
    labels = [pathway_label(str(i), names) for i in s.index]
    width = 6 + (0.06 * max(map(len, labels), default=0) if names else 0)
    fig, ax = plt.subplots(figsize=(width, 0.28 * len(s) + 1.2))
    ax.barh(labels, s.to_numpy())
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def predicted_vs_true(y_true: np.ndarray, preds: Mapping[str, np.ndarray]):
    """Regression: out-of-fold predictions against the targets."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, p in preds.items():
        ax.scatter(y_true, p, s=10, alpha=0.6, label=name)
    lo, hi = float(np.min(y_true)), float(np.max(y_true))
    ax.plot([lo, hi], [lo, hi], ":", color="grey")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted (out-of-fold)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
