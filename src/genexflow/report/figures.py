"""The report's figures, built from the report data (plain lists): plotly where hovering or toggling
models helps (PCA, per-fold scores, ROC/PR, calibration, learning curves), matplotlib PNG where a static
picture says it all (confusion matrix, ranked bars). Colours: Okabe-Ito for categories, viridis for
continuous scales, both colour-blind safe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from genexflow.report.page import OKABE_ITO, palette


def _go():
    return go


def _model_colours(models: Sequence[str], deep: str) -> dict[str, str]:
    """The deep model always blue, the baselines the other Okabe-Ito colours in name order (so a model has
    the same colour in every figure, whatever order a figure lists them in)."""
    others = sorted(m for m in models if m != deep)
    cols = {deep: OKABE_ITO[0]}
    cols.update(palette(others) if len(others) > len(OKABE_ITO) - 1 else
                dict(zip(others, OKABE_ITO[1:], strict=False)))
    return cols


# ------------------------------------------------------------------------------------------------ PCA
def pca_panels(views: Mapping[str, Mapping[str, Any]], colour: Sequence[str], what: str,
               sample_ids: Sequence[str]):
    """Side-by-side PCA scatter of each view (before/after correction), points coloured by ``colour``."""
    go = _go()
    names = list(views)
    sil_key = "batch_silhouette" if what == "batch" else "label_silhouette"
    titles = []
    for n in names:
        s = views[n].get(sil_key)
        titles.append(f"{n} correction" if n in ("before", "after") else n)
        if s is not None:
            titles[-1] += f" · silhouette {s:.2f}"
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.08)
    levels = sorted(set(colour))
    cols = palette(levels)
    c = np.asarray(colour)
    ids = np.asarray(sample_ids)
    for j, n in enumerate(names):
        v = views[n]
        x, y = np.asarray(v["pc1"]), np.asarray(v["pc2"])
        for lv in levels:
            m = c == lv
            fig.add_trace(go.Scatter(x=x[m], y=y[m], mode="markers", name=str(lv), legendgroup=str(lv),
                                     showlegend=j == 0, text=ids[m], hovertemplate="%{text}<extra>" + str(lv)
                                     + "</extra>", marker={"color": cols[str(lv)], "size": 7, "opacity": 0.85,
                                                            "line": {"width": 0.5, "color": "white"}}),
                          row=1, col=j + 1)
        ev = v.get("explained") or [float("nan"), float("nan")]
        fig.update_xaxes(title_text=f"PC1 ({ev[0]:.0%})", row=1, col=j + 1)
        fig.update_yaxes(title_text=f"PC2 ({ev[1]:.0%})" if len(ev) > 1 else "PC2", row=1, col=j + 1)
    fig.update_layout(legend_title_text=what, height=380)
    return fig


# ------------------------------------------------------------------------------------------------ CV
def cv_points(cv: Mapping[str, Any], deep: str):
    """Per-fold scores (points) and each model's mean with its 95% CI (bar), one row per model."""
    go = _go()
    rows = cv["rows"]
    order = [r["model"] for r in rows][::-1]  # plotly draws categories bottom-up: deep model on top
    cols = _model_colours([r["model"] for r in rows], deep)
    folds = cv["folds"]
    rng = np.random.default_rng(0)
    fig = go.Figure()
    for r in rows:
        pts = [f for f in folds if f["model"] == r["model"] and f["value"] is not None]
        jitter = rng.uniform(-0.18, 0.18, len(pts))
        fig.add_trace(go.Scatter(
            x=[f["value"] for f in pts], y=[order.index(r["model"]) + j for j in jitter], mode="markers",
            marker={"color": cols[r["model"]], "size": 7, "opacity": 0.55}, name=r["model"], showlegend=False,
            text=[f"{f['split']} ({f['group']})" if f.get("group") not in (None, "", "None", "nan") else f["split"]
                  for f in pts],
            hovertemplate="%{text}: %{x:.3f}<extra>" + r["model"] + "</extra>"))
        if r["mean"] is not None:
            fig.add_trace(go.Scatter(
                x=[r["mean"]], y=[order.index(r["model"])], mode="markers", showlegend=False, name=r["model"],
                marker={"color": cols[r["model"]], "size": 13, "symbol": "diamond", "line": {"width": 1, "color": "black"}},
                error_x={"type": "data", "symmetric": False, "array": [r["ci_high"] - r["mean"]],
                         "arrayminus": [r["mean"] - r["ci_low"]], "thickness": 2, "width": 6, "color": cols[r["model"]]},
                hovertemplate=f"mean %{{x:.3f}}, 95% CI [{r['ci_low']:.3f}, {r['ci_high']:.3f}]<extra>{r['model']}</extra>"))
    fig.update_yaxes(tickvals=list(range(len(order))), ticktext=order, range=[-0.6, len(order) - 0.4])
    fig.update_xaxes(title_text=cv["metric"].replace("_", " ") + " (per fold)")
    fig.update_layout(height=max(220, 55 * len(order) + 90), showlegend=False)
    return fig


