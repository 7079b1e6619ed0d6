"""Detectors one by one: planted shifts are found (and only they), Evidently on a few columns, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from genexflow.cohort import Cohort
from genexflow.errors import InputError, NotFittedError
from genexflow.monitoring import scenarios
from genexflow.monitoring.detectors import (
    CovariateShiftDetector,
    FeatureDriftDetector,
    GeneDriftDetector,
    LatentNoveltyDetector,
    PerformanceDecayDetector,
    UnseenBatchDetector,
)
from genexflow.profile import build_reference_profile
from genexflow.simulate import simulate_cohort

ALL = [GeneDriftDetector, FeatureDriftDetector, UnseenBatchDetector, CovariateShiftDetector,
       LatentNoveltyDetector, PerformanceDecayDetector]


@pytest.fixture(scope="module")
def world():
    cohort, truth = simulate_cohort(n_samples=300, n_genes=600, seed=5)
    ref, new = scenarios.split(cohort, 0.5, seed=5)
    prof = build_reference_profile(ref, batch_column="batch", covariates=("age", "sex"), label_column="label",
                                   gene_sets=truth.pathways)
    return cohort, truth, ref, new, prof


def _shift_genes(cohort: Cohort, genes: list[str], factor: float) -> Cohort:
    X = cohort.X.copy()
    cols = cohort.genes.get_indexer(genes)
    X[:, cols] = np.round(X[:, cols] * factor).astype(X.dtype)
    return Cohort(X, cohort.genes, cohort.samples, cohort.value_type, cohort.name)


@pytest.mark.parametrize("cls", ALL)
def test_estimator_contract(cls, world):
    *_, prof = world
    est = cls()
    import inspect

    assert set(vars(est)) == set(inspect.signature(cls).parameters)  # __init__ stores kwargs only
    with pytest.raises(NotFittedError, match="not fitted"):
        if cls is PerformanceDecayDetector:
            est.score([], [])
        else:
            est.score(pd.DataFrame())
    fitted = est.fit(prof)
    assert fitted is est
    assert any(k.endswith("_") for k in vars(est))
    pickle.loads(pickle.dumps(est))
    with pytest.raises(InputError):
        cls().fit("/nonexistent/reference")


def test_gene_drift_finds_exactly_the_planted_genes(world):
    cohort, truth, ref, new, prof = world
    planted = list(cohort.genes[np.random.default_rng(0).choice(cohort.n_genes, 40, replace=False)])
    rep = GeneDriftDetector().fit(prof).score(_shift_genes(new, planted, 3.0))
    drifted = set(rep.table.index[rep.table["drifted"]])
    recall = len(drifted & set(planted)) / len(planted)
    false = drifted - set(planted)
    assert recall >= 0.9
    assert len(false) <= 2  # BH at 1 % FDR
    assert rep.drift_share == pytest.approx(len(drifted) / cohort.n_genes)
    top = rep.top_genes(10)
    assert set(top.index) <= set(planted)
    assert (top["mean_shift_sd"] > 0).all()
    assert (rep.table.loc[planted, "psi"] > rep.table.drop(planted)["psi"].median()).mean() > 0.9


def test_gene_drift_enrichment_names_the_shifted_pathway(world):
    cohort, truth, ref, new, prof = world
    pw = truth.informative_pathways[2]
    members = [g for g in truth.pathways[pw] if g in set(cohort.genes)]
    rep = GeneDriftDetector().fit(prof).score(_shift_genes(new, members, 4.0))
    assert rep.top_pathways.index[0] == pw
    assert rep.top_pathways.iloc[0]["qvalue"] < 1e-3
    assert rep.summary()["top_pathways"][0]["pathway"] == pw


def test_gene_drift_ignores_library_depth(world):
    *_, new, prof = world
    deeper = Cohort(new.X * 3, new.genes, new.samples, new.value_type, new.name)
    assert GeneDriftDetector().fit(prof).score(deeper).n_drifted == 0


def test_gene_drift_refuses_other_value_types_and_foreign_genes(world):
    *_, new, prof = world
    with pytest.raises(InputError, match="same value type"):
        GeneDriftDetector().fit(prof).score(Cohort(new.X.astype(np.float32), new.genes, new.samples, "tpm"))
    foreign = Cohort(new.X, [f"X{i}" for i in range(new.n_genes)], new.samples, new.value_type)
    with pytest.raises(InputError, match="gene ID type"):
        GeneDriftDetector().fit(prof).score(foreign)


def test_feature_drift_with_evidently_on_few_columns(world):
    *_, new, prof = world
    det = FeatureDriftDetector(groups=("qc",)).fit(prof)
    same = det.score(prof.compute_features(new))
    assert not same.dataset_drift
    assert set(same.table["group"]) == {"qc"}
    # a shallower, noisier library: QC features move
    shallow = Cohort(np.random.default_rng(0).binomial(new.X, 0.05), new.genes, new.samples, new.value_type)
    rep = det.score(prof.compute_features(shallow))
    assert rep.table.loc["qc_log10_library_size", "drifted"]
    assert rep.table.loc["qc_detected_fraction", "drifted"]
    assert rep.dataset_drift and rep.drift_share >= 0.5
    assert "<html" in rep.snapshot.get_html_str(as_iframe=False)[:2000].lower()
    with pytest.raises(InputError, match="compact features"):
        det.score(new)


def test_feature_drift_reports_skipped_groups(world):
    *_, ref, new, prof = world
    latent = np.random.default_rng(0).normal(size=(ref.n_samples, 3))
    prof2 = build_reference_profile(ref, latent=latent, gene_sets=None)
    rep = FeatureDriftDetector(groups=("qc", "latent")).fit(prof2).score(prof2.compute_features(new))
    assert rep.skipped == ["latent"]


def test_unseen_batch(world):
    *_, new, prof = world
    renamed = scenarios.relabel(new, "batch", {"batch2": "site_X"})
    rep = UnseenBatchDetector().fit(prof).score(renamed)
    assert rep.unseen_levels == ["site_X"]
    assert rep.n_unseen_samples == int((new.samples["batch"] == "batch2").sum())
    assert UnseenBatchDetector().fit(prof).score(new).unseen_levels == []
    nobatch = new.samples.drop(columns="batch")
    assert not UnseenBatchDetector().fit(prof).score(nobatch).checked


def test_covariate_shift(world):
    cohort, *_ , prof = world
    men = scenarios.resample_by(cohort, lambda s: np.where(s["sex"] == "M", 1.0, 0.0), 80, seed=1)
    rep = CovariateShiftDetector().fit(prof).score(men)
    assert rep.table.loc["sex", "drifted"] and not rep.table.loc["age", "drifted"]
    old = cohort.subset(cohort.samples["age"].to_numpy() > 65)
    rep = CovariateShiftDetector().fit(prof).score(old)
    assert rep.table.loc["age", "drifted"]
    assert rep.table.loc["age", "effect"] > 0.4
    rep = CovariateShiftDetector().fit(prof).score(cohort.samples.assign(sex="unknown"))
    assert rep.table.loc["sex", "unseen"] == "unknown" and rep.table.loc["sex", "drifted"]


def test_latent_novelty_flags_the_new_subtype_samples(world):
    cohort, truth, ref, new, prof = world
    sub = scenarios.add_subtype(new, {k: truth.pathways[k] for k in truth.informative_pathways[2:]},
                                shift=4.0, fraction=0.5, seed=0)
    det = LatentNoveltyDetector().fit(prof)
    rep = det.score(prof.compute_features(sub))
    changed = rep.scores.index.isin(sub.meta["new_subtype_samples"])
    novel = rep.scores > rep.threshold
    assert rep.space == "pca"
    assert novel[changed].mean() > 3 * max(novel[~changed].mean(), 0.05)
    assert rep.pvalue < 1e-3
    null = det.score(prof.compute_features(new))
    assert null.pvalue > 1e-3 and null.novel_fraction < 0.2


def test_latent_novelty_in_model_latent_space(world):
    *_, ref, new, prof = world
    rng = np.random.default_rng(0)
    prof2 = build_reference_profile(ref, latent=rng.normal(size=(ref.n_samples, 4)), gene_sets=None)
    det = LatentNoveltyDetector().fit(prof2)
    inside = det.score(prof2.compute_features(new, latent=rng.normal(size=(new.n_samples, 4))))
    outside = det.score(prof2.compute_features(new, latent=rng.normal(size=(new.n_samples, 4)) + 4))
    assert inside.space == "latent" and inside.pvalue > 1e-3
    assert outside.novel_fraction > 0.9 and outside.pvalue < 1e-10


def test_performance_decay(world):
    *_, ref, new, prof = world
    classes = sorted(ref.samples["label"].unique())
    truth_new = new.samples["label"].to_numpy()
    good = (truth_new[:, None] == np.array(classes)[None, :]).astype(float)
    prof2 = build_reference_profile(ref, gene_sets=None, label_column="label", class_names=classes,
                                    predictions=(ref.samples["label"].to_numpy()[:, None] == np.array(classes)).astype(float))
    det = PerformanceDecayDetector().fit(prof2)
    assert det.score(truth_new, good).decay == pytest.approx(0.0)
    shuffled = good[np.random.default_rng(0).permutation(len(good))]
    rep = det.score(truth_new, shuffled)
    assert rep.metric == "balanced_accuracy" and rep.decay > 0.3 and rep.n_labelled == len(good)
    half = truth_new.astype(object)
    half[::2] = None  # unlabelled samples are left out
    assert det.score(half, good).n_labelled == (len(good) + 1) // 2
    assert PerformanceDecayDetector(reference_value=0.5).fit(prof2).score(truth_new, good).decay == -0.5
