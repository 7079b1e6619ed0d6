"""The simulator: determinism, planted signal (beats chance; shuffled labels do not), recorded truth."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from genexflow import InputError
from genexflow.simulate import simulate_cohort


def _logcpm(X):
    X = np.nan_to_num(X.astype(float))
    return np.log2(X / X.sum(1, keepdims=True) * 1e6 + 1)


def test_same_seed_same_cohort():
    a, ta = simulate_cohort(n_samples=40, n_genes=300, seed=11)
    b, tb = simulate_cohort(n_samples=40, n_genes=300, seed=11)
    c, _ = simulate_cohort(n_samples=40, n_genes=300, seed=12)
    np.testing.assert_array_equal(a.X, b.X)
    assert a.samples.equals(b.samples) and ta.to_dict() == tb.to_dict()
    assert not np.array_equal(a.X, c.X)


def test_realistic_counts():
    c, truth = simulate_cohort(n_samples=200, n_genes=1000, seed=2, library_size=1e6)
    X = c.X.astype(float)
    assert c.X.dtype == np.int32 and (X >= 0).all()
    lib = X.sum(1)
    assert 0.1 < np.std(np.log(lib)) < 0.6  # library sizes vary log-normally
    mean, var = X.mean(0), X.var(0)
    expressed = mean > 20
    # negative binomial: overdispersed relative to Poisson for most expressed genes
    assert np.mean(var[expressed] > 1.5 * mean[expressed]) > 0.8
    assert set(c.samples.columns) >= {"label", "batch", "age", "sex", "target"}
    assert len(truth.informative_pathways) == 4
    assert set(truth.informative_genes) <= set(c.genes)
    assert c.samples["batch"].nunique() == 3


def test_planted_signal_beats_chance_and_shuffled_does_not():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # OpenMP in gradient boosting crawls on an oversubscribed 2-core machine
        _check_planted_signal()


def _check_planted_signal():
    c, truth = simulate_cohort(n_samples=300, n_genes=800, seed=5)
    X = _logcpm(c.X)
    y = c.samples["label"].to_numpy()
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    chance = max(np.mean(y == k) for k in np.unique(y))
    # pathway scores of the planted programs carry the (non-additive) signal
    gpos = {g: i for i, g in enumerate(c.genes)}
    Z = (X - X.mean(0)) / (X.std(0) + 1e-9)
    P = np.stack([Z[:, [gpos[g] for g in truth.pathways[p]]].mean(1) for p in truth.informative_pathways], 1)
    # the planted activities themselves determine the label well (label noise is moderate)
    ceiling = cross_val_score(HistGradientBoostingClassifier(max_iter=60), truth.activities[:, :4], y, cv=cv).mean()
    assert ceiling > 0.75
    clf = HistGradientBoostingClassifier(max_iter=60)
    acc = cross_val_score(clf, P, y, cv=cv).mean()
    shuffled = cross_val_score(clf, P, np.random.default_rng(0).permutation(y), cv=cv).mean()
    lin = cross_val_score(LogisticRegression(max_iter=3000, C=0.05), X, y, cv=cv).mean()
    assert acc > chance + 0.1, (acc, chance)
    assert shuffled < chance + 0.05, (shuffled, chance)
    assert lin > chance + 0.03


def test_regression_target_is_predictable():
    from sklearn.linear_model import RidgeCV

    c, _ = simulate_cohort(n_samples=300, n_genes=600, seed=8)
    r2 = cross_val_score(RidgeCV(alphas=np.logspace(0, 4, 9)), _logcpm(c.X), c.samples["target"], cv=5).mean()
    assert r2 > 0.2


def test_missing_values_and_log_output():
    c, _ = simulate_cohort(n_samples=30, n_genes=200, seed=1, missing_rate=0.05, value_type="log-expression")
    frac = np.isnan(c.X).mean()
    assert 0.03 < frac < 0.07 and c.X.dtype == np.float32
    assert c.value_type.value == "log-expression"


def test_bad_arguments():
    with pytest.raises(InputError, match="at least 2 samples"):
        simulate_cohort(n_samples=1)
