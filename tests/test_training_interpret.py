"""Interpretability: attributions (saliency, Integrated Gradients, SHAP), attention, pathway-level scores,
hypergeometric enrichment with BH FDR, and recovery of the simulator's planted pathways."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import hypergeom

from genexflow.simulate import simulate_cohort
from genexflow.training.config import MODEL_PRESETS, TrainConfig
from genexflow.training.interpret import (
    explain,
    gene_attributions,
    hypergeometric_enrichment,
    pathway_scores_from_genes,
    precision_at_k,
)
from genexflow.training.model import TrainedModel


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    c, truth = simulate_cohort(n_samples=300, n_genes=300, n_pathways=10, seed=2, signal=1.5)
    cfg = TrainConfig(epochs=25, lr=3e-3, batch_size=32, patience=8, num_threads=1, model=MODEL_PRESETS["tiny"])
    return TrainedModel.fit(c, cfg), c, truth


def test_enrichment_matches_scipy_and_bh():
    universe = [f"g{i}" for i in range(100)]
    sets = {"hit": [f"g{i}" for i in range(10)], "half": [f"g{i}" for i in range(5, 25)],
            "miss": [f"g{i}" for i in range(50, 70)], "tiny": ["g0", "zzz"]}
    top = [f"g{i}" for i in range(8)] + ["g90", "g91"]
    df = hypergeometric_enrichment(top, universe, sets)
    assert list(df.index) == ["hit", "half", "miss"]  # "tiny" has < 3 members in the universe
    assert df.loc["hit", "overlap"] == 8
    assert df.loc["hit", "p_value"] == pytest.approx(hypergeom.sf(7, 100, 10, 10))
    assert df.loc["miss", "p_value"] == pytest.approx(1.0)
    p = df["p_value"].to_numpy()
    bh = np.minimum.accumulate((p * len(p) / np.arange(1, len(p) + 1))[::-1])[::-1]
    np.testing.assert_allclose(df["fdr"], np.minimum(bh, 1))


def test_precision_at_k_and_pathway_scores():
    assert precision_at_k(["a", "b", "c", "d"], ["b", "x"], 2) == 0.5
    assert precision_at_k(["a", "b"], ["c"], 2) == 0.0
    M = np.array([[1, 0], [1, 1], [0, 1]], float)
    np.testing.assert_allclose(pathway_scores_from_genes(np.array([1.0, 3.0, 5.0]), M), [2.0, 4.0])


def test_integrated_gradients_completeness(trained):
    model, c, _ = trained
    data = model.inputs(c.subset(np.arange(8)))
    attr = gene_attributions(model.module, data, "classification", "integrated_gradients", n_steps=128)
    with torch.no_grad():
        x = torch.as_tensor(data.X)
        cov = torch.as_tensor(data.covariates)
        logits = model.module(x, cov).logits
        base = model.module(torch.zeros_like(x), cov).logits
    tgt = logits.argmax(1)
    delta = (logits - base)[torch.arange(8), tgt].numpy()
    np.testing.assert_allclose(attr.sum(1), delta, rtol=0.05, atol=0.02)
    sal = gene_attributions(model.module, data, "classification", "saliency")
    assert sal.shape == attr.shape and (sal >= 0).all()


def test_explain_tables_and_planted_pathways(trained):
    model, c, truth = trained
    ex = explain(model, c, methods=("attention", "saliency", "integrated_gradients", "shap"), n_samples=40,
                 shap_samples=20, n_background=20)
    assert list(ex.genes.columns[:3]) == ["saliency", "integrated_gradients", "shap"]
    assert ex.genes["rank"].tolist() == list(range(1, len(ex.genes) + 1))
    assert len(ex.genes) == len(model.info.extra["model_genes"])
    assert {"attention", "integrated_gradients", "enrichment", "n_genes"} <= set(ex.pathways.columns)
    att = ex.pathways["attention"]
    assert ((att > 0) & (att < 1)).all() and att.sum() <= 1.0 + 1e-5
    assert (ex.enrichment["fdr"] >= ex.enrichment["p_value"] - 1e-12).all()
    # SHAP and IG agree on which genes matter
    rho = pd.Series(ex.genes["shap"]).corr(ex.genes["integrated_gradients"], method="spearman")
    assert rho > 0.5
    # Planted truth: the label-driving pathways (XOR pair + the additive one) head the explanation's
    # ranking, the Shapley values of the model's pathway terms (main effects and the crosstalk).
    planted = truth.informative_pathways[:3]
    assert ex.pathway_primary == "pathway_terms" and list(ex.pathways.columns).count("pathway_terms") == 1
    assert ex.precision_at_k(planted) == 1.0
    assert set(ex.top_pathways(3).index) == set(planted) == set(ex.pathways.index[:3])
    assert set(ex.crosstalk_pairs.iloc[0][["pathway_a", "pathway_b"]]) == set(planted[:2])  # the XOR pair
    # Informative genes carry far more attribution than the rest.
    inf = ex.genes.index.isin(truth.informative_genes)
    assert ex.genes.loc[inf, "integrated_gradients"].mean() > 2 * ex.genes.loc[~inf, "integrated_gradients"].mean()