# ------------------------------------------------------------------------------------------------ curves
def _binary_or_micro(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = proba.shape[1]
    if k == 2:
        return (y == 1).astype(int), proba[:, 1]
    onehot = (y[:, None] == np.arange(k)[None, :]).astype(int)
    return onehot.ravel(), proba.ravel()


def roc_pr(oof: Mapping[str, Any], deep: str):
    """ROC and precision-recall curves of every model on the pooled out-of-fold predictions."""
    go = _go()
    y = np.asarray(oof["y_true"]).astype(int)
    cols = _model_colours(oof["models"], deep)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("ROC", "precision-recall"), horizontal_spacing=0.1)
    for m in oof["models"]:
        p = np.asarray(oof["outputs"][m], dtype=np.float64)
        ok = np.isfinite(p).all(1)
        yt, score = _binary_or_micro(y[ok], p[ok])
        if len(np.unique(yt)) < 2:
            continue
        fpr, tpr, _ = roc_curve(yt, score)
        prec, rec, _ = precision_recall_curve(yt, score)
        width = 3 if m == deep else 1.6
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{m} (AUC {auc(fpr, tpr):.3f})", legendgroup=m,
                                 line={"color": cols[m], "width": width}), row=1, col=1)
        fig.add_trace(go.Scatter(x=rec, y=prec, mode="lines", name=f"{m} (AP {average_precision_score(yt, score):.3f})",
                                 legendgroup=m, showlegend=False, line={"color": cols[m], "width": width}), row=1, col=2)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"},
                             showlegend=False, hoverinfo="skip"), row=1, col=1)
    fig.update_xaxes(title_text="false positive rate", row=1, col=1)
    fig.update_yaxes(title_text="true positive rate", row=1, col=1)
    fig.update_xaxes(title_text="recall", row=1, col=2)
    fig.update_yaxes(title_text="precision", row=1, col=2)
    fig.update_layout(height=400)
    return fig


def calibration(oof: Mapping[str, Any], deep: str, n_bins: int = 10):
    """Reliability diagram: mean predicted confidence vs observed accuracy per confidence bin."""
    go = _go()
    y = np.asarray(oof["y_true"]).astype(int)
    cols = _model_colours(oof["models"], deep)
    fig = go.Figure()
    for m in oof["models"]:
        p = np.asarray(oof["outputs"][m], dtype=np.float64)
        ok = np.isfinite(p).all(1)
        p, yt = p[ok], y[ok]
        conf = p.max(1)
        correct = (p.argmax(1) == yt).astype(float)
        bins = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
        xs, ys, ns = [], [], []
        for b in range(n_bins):
            sel = bins == b
            if sel.any():
                xs.append(conf[sel].mean())
                ys.append(correct[sel].mean())
                ns.append(int(sel.sum()))
        ece = float(np.sum(np.abs(np.array(ys) - np.array(xs)) * np.array(ns)) / max(len(yt), 1))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{m} (ECE {ece:.3f})", text=ns,
                                 hovertemplate="confidence %{x:.2f}, accuracy %{y:.2f} (%{text} samples)",
                                 line={"color": cols[m], "width": 3 if m == deep else 1.5}))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"},
                             name="perfect calibration", hoverinfo="skip"))
    fig.update_xaxes(title_text="predicted probability of the predicted class", range=[0, 1.02])
    fig.update_yaxes(title_text="observed accuracy", range=[0, 1.02])
    fig.update_layout(height=380)
    return fig


