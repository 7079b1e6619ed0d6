"""Is the batch confounded with the label? Test it before correcting (Nygaard, Rødland & Hovig 2016).

Batch correction that does not know the label (ComBat without the label in its design, Harmony) removes
whatever differs between batches. When the label is unevenly spread over the batches, part of the label
signal differs between batches too, so the correction removes biology along with the batch and a model
trained on the corrected data learns less (or learns an artefact). The label cannot go into the design
either: it is unknown at inference. This module measures the association so the run can say so loudly
and offer the alternatives measured in ``docs/preprocessing.md`` (``--batch-method``).

* categorical label: Pearson chi-squared test of the batch x label table and Cramér's V
  (``sqrt(chi2 / (n (min(r, c) - 1)))``, 0 = independent, 1 = every batch holds one class);
* regression target: one-way ANOVA of the target across batches and eta squared
  (between-batch share of the target's variance).

Example
-------
>>> import numpy as np
>>> r = batch_label_association(np.repeat(["a", "b"], 10), np.repeat(["x", "y"], 10))
>>> r.level, round(r.effect_size, 3)
('complete', 1.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from genexflow.errors import InputError

#: Effect sizes at which the association counts as moderate / strong (Cohen's conventions for
#: Cramér's V with few categories and for eta squared).
CRAMER_LEVELS = (0.1, 0.3, 0.5)
ETA2_LEVELS = (0.01, 0.06, 0.14)
#: Below this p-value (and at least a moderate effect) the run warns.
ALPHA = 0.05

ALTERNATIVES = {
    "none": "no correction (--batch-method none; the least label signal lost in docs/preprocessing.md)",
    "covariate": "no correction with the batch as a model covariate (--batch-method none --covariates "
                 "BATCH_COLUMN)",
    "combat-ref": "ComBat with a reference batch (--set preprocessing.reference_batch=B; measured no better "
                  "than plain ComBat)",
}
#: The alternatives from least to most label signal lost, as measured in benchmarks/bench_confounding.py.
MEASURED_ORDER = ("none", "covariate", "combat-ref")


@dataclass(frozen=True)
class ConfoundingResult:
    """Batch-label association of one cohort (a typed record for the CLI summary and the report).

    Attributes
    ----------
    kind : {"categorical", "continuous"}
    test : {"chi-squared", "anova"}
    statistic, p_value : float
        Chi-squared statistic (dof ``(r-1)(c-1)``) or ANOVA F; its p-value.
    dof : tuple of int
    effect_name : {"cramers_v", "eta_squared"}
    effect_size : float
        Cramér's V or eta squared, in [0, 1].
    level : {"negligible", "weak", "moderate", "strong", "complete"}
        ``complete``: every batch holds a single class (categorical only).
    n_samples, n_batches : int
    table : dict
        ``{batch: {class: count}}`` or ``{batch: {"n": .., "mean": ..}}``.
    confounded : bool
        True when the association is significant (p < 0.05) and at least moderate: correcting
        without the label then removes label signal. The run warns.
    alternatives : list of str
        What to do instead, in the order measured best (see ``docs/preprocessing.md``).
    """

    kind: Literal["categorical", "continuous"]
    test: str
    statistic: float
    p_value: float
    dof: tuple[int, ...]
    effect_name: str
    effect_size: float
    level: str
    n_samples: int
    n_batches: int
    table: dict = field(default_factory=dict)
    confounded: bool = False
    alternatives: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (MLflow, the HTML report)."""
        d = asdict(self)
        d["dof"] = list(self.dof)
        d["message"] = self.message()
        return d

    def message(self) -> str:
        """One line for the run summary; starts with ``WARNING`` when the run should not correct blindly."""
        what = (f"batch-label association: {self.test} p={self.p_value:.2g}, "
                f"{_SHOWN[self.effect_name]}={self.effect_size:.2f} ({self.level})")
        if not self.confounded:
            return what
        return (f"WARNING {what}: the label is confounded with the batch; a correction that does not know "
                "the label removes label signal with it (Nygaard et al. 2016). Alternatives: "
                + "; ".join(self.alternatives))


