"""Reference profile: sketch exactness against scipy, round trip, compact features, error messages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from genexflow import drift_kernels as K
from genexflow.cohort import Cohort
from genexflow.errors import InputError
from genexflow.monitoring.detectors import GeneDriftDetector
from genexflow.profile import ReferenceProfile, build_reference_profile, prediction_frame
from genexflow.simulate import simulate_cohort


@pytest.fixture(scope="module")
def sim():
    cohort, truth = simulate_cohort(n_samples=160, n_genes=400, seed=11)
    return cohort, truth


@pytest.fixture(scope="module")
def profile(sim):
    cohort, truth = sim
    return build_reference_profile(cohort.subset(np.arange(100)), batch_column="batch", covariates=("age", "sex"),
                                   label_column="label", gene_sets=truth.pathways)


def _log_norm(prof: ReferenceProfile, cohort: Cohort) -> np.ndarray:
    """The profile's transform done by hand: CPM, divided by the median-of-ratios size factor on the
    reference anchor genes, then log2(x + 1)."""
    X = cohort.X.astype(np.float64)
    cpm = X / X.sum(1, keepdims=True) * 1e6
    am = prof.gene_stats["anchor_mean"].to_numpy()
    anchors = np.isfinite(am)
    off = np.median(np.log2(cpm[:, anchors] + 1) - am[anchors], axis=1)
    return np.log2(cpm / np.exp2(off)[:, None] + 1)


def test_grid_ks_is_exact_when_the_grid_holds_every_order_statistic(sim):
    cohort, truth = sim
    ref, new = cohort.subset(np.arange(80)), cohort.subset(np.arange(80, 160))
    prof = build_reference_profile(ref, gene_sets=None, n_quantiles=80)  # pos = j: every order statistic
    rep = GeneDriftDetector().fit(prof).score(new)
    Yr, Yn = _log_norm(prof, ref), _log_norm(prof, new)  # both against the reference anchors
    res = [stats.ks_2samp(Yr[:, j], Yn[:, j]) for j in range(cohort.n_genes)]
    d_ref = np.array([r.statistic for r in res])
    p_ref = np.array([r.pvalue for r in res])
    np.testing.assert_allclose(rep.table["ks_stat"].to_numpy(), d_ref, atol=2e-6)
    # asymptotic p-values vs scipy's exact ones: same ranking, close values
    assert stats.spearmanr(rep.table["pvalue"], p_ref).statistic > 0.99
    assert np.max(np.abs(rep.table["pvalue"].to_numpy() - p_ref)) < 0.05


def test_coarse_grid_ks_is_a_tight_lower_bound(sim):
    cohort, _ = sim
    ref, new = cohort.subset(np.arange(100)), cohort.subset(np.arange(100, 160))
    fine = GeneDriftDetector().fit(build_reference_profile(ref, gene_sets=None, n_quantiles=100)).score(new)
    coarse = GeneDriftDetector().fit(build_reference_profile(ref, gene_sets=None, n_quantiles=21)).score(new)
    d_f, d_c = fine.table["ks_stat"].to_numpy(), coarse.table["ks_stat"].to_numpy()
    assert np.all(d_c <= d_f + 1e-6)
    assert np.max(d_f - d_c) <= 1 / 20 + 1e-6  # within one grid step of the reference ECDF


def test_sketch_quantiles_and_ecdf_match_numpy():
    rng = np.random.default_rng(0)
    Y = rng.normal(size=(5, 200)).astype(np.float32)
    Y[0, :50] = 0.0  # ties
    Y[1, :20] = np.nan  # missing
    ref = Y.copy()
    probs = np.linspace(0, 1, 11)
    grid = np.nanquantile(ref, probs, axis=1).T.astype(np.float32)
    sk = K.sketch_chunk(Y.copy(), probs, grid=grid)
    np.testing.assert_allclose(sk.quantiles, grid, atol=1e-6)
    assert sk.n_valid.tolist() == [200, 180, 200, 200, 200]
    for g in range(5):
        v = ref[g][np.isfinite(ref[g])]
        np.testing.assert_allclose(sk.le[g], [(v <= q).mean() for q in grid[g]], atol=1e-6)
        np.testing.assert_allclose(sk.lt[g], [(v < q).mean() for q in grid[g]], atol=1e-6)
        assert sk.mean[g] == pytest.approx(v.mean(), rel=1e-5)


def test_bh_matches_scipy():
    p = np.random.default_rng(1).uniform(size=300) ** 3
    p[:5] = np.nan
    q = K.bh_qvalues(p)
    np.testing.assert_allclose(q[5:], stats.false_discovery_control(p[5:], method="bh"), rtol=1e-12)
    assert np.isnan(q[:5]).all()


def test_save_load_round_trip(tmp_path, profile, sim):
    cohort, _ = sim
    folder = profile.save(tmp_path / "reference")
    loaded = ReferenceProfile.load(folder)
    assert loaded.genes == profile.genes
    np.testing.assert_allclose(loaded.quantiles, profile.quantiles)
    np.testing.assert_allclose(loaded.ecdf_le, profile.ecdf_le, atol=1 / 65535)
    pd.testing.assert_frame_equal(loaded.features, profile.features)
    assert loaded.gene_sets == profile.gene_sets
    assert loaded.meta["batch_levels"] == profile.meta["batch_levels"]
    # a bundle folder holding reference/ loads too
    (tmp_path / "bundle").mkdir()
    profile.save(tmp_path / "bundle" / "reference")
    assert ReferenceProfile.load(tmp_path / "bundle").n_genes == cohort.n_genes
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 3e6


def test_compute_features_reproduces_reference_rows(profile, sim):
    cohort, _ = sim
    f = profile.compute_features(cohort.subset(np.arange(30)))
    np.testing.assert_allclose(f.to_numpy(), profile.features.iloc[:30][f.columns].to_numpy(), atol=1e-6)
    assert set(profile.columns("qc")) >= {"qc_log10_library_size", "qc_detected_fraction", "qc_missing_fraction"}
    assert len(profile.columns("pathway")) == len(profile.gene_sets) > 0
    assert "pc_spe" in profile.columns("pca")


def test_features_of_a_cohort_with_missing_and_reordered_genes(profile, sim):
    cohort, _ = sim
    new = cohort.subset(np.arange(100, 140))
    keep = np.random.default_rng(0).permutation(cohort.n_genes)[: int(cohort.n_genes * 0.9)]
    partial = new.subset(genes=keep)
    f = profile.compute_features(partial)
    assert np.isfinite(f[profile.columns("qc")].to_numpy()).all()
    rep = GeneDriftDetector().fit(profile).score(partial)
    assert rep.n_missing_genes == cohort.n_genes - len(keep)
    assert rep.n_tested == len(keep)
    assert not rep.table.loc[~rep.table["present"], "drifted"].any()


def test_log_expression_with_missing_values():
    cohort, truth = simulate_cohort(n_samples=120, n_genes=200, value_type="log-expression", missing_rate=0.05,
                                    seed=2)
    prof = build_reference_profile(cohort.subset(np.arange(60)), gene_sets=truth.pathways)
    assert "anchor_mean" not in prof.gene_stats or not np.isfinite(prof.gene_stats["anchor_mean"]).any()
    assert prof.gene_stats["missing_fraction"].between(0.0, 0.2).all()
    rep = GeneDriftDetector().fit(prof).score(cohort.subset(np.arange(60, 120)))
    assert rep.n_tested == 200 and rep.drift_share < 0.05
    f = prof.compute_features(cohort.subset(np.arange(60, 120)))
    assert f["qc_missing_fraction"].mean() == pytest.approx(0.05, abs=0.01)


def test_predictions_latent_and_performance_are_profiled(sim):
    cohort, _ = sim
    ref = cohort.subset(np.arange(100))
    classes = sorted(ref.samples["label"].unique())
    onehot = (ref.samples["label"].to_numpy()[:, None] == np.array(classes)[None, :]).astype(float)
    proba = 0.8 * onehot + 0.2 / len(classes)
    latent = np.random.default_rng(0).normal(size=(100, 4))
    prof = build_reference_profile(ref, predictions=proba, latent=latent, label_column="label",
                                   class_names=classes, gene_sets=None)
    assert prof.meta["task"] == "classification"
    assert prof.meta["performance"]["accuracy"] == 1.0
    assert prof.columns("latent") == [f"latent_{i}" for i in range(4)]
    assert prof.columns("prediction") == [f"pred_prob_{c}" for c in classes] + ["pred_label"]


def test_prediction_frame_shapes():
    idx = pd.Index(["a", "b"])
    assert prediction_frame(np.array([0.5, 1.5]), idx).columns.tolist() == ["pred_value"]
    assert prediction_frame(np.array(["x", "y"]), idx)["pred_label"].tolist() == ["x", "y"]
    with pytest.raises(InputError, match="rows"):
        prediction_frame(np.zeros(3), idx)


def test_clear_errors(sim):
    cohort, _ = sim
    with pytest.raises(InputError, match="at least 10 samples"):
        build_reference_profile(cohort.subset(np.arange(5)))
    with pytest.raises(InputError, match="no column 'nope'"):
        build_reference_profile(cohort, covariates=("nope",))
    with pytest.raises(InputError, match="no reference profile"):
        ReferenceProfile.load(cohort.meta.get("missing", "/nonexistent"))
