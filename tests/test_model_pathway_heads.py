"""Pathway-specific heads: one auxiliary output per pathway, trained jointly; on the simulator the planted
additive pathways' heads rank first on held-out rows, and the exported main output is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genexflow.models import PathwayNet, PathwayNetConfig
from genexflow.simulate import simulate_cohort
from genexflow.training.config import MODEL_PRESETS, TrainConfig
from genexflow.training.cv import cross_validate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_heads_leave_the_main_output_and_onnx_export_unchanged(tmp_path):
    from genexflow.models import export_onnx, verify_onnx

    M = (np.random.default_rng(0).random((40, 5)) < 0.3).astype(np.float32)
    base = dict(n_genes=40, n_pathways=5, n_outputs=3, **MODEL_PRESETS["tiny"])
    torch.manual_seed(0)
    plain = PathwayNet(PathwayNetConfig(**base), M).eval()
    torch.manual_seed(0)
    heads = PathwayNet(PathwayNetConfig(**base, pathway_heads=4), M).eval()
    heads.load_state_dict(plain.state_dict(), strict=False)  # same main weights; heads stay random
    x = torch.randn(6, 40)
    out = heads(x)
    assert out.pathway_logits.shape == (6, 5, 3)
    torch.testing.assert_close(out.logits, plain(x).logits)
    # pathway k's head reads only its members: changing a non-member gene leaves it alone
    k = 0
    outside = int(np.flatnonzero(M[:, k] == 0)[0])
    x2 = x.clone()
    x2[:, outside] += 5.0
    torch.testing.assert_close(heads(x2).pathway_logits[:, k], out.pathway_logits[:, k])
    path = export_onnx(heads, tmp_path / "m.onnx", n_genes=40, n_covariates=0)
    assert max(verify_onnx(heads, path, x.numpy(), np.zeros((6, 0), np.float32)).values()) < 1e-4
    loss = heads.train().loss(heads(x), x, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert loss.metrics["pathway_head_loss"] > 0


def test_planted_pathways_heads_rank_first_on_held_out_rows(tmp_path):
    c, truth = simulate_cohort(n_samples=300, n_genes=300, n_pathways=12, n_classes=4, seed=1)
    gmt = truth.write_gmt(tmp_path / "sim.gmt")
    cfg = TrainConfig(gene_sets=str(gmt), epochs=40, patience=40, lr=3e-3, batch_size=32, num_threads=1,
                      wide_init="none", model={**MODEL_PRESETS["tiny"], "pathway_heads": 8,
                                               "pathway_head_weight": 1.0})
    res = cross_validate(c, cfg, n_splits=3, baselines=[])
    ranking = res.modular_summary()
    assert len(ranking) == 12 and set(res.modular["split"]) == {"r0f0", "r0f1", "r0f2"}
    additive = set(truth.informative_pathways[2:4])  # the XOR pair carries no signal on its own
    assert set(ranking.index[:2]) == additive
    assert set(ranking.index[:3]) <= set(truth.informative_pathways)
