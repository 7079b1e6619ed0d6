"""KNN imputation against a literal port of impute.knn (R wrapper + knnimpute.f) and R's RNG."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from _preprocessing_rport import r_impute_knn

from genexflow.errors import InputError
from genexflow.preprocessing._rrng import RRandom
from genexflow.preprocessing.impute import KNNImputer


def _data(n=12, G=80, frac=0.08, seed=0, dup=False):
    rng = np.random.default_rng(seed)
    modules = rng.normal(size=(4, n)) * 2
    load = rng.integers(0, 4, size=G)
    X = modules[load].T + rng.normal(scale=0.5, size=(n, G)) + rng.normal(5, 1, size=G)
    if dup:
        X[:, 7] = X[:, 3]  # identical genes: distance ties
    X[rng.random((n, G)) < frac] = np.nan
    X[: int(n * 0.6), 10] = np.nan  # a gene above rowmax -> per-sample mean
    return X


def test_r_rng_matches_known_r_draws():
    # set.seed(42); runif(1) / set.seed(123); sample(1:10) / set.seed(42); sample(1:10) in R >= 3.6
    assert RRandom(42).unif_rand() == pytest.approx(0.914806043496355, abs=1e-12)
    assert RRandom(123).sample(10, 10) == [3, 10, 2, 8, 6, 9, 1, 7, 5, 4]
    assert RRandom(42).sample(10, 10) == [1, 5, 10, 8, 2, 4, 6, 9, 7, 3]


@pytest.mark.parametrize("dup", [False, True])
def test_matches_literal_port_without_splitting(dup):
    X = _data(dup=dup)
    out = KNNImputer(k=5).fit_transform(X)
    expected = r_impute_knn(X.T, k=5).T
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    assert np.isfinite(out).all()
    # the only set-aside gene keeps 0 where it was missing: impute.knn's meanimp() fills only matrices of
    # more than one row (checked against real R in test_r_edger_impute.py)
    miss = np.isnan(X[:, 10])
    assert miss.any() and (out[miss, 10] == 0).all()


def test_matches_literal_port_with_two_means_splitting():
    X = _data(n=10, G=160, seed=1)
    est = KNNImputer(k=4, maxp=40)
    out = est.fit_transform(X)
    expected = r_impute_knn(X.T, k=4, maxp=40).T
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    assert len(est.clusters_) > 2 and max(len(c) for c in est.clusters_) <= 40


def test_differs_from_sklearn_rule():
    # impute.knn averages the observed ones among the k nearest genes; sklearn's KNNImputer (on the
    # transposed matrix) takes the k nearest among the genes observed in that sample
    from sklearn.impute import KNNImputer as SkKNN

    X = _data(frac=0.2, seed=4)
    ours = KNNImputer(k=5).fit_transform(X)
    sk = SkKNN(n_neighbors=5).fit_transform(X.T).T
    miss = np.isnan(X)
    miss[:, 10] = False
    assert (np.abs(ours - sk)[miss] > 1e-9).mean() > 0.1


def test_transform_uses_frozen_neighbors_and_equals_fit_transform_on_training():
    X = _data(seed=2)
    est = KNNImputer(k=5).fit(X)
    tr, ft = est.transform(X), est.fit_transform(X)
    # a single set-aside gene keeps impute.knn's zeros in fit_transform (meanimp skips one-row matrices);
    # transform fills new samples with their per-sample mean there: compare the rest
    aside = np.isnan(X) & est.mean_imputed_
    if est.mean_imputed_.sum() == 1:
        assert (ft[aside] == 0).all()
    tr, ft = np.where(aside, 0.0, tr), np.where(aside, 0.0, ft)
    # equal except the first sample's entries filled with its mean: fit_transform keeps impute.knn's
    # mean.miss quirk there (see impute.py), transform does not carry it to new samples
    np.testing.assert_allclose(tr[1:], ft[1:], atol=1e-12)
    same = np.isclose(tr[0], ft[0], rtol=0, atol=1e-12)
    assert (~same).sum() <= np.isnan(X[0]).sum() and np.isnan(X[0, ~same]).all()
    # a new sample with a missing gene: mean of its own values at the frozen neighbours
    rng = np.random.default_rng(9)
    new = np.nan_to_num(X[:1], nan=6.0) + rng.normal(size=(1, X.shape[1]))
    g = 20
    new[0, g] = np.nan
    out = est.transform(new)
    nb = est.neighbors_[g]
    assert out[0, g] == pytest.approx(new[0, nb].mean())
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.transform(new), out)


def test_errors():
    X = _data()
    X[3, :70] = np.nan
    with pytest.raises(InputError, match="more than 80% missing"):
        KNNImputer().fit(X)
    with pytest.raises(InputError, match="needs more than 10 genes"):
        KNNImputer().fit(np.ones((3, 5)))


@pytest.mark.shared_data
def test_matches_literal_port_on_golub(shared_data):
    from genexflow.io import read_matrix

    X = read_matrix(shared_data / "golub" / "expression.parquet").to_numpy(np.float64)[:, :240]
    rng = np.random.default_rng(11)
    X[rng.random(X.shape) < 0.04] = np.nan
    X[:25, 7] = np.nan  # above rowmax
    est = KNNImputer(k=10, maxp=100)
    out = est.fit_transform(X)
    np.testing.assert_allclose(out, r_impute_knn(X.T, k=10, maxp=100).T, rtol=0, atol=1e-12)
    assert len(est.clusters_) >= 3
