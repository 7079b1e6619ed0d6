"""The cross-validation comparison a person reads first: each model's primary metric over folds (mean ± SD),
a 95% confidence interval, and the paired difference to the best baseline on the same folds.

Folds of (repeated) k-fold CV share training rows, so their scores are correlated and the naive standard
error ``s / sqrt(J)`` is too small. The intervals use the corrected resampled t-test of Nadeau & Bengio
(2003): ``var = (1/J + n_test/n_train) * s**2`` with ``J - 1`` degrees of freedom, for a model's mean and for
the per-fold paired differences alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

#: Primary metric per task (what the gate compares and the tables lead with).
PRIMARY = {"classification": "balanced_accuracy", "regression": "r2"}
#: The range a metric can take: a model's interval is clipped to it (a t-interval over few folds can
#: otherwise reach past a perfect score); differences are not clipped.
BOUNDS = {"balanced_accuracy": (0.0, 1.0), "accuracy": (0.0, 1.0), "roc_auc": (0.0, 1.0), "pr_auc": (0.0, 1.0),
          "macro_f1": (0.0, 1.0), "r2": (-np.inf, 1.0), "pearson": (-1.0, 1.0)}


@dataclass
class ModelRow:
    """One model's line of the comparison table."""

    model: str
    n_folds: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    is_deep: bool = False
    is_best_baseline: bool = False
    diff: float | None = None  # paired mean difference to the best baseline (this model - best baseline)
    diff_low: float | None = None
    diff_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def corrected_t_interval(values: Sequence[float], test_train_ratio: float, level: float = 0.95
                         ) -> tuple[float, float, float, float]:
    """Mean, SD and the Nadeau-Bengio corrected t-interval of per-fold values.

    Parameters
    ----------
    values : sequence of float, length J
        One value per fold (NaNs are dropped).
    test_train_ratio : float
        Mean ``n_test / n_train`` of the folds (0 for independent samples: the plain t-interval).
    level : float
        Coverage of the interval.

    Returns
    -------
    (mean, sd, low, high)
        With one finite value the interval is that value (no spread to estimate).

    Examples
    --------
    >>> m, s, lo, hi = corrected_t_interval([0.8, 0.9, 0.85, 0.7, 0.75], 0.25)
    >>> round(m, 3), lo < m < hi
    (0.8, True)
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return (float("nan"),) * 4
    mean = float(v.mean())
    if len(v) == 1:
        return mean, 0.0, mean, mean
    sd = float(v.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2, len(v) - 1)) * np.sqrt(1 / len(v) + test_train_ratio) * sd
    return mean, sd, mean - half, mean + half


def cv_comparison(folds: pd.DataFrame, metric: str, deep: str = "pathwaynet") -> list[ModelRow]:
    """The comparison table from per-fold metrics.

    Parameters
    ----------
    folds : DataFrame
        One row per (model, split) with columns ``model, split, n_train, n_test`` and ``metric``
        (:attr:`genexflow.training.cv.CVResult.folds`).
    metric : str
        The metric compared (higher is better: balanced accuracy, ROC-AUC, R²).
    deep : str
        Name of the deep model's rows.

    Returns
    -------
    list of ModelRow
        The deep model first, then the baselines by decreasing mean.
    """
    if folds is None or not len(folds) or metric not in folds.columns:
        return []
    ratio = float((folds["n_test"] / folds["n_train"].clip(lower=1)).mean()) if "n_test" in folds else 0.0
    wide = folds.pivot_table(index="split", columns="model", values=metric, sort=False)
    rows: dict[str, ModelRow] = {}
    for m in dict.fromkeys(folds["model"]):
        mean, sd, lo, hi = corrected_t_interval(wide[m].to_numpy(), ratio)
        low, high = BOUNDS.get(metric, (-np.inf, np.inf))
        lo, hi = (float(np.clip(lo, low, high)), float(np.clip(hi, low, high))) if np.isfinite(mean) else (lo, hi)
        rows[m] = ModelRow(m, int(np.isfinite(wide[m]).sum()), mean, sd, lo, hi, is_deep=m == deep)
    baselines = [m for m in rows if m != deep and np.isfinite(rows[m].mean)]
    if baselines:
        best = max(baselines, key=lambda m: rows[m].mean)
        rows[best].is_best_baseline = True
        for m, r in rows.items():
            if m == best:
                continue
            d = (wide[m] - wide[best]).to_numpy()
            r.diff, _, r.diff_low, r.diff_high = corrected_t_interval(d, ratio)
    order = [m for m in rows if m == deep] + sorted(baselines, key=lambda m: -rows[m].mean) \
        + [m for m in rows if m != deep and m not in baselines]
    return [rows[m] for m in order]


def best_baseline(rows: Sequence[ModelRow]) -> ModelRow | None:
    return next((r for r in rows if r.is_best_baseline), None)


def verdict(rows: Sequence[ModelRow], metric: str) -> str:
    """One sentence: how the deep model compares with the best baseline on the same folds."""
    deep = next((r for r in rows if r.is_deep), None)
    best = best_baseline(rows)
    if deep is None:
        return "The deep model was not cross-validated in this run."
    if best is None or deep.diff is None:
        return f"Deep model {metric} {deep.mean:.3f} ± {deep.sd:.3f} over {deep.n_folds} folds; no baseline to compare."
    where = ("better than" if deep.diff_low is not None and deep.diff_low > 0 else
             "worse than" if deep.diff_high is not None and deep.diff_high < 0 else "not distinguishable from")
    return (f"The deep model ({metric} {deep.mean:.3f}) is {where} the best baseline {best.model} "
            f"({best.mean:.3f}): paired difference {deep.diff:+.3f}, 95% CI [{deep.diff_low:+.3f}, "
            f"{deep.diff_high:+.3f}] over {deep.n_folds} folds.")
