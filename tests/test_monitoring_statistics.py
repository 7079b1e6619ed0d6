"""Statistical behaviour on the simulator: batch shift, covariate shift and a new subtype are each
detected; an independent sample from the same distribution is not flagged in at least 19 of 20 seeds.

The simulator draws genes, pathways and batch effects from its seed, so "same distribution" is two random
halves of ONE simulated cohort. Evidently is left out of the 20-seed sweep for speed (it runs in the
end-to-end check tests); every other detector takes part in the decision.
"""

from __future__ import annotations

import numpy as np
import pytest

from genexflow.monitoring import scenarios
from genexflow.monitoring.check import compute_reports
from genexflow.monitoring.policy import DriftPolicy
from genexflow.profile import build_reference_profile
from genexflow.simulate import simulate_cohort

POLICY = DriftPolicy()


def _decide(ref, new, truth):
    prof = build_reference_profile(ref, batch_column="batch", covariates=("age", "sex"), label_column="label",
                                   gene_sets=truth.pathways)
    reports, _ = compute_reports(new, prof, policy=POLICY, evidently=False)
    return POLICY.decide(reports, n_samples=new.n_samples), reports


def test_same_distribution_is_not_flagged_in_19_of_20_seeds():
    flagged = []
    for seed in range(20):
        cohort, truth = simulate_cohort(n_samples=240, n_genes=400, seed=seed)
        ref, new = scenarios.split(cohort, 0.5, seed=seed)
        decision, reports = _decide(ref, new, truth)
        if decision.drift:
            flagged.append((seed, decision.reason_kinds))
        assert reports["gene"].drift_share < POLICY.max_gene_drift_share
    assert len(flagged) <= 1, flagged


@pytest.mark.parametrize("seed", [0, 1])
def test_unseen_batch_is_detected_and_named(seed):
    cohort, truth = simulate_cohort(n_samples=320, n_genes=400, n_batches=4, seed=seed,
                                    batch_labels=["b1", "b2", "b3", "new_site"])
    is_new = cohort.samples["batch"].to_numpy() == "new_site"
    decision, reports = _decide(cohort.subset(~is_new), cohort.subset(is_new), truth)
    assert decision.drift
    assert {"batch", "gene"} <= set(decision.reason_kinds)
    assert reports["batch"].unseen_levels == ["new_site"]
    assert any("new_site" in r.message for r in decision.reasons)


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_location_shift_under_a_known_label_is_detected(seed):
    cohort, truth = simulate_cohort(n_samples=320, n_genes=400, n_batches=4, seed=seed)
    is_new = cohort.samples["batch"].to_numpy() == "batch4"
    new = scenarios.relabel(cohort.subset(is_new), "batch", {"batch4": "batch1"})  # mislabelled batch
    decision, reports = _decide(cohort.subset(~is_new), new, truth)
    assert decision.drift and "gene" in decision.reason_kinds
    assert "batch" not in decision.reason_kinds
    assert reports["gene"].drift_share > 0.2


@pytest.mark.parametrize("seed", [0, 1])
def test_covariate_shift_is_detected(seed):
    cohort, truth = simulate_cohort(n_samples=480, n_genes=400, seed=seed)
    ref, rest = scenarios.split(cohort, 0.5, seed=seed)
    # a men's clinic, mostly over 60
    new = scenarios.resample_by(rest, lambda s: np.where(s["sex"] == "M", 20.0, 1.0) * np.where(s["age"] > 60, 20.0, 1.0),
                                60, seed=seed)
    decision, reports = _decide(ref, new, truth)
    assert decision.drift and "covariate" in decision.reason_kinds
    assert set(reports["covariate"].summary()["drifted"]) == {"age", "sex"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_new_subtype_is_detected(seed):
    cohort, truth = simulate_cohort(n_samples=320, n_genes=400, seed=seed)
    ref, new = scenarios.split(cohort, 0.5, seed=seed)
    activated = {k: truth.pathways[k] for k in truth.informative_pathways[2:]}
    sub = scenarios.add_subtype(new, activated, shift=4.0, fraction=0.5, seed=seed)
    decision, reports = _decide(ref, sub, truth)
    assert decision.drift and "novelty" in decision.reason_kinds
    # the evidence points at the subtype: its samples are the novel ones, its pathways the enriched ones
    nv = reports["novelty"]
    is_sub = nv.scores.index.isin(sub.meta["new_subtype_samples"])
    novel = (nv.scores > nv.threshold).to_numpy()
    assert novel[is_sub].mean() > 0.5 and novel[~is_sub].mean() < 0.2  # expected 5 % outside the subtype
    assert reports["gene"].top_pathways.index[0] in activated
