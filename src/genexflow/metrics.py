"""The one metrics module: classification and regression metrics, calibration error and bootstrap
intervals, for cross-validation, held-out evaluation, the registry gate and monitoring's performance-decay
check alike (so a number means the same thing wherever it is compared).

All functions take plain arrays: ``y_true`` as integer class indices (classification) or floats
(regression) and ``proba`` of shape (n_samples, n_classes) or ``pred`` of shape (n_samples,). They return
plain dicts of floats so the trainer, cross-validation, the MLflow tracker and the registry gate can log
and compare them without knowing which model produced them. :func:`evaluate_labels` takes label strings
(a sample sheet's column) and the model's class names instead of indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

from genexflow.errors import InputError

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "pr_auc", "ece", "log_loss")
REGRESSION_METRICS = ("r2", "mae", "rmse", "pearson")
#: Metrics where smaller is better (everything else is maximized by HPO and the registry gate).
LOWER_IS_BETTER = frozenset({"ece", "log_loss", "mae", "rmse", "loss", "val_loss"})


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """Top-label expected calibration error (ECE).

    ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` over equal-width confidence bins of the predicted
    class probability.

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,)
        Integer class indices.
    proba : ndarray of shape (n_samples, n_classes)
    n_bins : int

    Returns
    -------
    float in [0, 1]
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba.max(1)
    correct = (proba.argmax(1) == y_true).astype(np.float64)
    bins = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    acc = np.bincount(bins, weights=correct, minlength=n_bins)
    cf = np.bincount(bins, weights=conf, minlength=n_bins)
    return float(np.abs(acc - cf).sum() / max(len(y_true), 1))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, n_classes: int | None = None) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, ROC-AUC (one-vs-rest, macro), PR-AUC (macro average
    precision), ECE and log-loss.

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,)
        Integer class indices in ``[0, n_classes)``.
    proba : ndarray of shape (n_samples, n_classes)
        Predicted class probabilities (rows sum to 1).
    n_classes : int, optional
        Defaults to ``proba.shape[1]``.

    Returns
    -------
    dict of str to float
        AUCs are NaN when the evaluated rows hold a single class (e.g. one held-out batch).
    """
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or len(proba) != len(y_true):
        raise InputError(f"proba has shape {proba.shape}; expected ({len(y_true)}, n_classes)")
    k = n_classes or proba.shape[1]
    labels = np.arange(k)
    pred = proba.argmax(1)
    out = {
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, pred),
        "macro_f1": float(skm.f1_score(y_true, pred, labels=np.unique(y_true), average="macro", zero_division=0)),
        "ece": expected_calibration_error(y_true, proba),
        "log_loss": float(-np.mean(np.log(np.clip(proba[np.arange(len(y_true)), np.minimum(y_true, k - 1)],
                                                  1e-7, 1.0)))),
    }
    present = np.unique(y_true)
    if len(present) < 2:
        out["roc_auc"] = float("nan")
        out["pr_auc"] = float("nan")
        return out
    onehot = (y_true[:, None] == labels[None, :]).astype(int)
    if k == 2:
        out["roc_auc"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
        out["pr_auc"] = float(skm.average_precision_score(y_true, proba[:, 1]))
    else:
        # Macro OvR over the classes present (a class absent from the evaluated rows has no AUC).
        aucs = [skm.roc_auc_score(onehot[:, c], proba[:, c]) for c in present]
        aps = [skm.average_precision_score(onehot[:, c], proba[:, c]) for c in present]
        out["roc_auc"] = float(np.mean(aucs))
        out["pr_auc"] = float(np.mean(aps))
    return out


def _balanced_accuracy(y_true: np.ndarray, pred: np.ndarray) -> float:
    # Mean recall over the classes present in y_true (sklearn warns on absent predicted classes).
    classes = np.unique(y_true)
    return float(np.mean([(pred[y_true == c] == c).mean() for c in classes]))


def _auc_binary(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC by the Mann-Whitney rank statistic (ties get average ranks), as sklearn's roc_auc_score."""
    pos = y.astype(bool)
    n1, n0 = pos.sum(), (~pos).sum()
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def fast_classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and ROC-AUC (OvR macro) in plain numpy: the same values as
    :func:`classification_metrics` at a fraction of the cost, for bootstrap resampling."""
    y = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=np.float64)
    k = proba.shape[1]
    pred = proba.argmax(1)
    classes = np.unique(y)
    tp = np.array([np.sum((pred == c) & (y == c)) for c in classes], dtype=np.float64)
    n_true = np.array([np.sum(y == c) for c in classes], dtype=np.float64)
    n_pred = np.array([np.sum(pred == c) for c in classes], dtype=np.float64)
    f1 = np.where(n_true + n_pred > 0, 2 * tp / np.maximum(n_true + n_pred, 1), 0.0)
    out = {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(np.mean(tp / n_true)),
           "macro_f1": float(f1.mean())}
    if len(classes) < 2:
        out["roc_auc"] = float("nan")
    elif k == 2:
        out["roc_auc"] = _auc_binary(y == 1, proba[:, 1])
    else:
        out["roc_auc"] = float(np.mean([_auc_binary(y == c, proba[:, c]) for c in classes]))
    return out


def confusion(y_true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix (n_classes, n_classes): rows true class, columns predicted class."""
    return skm.confusion_matrix(np.asarray(y_true).astype(int), np.asarray(pred).astype(int),
                                labels=np.arange(n_classes))


def regression_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """R², MAE, RMSE and Pearson r for predictions of shape (n_samples,)."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    pred = np.asarray(pred, dtype=np.float64).ravel()
    if len(y_true) != len(pred):
        raise InputError(f"{len(pred)} predictions for {len(y_true)} targets")
    r = np.corrcoef(y_true, pred)[0, 1] if len(y_true) > 1 and pred.std() > 0 and y_true.std() > 0 else np.nan
    return {
        "r2": float(skm.r2_score(y_true, pred)) if len(y_true) > 1 else float("nan"),
        "mae": float(np.mean(np.abs(y_true - pred))),
        "rmse": float(np.sqrt(np.mean((y_true - pred) ** 2))),
        "pearson": float(r),
    }


def evaluate(task: str, y_true: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """Dispatch on the task: ``output`` is probabilities (classification) or predictions (regression)."""
    if task == "classification":
        return classification_metrics(y_true, output)
    if task == "regression":
        return regression_metrics(y_true, output)
    raise InputError(f"unknown task {task!r}; use classification or regression")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (HPO's direction, the gate's comparison)."""
    return metric not in LOWER_IS_BETTER and metric != "mse"


def label_indices(labels: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """Class indices of label strings in ``class_names`` order; refuses a label the model does not know."""
    labels = np.asarray(list(map(str, labels)))
    names = list(map(str, class_names))
    known = np.isin(labels, names)
    if not known.all():
        bad = sorted(set(labels[~known]))[:5]
        raise InputError(f"labels {bad} are not among the model's classes {names}")
    lookup = {c: i for i, c in enumerate(names)}
    return np.array([lookup[v] for v in labels], dtype=np.int64)


def evaluate_labels(task: str, labels: np.ndarray, output: np.ndarray,
                    class_names: Sequence[str] = ()) -> dict[str, float]:
    """:func:`evaluate` for labels as a sample sheet holds them: class names (classification, mapped with
    :func:`label_indices`) or numbers (regression); ``output`` is (n, K) probabilities or (n,) / (n, 1)
    predictions."""
    if task == "classification":
        return classification_metrics(label_indices(labels, class_names), output, len(class_names))
    return evaluate(task, np.asarray(labels, dtype=np.float64), np.asarray(output, dtype=np.float64).reshape(-1))


def bootstrap_ci(
    fn: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    y_true: np.ndarray,
    output: np.ndarray,
    n_boot: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
    stratify: bool = True,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals for every metric ``fn`` returns.

    Parameters
    ----------
    fn : callable ``(y_true, output) -> dict``
        E.g. :func:`classification_metrics` or :func:`regression_metrics`.
    y_true, output : arrays with n_samples rows
    n_boot : int
        Resamples (with replacement).
    alpha : float
        1 - coverage; the interval is the ``alpha/2`` and ``1 - alpha/2`` quantiles.
    stratify : bool
        Resample within each class (classification) so every resample keeps all classes.

    Returns
    -------
    dict of str to (low, high)
    """
    y_true = np.asarray(y_true)
    output = np.asarray(output)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    groups: Sequence[np.ndarray]
    if stratify and np.issubdtype(y_true.dtype, np.integer):
        groups = [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    else:
        groups = [np.arange(n)]
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        for k, v in fn(y_true[idx], output[idx]).items():
            draws.setdefault(k, []).append(v)
    return {k: (float(np.nanquantile(v, alpha / 2)), float(np.nanquantile(v, 1 - alpha / 2)))
            for k, v in draws.items() if np.isfinite(v).any()}


def paired_bootstrap_difference(
    task: str,
    y_true: np.ndarray,
    output_a: np.ndarray,
    output_b: np.ndarray,
    metric: str,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """``metric(a) - metric(b)`` on the same rows and its percentile bootstrap interval, resampling the rows
    (within each class for classification) and scoring both outputs on every resample (paired).

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,)
    output_a, output_b : probabilities (n_samples, n_classes) or predictions (n_samples,)
    metric : a key of :func:`evaluate`'s result (e.g. ``balanced_accuracy``, ``roc_auc``, ``r2``)

    Returns
    -------
    dict with ``a``, ``b``, ``difference``, ``ci_low``, ``ci_high``, ``n`` (rows), ``n_boot``
    """
    y_true = np.asarray(y_true)
    a, b = np.asarray(output_a), np.asarray(output_b)
    fast = task == "classification" and metric in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")

    def score(idx: np.ndarray) -> tuple[float, float]:
        if fast:
            return (fast_classification_metrics(y_true[idx], a[idx])[metric],
                    fast_classification_metrics(y_true[idx], b[idx])[metric])
        return evaluate(task, y_true[idx], a[idx])[metric], evaluate(task, y_true[idx], b[idx])[metric]

    n = len(y_true)
    full = np.arange(n)
    va, vb = score(full)
    rng = np.random.default_rng(seed)
    groups = ([np.flatnonzero(y_true == c) for c in np.unique(y_true)] if task == "classification"
              else [full])
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        sa, sb = score(idx)
        diffs[i] = sa - sb
    return {"a": float(va), "b": float(vb), "difference": float(va - vb),
            "ci_low": float(np.nanquantile(diffs, alpha / 2)), "ci_high": float(np.nanquantile(diffs, 1 - alpha / 2)),
            "n": int(n), "n_boot": int(n_boot)}


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation (ddof=1) of each metric over folds, ignoring NaN."""
    keys = sorted({k for r in rows for k in r})
    out = {}
    for k in keys:
        v = np.array([r.get(k, np.nan) for r in rows], dtype=np.float64)
        ok = v[np.isfinite(v)]
        out[k] = (float(ok.mean()) if len(ok) else float("nan"),
                  float(ok.std(ddof=1)) if len(ok) > 1 else 0.0)
    return out


__all__ = [
    "CLASSIFICATION_METRICS",
    "LOWER_IS_BETTER",
    "REGRESSION_METRICS",
    "bootstrap_ci",
    "classification_metrics",
    "confusion",
    "evaluate",
    "evaluate_labels",
    "expected_calibration_error",
    "fast_classification_metrics",
    "higher_is_better",
    "label_indices",
    "paired_bootstrap_difference",
    "regression_metrics",
    "summarize",
]
