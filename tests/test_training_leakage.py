"""No leakage: in cross-validation everything is fitted on the training rows of each fold only.

Two complementary checks, both able to fail:

* a spy on the real ``fit_preprocessing`` records which samples each fold's pipeline is fitted on; a CV
  that fitted on all rows (or on test rows) fails the set comparison;
* sensitivity: distort the test rows of a fold. The fold-fitted features of the training rows (and the
  priors and covariate encodings) stay bit-for-bit identical, while a pipeline fitted on the full cohort
  (the leaky way) produces different training features, i.e. it has seen the test rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genexflow.cohort import Cohort
from genexflow.simulate import simulate_cohort
from genexflow.training import cv as cvmod
from genexflow.training import folds as foldsmod
from genexflow.training.config import TrainConfig
from genexflow.training.splits import stratified_kfold


@pytest.fixture(scope="module")
def cohort():
    torch.set_num_threads(1)
    c, _ = simulate_cohort(n_samples=60, n_genes=200, n_pathways=10, seed=5, missing_rate=0.01)
    return c


@pytest.fixture(scope="module")
def cfg():
    return TrainConfig(batch_column="batch", covariates=["age", "sex"], num_threads=1, seed=0)


def _y(c, cfg):
    lab = cvmod.encode_labels(c, cfg)
    return lab.y


def test_each_fold_fits_preprocessing_on_its_training_rows_only(cohort, cfg, monkeypatch):
    fitted_on: list[set[str]] = []
    real = cvmod.fit_preprocessing

    def spy(train: Cohort, c: TrainConfig):
        fitted_on.append(set(train.sample_ids))
        return real(train, c)

    monkeypatch.setattr(foldsmod, "fit_preprocessing", spy)  # where prepare_fold looks it up
    res = cvmod.cross_validate(cohort, cfg, n_splits=3, deep=False, baselines=["hist_gb"])
    splits = stratified_kfold(_y(cohort, cfg), 3, seed=cfg.seed)
    ids = cohort.sample_ids
    assert len(fitted_on) == 3
    for sp, seen in zip(splits, fitted_on, strict=True):
        assert seen == set(ids[sp.train])
        assert not seen & set(ids[sp.test])
    # every sample predicted exactly once, by the fold that never saw it
    oof = res.predictions[res.predictions["model"] == "hist_gb"]
    assert sorted(oof["sample_id"]) == sorted(ids)


def _distort_test_rows(c: Cohort, rows: np.ndarray) -> Cohort:
    X = c.X.astype(np.float64).copy()
    rng = np.random.default_rng(0)
    X[rows] = np.round(X[rows] * rng.uniform(5, 50, size=(len(rows), 1)) + rng.poisson(200, X[rows].shape))
    return Cohort(X.astype(np.float32), c.genes, c.samples, c.value_type, c.name)


def test_test_rows_cannot_change_fold_fitted_training_features(cohort, cfg):
    y = _y(cohort, cfg)
    sp = stratified_kfold(y, 3, seed=0)[0]
    distorted = _distort_test_rows(cohort, sp.test)

    folds = [cvmod.prepare_fold(c.subset(sp.train), c.subset(sp.test), y[sp.train], y[sp.test], cfg)
             for c in (cohort, distorted)]
    a, b = folds
    np.testing.assert_array_equal(a.train.X, b.train.X)
    np.testing.assert_array_equal(a.train.covariates, b.train.covariates)
    assert a.genes == b.genes and a.priors.gene_sets == b.priors.gene_sets
    assert not np.allclose(a.test.X, b.test.X)  # the distortion is real and reaches the test features

    # The leaky alternative: one pipeline fitted on the whole cohort. Its training-row features move when
    # only the test rows change, which is exactly the information flow the fold fit prevents.
    leaky = [cvmod.transform(cvmod.fit_preprocessing(c, cfg), c.subset(sp.train)) for c in (cohort, distorted)]
    assert leaky[0].shape == leaky[1].shape
    assert np.abs(leaky[0] - leaky[1]).max() > 1e-3


def test_label_never_enters_preprocessing(cohort, cfg, monkeypatch):
    seen_cov: list = []
    real = cvmod.make_preprocessing

    def spy(c: TrainConfig, train=None):
        pre = real(c, train)
        fit = pre.fit

        def fit_spy(cohort_, batch_column=None, covariates=None):
            seen_cov.append((batch_column, list(covariates or [])))
            return fit(cohort_, batch_column=batch_column, covariates=covariates)

        pre.fit = fit_spy
        return pre

    monkeypatch.setattr(foldsmod, "make_preprocessing", spy)
    cvmod.cross_validate(cohort, cfg, n_splits=2, deep=False, baselines=[])
    assert seen_cov and all(cfg.label not in covs and bc == "batch" for bc, covs in seen_cov)
    assert all(covs == ["age", "sex"] for _, covs in seen_cov)