def predicted_vs_true(oof: Mapping[str, Any], deep: str):
    """Regression: out-of-fold predictions against the truth."""
    go = _go()
    y = np.asarray(oof["y_true"], dtype=np.float64)
    cols = _model_colours(oof["models"], deep)
    fig = go.Figure()
    for m in oof["models"]:
        p = np.asarray(oof["outputs"][m], dtype=np.float64)
        fig.add_trace(go.Scatter(x=y, y=p, mode="markers", name=m, visible=True if m == deep else "legendonly",
                                 marker={"color": cols[m], "size": 6, "opacity": 0.7}))
    lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "grey"},
                             name="y = x", hoverinfo="skip"))
    fig.update_xaxes(title_text="true value")
    fig.update_yaxes(title_text="predicted (out-of-fold)")
    fig.update_layout(height=400)
    return fig


def learning_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]]):
    """Training and validation loss per epoch (left) and the validation metric (right), per fold."""
    go = _go()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("prediction loss (solid: train, dashed: validation)",
                                                        "validation metric"), horizontal_spacing=0.1)
    cols = palette(list(histories))
    metric_name = "validation metric"
    for name, h in histories.items():
        if not h:
            continue
        ep = [r.get("epoch") for r in h]
        c = cols[name]
        fig.add_trace(go.Scatter(x=ep, y=[r.get("train_prediction_loss") for r in h], mode="lines", name=name,
                                 legendgroup=name, line={"color": c}), row=1, col=1)
        fig.add_trace(go.Scatter(x=ep, y=[r.get("val_loss") for r in h], mode="lines", name=f"{name} val",
                                 legendgroup=name, showlegend=False, line={"color": c, "dash": "dash"}), row=1, col=1)
        key = "val_balanced_accuracy" if "val_balanced_accuracy" in h[0] else "val_r2"
        metric_name = key.replace("val_", "validation ").replace("_", " ")
        fig.add_trace(go.Scatter(x=ep, y=[r.get(key) for r in h], mode="lines", name=name, legendgroup=name,
                                 showlegend=False, line={"color": c}), row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text=metric_name, row=1, col=2)
    fig.update_layout(height=380)
    return fig


# ------------------------------------------------------------------------------------------------ static
def _plt():
    # lazy: matplotlib is only needed for plots
    import matplotlib

    matplotlib.use("Agg", force=False)
    # lazy: matplotlib is only needed for plots
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(cm: np.ndarray, class_names: Sequence[str]):
    """Counts and row percentages (recall per true class), viridis shading by row percentage."""
    plt = _plt()
    cm = np.asarray(cm)
    k = len(class_names)
    rows = np.maximum(cm.sum(1, keepdims=True), 1)
    frac = cm / rows
    fig, ax = plt.subplots(figsize=(1.1 * k + 2.6, 0.95 * k + 1.9))
    ax.imshow(frac, cmap="viridis", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{frac[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="black" if frac[i, j] > 0.55 else "white")
    ax.set_xticks(range(k), class_names, rotation=30 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.tight_layout()
    return fig


def ranked_bars(labels: Sequence[str], values: Sequence[float], xlabel: str, colour: str = OKABE_ITO[0],
                highlight: Sequence[bool] | None = None):
    """Horizontal bars, largest on top; ``highlight`` bars drawn in orange (e.g. FDR < 0.05)."""
    plt = _plt()
    labels, values = list(labels)[::-1], list(values)[::-1]
    hl = list(highlight)[::-1] if highlight is not None else [False] * len(values)
    fig, ax = plt.subplots(figsize=(7.2, 0.27 * len(values) + 1.0))
    ax.barh(range(len(values)), values, color=[OKABE_ITO[1] if h else colour for h in hl])
    ax.set_yticks(range(len(values)), [lb if len(lb) <= 48 else lb[:46] + "…" for lb in labels], fontsize=8.5)
    ax.set_xlabel(xlabel)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig
