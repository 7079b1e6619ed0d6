"""Baselines trained beside the deep model on the same folds and the same fold-fitted preprocessing.

Classification: L2 logistic regression (C tuned by inner CV), elastic-net logistic regression, histogram
gradient boosting, random forest, and L2 logistic regression on pathway scores (mean expression of each
gene set restricted to the fold's kept genes). Regression: ridge, elastic net, histogram gradient boosting,
random forest, ridge on pathway scores.

Every baseline is a plain scikit-learn estimator on the preprocessed (samples x genes) matrix; the
pathway-score one is a ``Pipeline`` starting with :class:`genexflow.priors.scores.PathwayScorer`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import ElasticNetCV, LogisticRegressionCV, RidgeCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from genexflow.errors import InputError
from genexflow.priors.scores import PathwayScorer

#: Baselines run by default (elastic-net is slower; ask for it by name).
DEFAULT_CLASSIFICATION = ("logreg_l2", "hist_gb", "random_forest", "pathway_logreg")
DEFAULT_REGRESSION = ("ridge", "hist_gb", "random_forest", "pathway_ridge")
ALL_CLASSIFICATION = ("logreg_l2", "elasticnet", "hist_gb", "random_forest", "pathway_logreg")
ALL_REGRESSION = ("ridge", "elasticnet", "hist_gb", "random_forest", "pathway_ridge")

_CS = np.logspace(-3, 1, 5)


def inner_folds(y: np.ndarray) -> int:
    """Stratified inner folds a label vector allows: 3, or fewer when its rarest class has fewer rows."""
    return int(min(3, np.bincount(np.unique(y, return_inverse=True)[1]).min()))


def _inner_cv(y: np.ndarray, seed: int, task: str):
    if task != "classification":
        return 3
    return StratifiedKFold(max(inner_folds(y), 2), shuffle=True, random_state=seed)


def make_baseline(name: str, task: str, seed: int = 0, gene_sets: Mapping[str, Sequence[str]] | None = None,
                  genes: Sequence[str] | None = None) -> BaseEstimator:
    """An unfitted baseline estimator by name.

    Parameters
    ----------
    name : str
        One of :data:`ALL_CLASSIFICATION` / :data:`ALL_REGRESSION`.
    task : {"classification", "regression"}
    seed : int
    gene_sets, genes : optional
        Gene sets and the matrix's gene names (needed by the pathway-score baselines).
    """
    clf = task == "classification"
    if name.startswith("pathway_"):
        if gene_sets is None or genes is None:
            raise InputError(f"baseline {name!r} needs gene sets and gene names")

        head = make_baseline("logreg_l2" if clf else "ridge", task, seed)
        return make_pipeline(PathwayScorer(dict(gene_sets), min_size=1, genes=list(genes)), StandardScaler(), head)
    if clf:
        if name == "logreg_l2":
            return LogisticRegressionCV(Cs=_CS, l1_ratios=(0.0,), scoring="neg_log_loss", max_iter=3000, tol=1e-3,
                                        cv=3, use_legacy_attributes=False)
        if name == "elasticnet":
            return LogisticRegressionCV(Cs=[0.05, 0.5, 5.0], l1_ratios=(0.5,), solver="saga", scoring="neg_log_loss",
                                        max_iter=2000, tol=1e-3, cv=3, random_state=seed, use_legacy_attributes=False)
        if name == "hist_gb":
            return HistGradientBoostingClassifier(max_iter=150, learning_rate=0.1, early_stopping=False,
                                                  random_state=seed)
        if name == "random_forest":
            return RandomForestClassifier(n_estimators=300, max_features="sqrt", random_state=seed, n_jobs=1)
    else:
        if name == "ridge":
            return RidgeCV(alphas=np.logspace(-2, 4, 13))
        if name == "elasticnet":
            return ElasticNetCV(l1_ratio=0.5, alphas=30, cv=3, max_iter=5000, random_state=seed)
        if name == "hist_gb":
            return HistGradientBoostingRegressor(max_iter=150, learning_rate=0.1, early_stopping=False,
                                                 random_state=seed)
        if name == "random_forest":
            return RandomForestRegressor(n_estimators=300, max_features=0.33, random_state=seed, n_jobs=1)
    allowed = ALL_CLASSIFICATION if clf else ALL_REGRESSION
    raise InputError(f"unknown {task} baseline {name!r}; use one of {', '.join(allowed)}")


def fit_predict_baseline(name: str, task: str, X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
                         n_classes: int | None = None, seed: int = 0, **kwargs: Any) -> tuple[BaseEstimator, np.ndarray]:
    """Fit a baseline on the training rows and predict the test rows.

    Returns
    -------
    estimator : fitted estimator
    output : ndarray
        Probabilities of shape (n_test, n_classes) with columns for *all* classes (zero for a class absent
        from the training rows), or predictions of shape (n_test,).
    """
    est = make_baseline(name, task, seed, **kwargs)
    last = est.steps[-1][1] if hasattr(est, "steps") else est
    if isinstance(last, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
        # sklearn's default of 20 samples per leaf cannot split a 30-sample cohort at all.
        last.set_params(min_samples_leaf=int(np.clip(len(y_train) // 10, 3, 20)))
    if task == "classification":
        last = est.steps[-1][1] if hasattr(est, "steps") else est
        if isinstance(last, LogisticRegressionCV):
            last.set_params(cv=_inner_cv(y_train, seed, task))
    with warnings.catch_warnings():
        # Convergence chatter from saga/lbfgs on tiny folds is not actionable here.
        warnings.simplefilter("ignore")
        est.fit(X_train, y_train)
        if task != "classification":
            return est, np.asarray(est.predict(X_test), dtype=np.float64)
        proba = est.predict_proba(X_test)
    k = n_classes or int(max(np.max(y_train), 0)) + 1
    full = np.zeros((len(X_test), k))
    full[:, np.asarray(est.classes_, dtype=int)] = proba
    return est, full


def baseline_names(task: str, which: Sequence[str] | str | None = None) -> list[str]:
    """Resolve ``None`` (defaults), ``"all"`` or a list of names for a task."""
    if which is None:
        return list(DEFAULT_CLASSIFICATION if task == "classification" else DEFAULT_REGRESSION)
    if which == "all":
        return list(ALL_CLASSIFICATION if task == "classification" else ALL_REGRESSION)
    names = [which] if isinstance(which, str) else list(which)
    allowed = ALL_CLASSIFICATION if task == "classification" else ALL_REGRESSION
    bad = [n for n in names if n not in allowed]
    if bad:
        raise InputError(f"unknown {task} baseline(s) {', '.join(bad)}; use {', '.join(allowed)}")
    return names


__all__ = ["make_baseline", "fit_predict_baseline", "baseline_names", "clone"]