_SHOWN = {"cramers_v": "Cramér's V", "eta_squared": "eta squared"}


def _level(value: float, cuts: tuple[float, float, float]) -> str:
    names = ("negligible", "weak", "moderate", "strong")
    return names[int(np.searchsorted(cuts, value, side="right"))]


def batch_label_association(batch: Any, label: Any, task: str = "auto") -> ConfoundingResult:
    """Test whether ``label`` depends on ``batch``.

    Parameters
    ----------
    batch : array-like of shape (n_samples,)
    label : array-like of shape (n_samples,)
        Class labels, or a numeric target with ``task="regression"``. Missing labels are left out.
    task : {"auto", "classification", "regression"}
        ``"auto"``: numeric with more than 10 distinct values -> regression.

    Returns
    -------
    ConfoundingResult
    """
    b = pd.Series(np.asarray(batch)).astype(str)
    y = pd.Series(np.asarray(label))
    if len(b) != len(y):
        raise InputError(f"batch has {len(b)} values but the label has {len(y)}")
    keep = y.notna().to_numpy()
    b, y = b[keep].reset_index(drop=True), y[keep].reset_index(drop=True)
    if task == "auto":
        numeric = pd.api.types.is_numeric_dtype(y) and y.nunique() > 10
        task = "regression" if numeric else "classification"
    if task not in ("classification", "regression"):
        raise InputError(f"task must be auto, classification or regression, not {task!r}")
    n_batches = b.nunique()
    if n_batches < 2:
        raise InputError("the batch-label association needs at least two batches")
    alternatives = [ALTERNATIVES[k] for k in MEASURED_ORDER]
    if task == "classification":
        tab = pd.crosstab(b, y.astype(str))
        if tab.shape[1] < 2:
            raise InputError("the label has a single class; nothing to test")
        chi2, p, dof, _ = stats.chi2_contingency(tab.to_numpy(), correction=False)
        n = int(tab.to_numpy().sum())
        v = float(np.sqrt(chi2 / (n * (min(tab.shape) - 1))))
        single = bool(((tab > 0).sum(axis=1) == 1).all())
        level = "complete" if single else _level(v, CRAMER_LEVELS)
        return ConfoundingResult(
            kind="categorical", test="chi-squared", statistic=float(chi2), p_value=float(p),
            dof=(int(dof),), effect_name="cramers_v", effect_size=v, level=level, n_samples=n,
            n_batches=n_batches, table={str(k): {str(c): int(x) for c, x in row.items()} for k, row in tab.iterrows()},
            confounded=bool(p < ALPHA and (single or v >= CRAMER_LEVELS[1])), alternatives=alternatives,
        )
    yv = pd.to_numeric(y, errors="raise").to_numpy(np.float64)
    groups = [yv[(b == lv).to_numpy()] for lv in sorted(b.unique())]
    f, p = stats.f_oneway(*groups)
    grand = yv.mean()
    ss_between = sum(len(g) * (g.mean() - grand) ** 2 for g in groups)
    ss_total = float(((yv - grand) ** 2).sum())
    eta2 = float(ss_between / ss_total) if ss_total > 0 else 0.0
    n = len(yv)
    return ConfoundingResult(
        kind="continuous", test="anova", statistic=float(f), p_value=float(p),
        dof=(n_batches - 1, n - n_batches), effect_name="eta_squared", effect_size=eta2,
        level=_level(eta2, ETA2_LEVELS), n_samples=n, n_batches=n_batches,
        table={str(lv): {"n": int(len(g)), "mean": float(g.mean())} for lv, g in zip(sorted(b.unique()), groups, strict=True)},
        confounded=bool(p < ALPHA and eta2 >= ETA2_LEVELS[1]), alternatives=alternatives,
    )


def choose_batch_method(result: ConfoundingResult | None, default: str = "combat") -> str:
    """The ``--batch-method auto`` policy: ``default`` (ComBat) unless the batch is confounded with the
    label, then ``"none"`` (no correction), the option that lost least under confounding in
    ``benchmarks/bench_confounding.py`` (see ``docs/preprocessing.md``)."""
    if result is not None and result.confounded:
        return MEASURED_ORDER[0]
    return default
