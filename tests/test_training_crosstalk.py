"""The crosstalk's CANN start (genexflow.training.crosstalk): on a small XOR cohort the pathway terms
separate the interaction a GLM cannot, screen the planted pathways, stay off on a label without pathway
signal, export to ONNX with the same outputs, and the pathway-term Shapley ranking puts the planted
pathways first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from genexflow.models import PathwayNet, PathwayNetConfig, export_onnx
from genexflow.training.crosstalk import fit_pathway_start, init_crosstalk, oof_logits, screen
from genexflow.training.interpret import pathway_term_shapley
from genexflow.training.trainer import TensorData
from genexflow.training.wide import fit_glm, init_wide

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _xor_cohort(n=900, seed=0, labels=True):
    """8 pathways of 12 genes (neighbours share 2 genes) + 20 background genes; 3 classes: class 1 vs 0
    by the sign of a0*a1 (XOR), class 2 by a2."""
    rng = np.random.default_rng(seed)
    P, size = 8, 12
    G = P * 10 + 2 + 20
    M = np.zeros((G, P), np.float32)
    for k in range(P):
        M[k * 10:k * 10 + size, k] = 1
    A = rng.normal(size=(n, P))
    X = A @ (M * rng.normal(1.0, 0.2, M.shape)).T + rng.normal(0, 1.0, (n, G))
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    z = np.zeros((n, 3))
    z[:, 1] = 3 * A[:, 0] * A[:, 1]
    z[:, 2] = 2.5 * A[:, 2] - 1
    y = (z + rng.gumbel(size=z.shape) * 0.3).argmax(1) if labels else rng.integers(0, 3, n)
    return X, y, M


def _split(n):
    return np.arange(int(0.7 * n)), np.arange(int(0.7 * n), n)


def test_start_separates_the_interaction_a_glm_cannot():
    X, y, M = _xor_cohort()
    tr, te = _split(len(y))
    W, b, est = fit_glm(X[tr], y[tr], "classification", "l2", n_outputs=3, return_estimator=True)
    off = oof_logits(est, X[tr], y[tr], "classification", 3)
    lin, pairs = screen(((X[tr] @ M) / M.sum(0)), y[tr], off, "classification")
    start = fit_pathway_start(X[tr], y[tr], off, M, "classification", rank=2)
    assert start.kept
    assert list(start.pair_pathways) == [0, 1] and 2 in start.linear_pathways
    glm = X[te] @ W.T + b
    S = torch.as_tensor((X[te] @ start.gene_weights) @ start.mix)
    from genexflow.training.crosstalk import _terms

    z = start.glm_scale * glm + _terms(S, torch.as_tensor(start.factors), torch.as_tensor(start.linear), 3, 2).numpy()
    b_glm = balanced_accuracy_score(y[te], glm.argmax(1))
    b_start = balanced_accuracy_score(y[te], z.argmax(1))
    assert b_glm < 0.65 and b_start > b_glm + 0.15, (b_glm, b_start)
    assert len(pairs) >= 2  # the member-mean scores already single out the pair


def test_start_stays_off_without_pathway_signal():
    X, y, M = _xor_cohort(n=450, labels=False)
    _, _, est = fit_glm(X, y, "classification", "l2", n_outputs=3, return_estimator=True)
    start = fit_pathway_start(X, y, oof_logits(est, X, y, "classification", 3), M, "classification", rank=2)
    assert not start.kept and start.factors is None


def _started_net(X, y, M):
    cfg = PathwayNetConfig(n_genes=X.shape[1], n_pathways=M.shape[1], n_outputs=3, gcn_dim=4, gcn_layers=1,
                           readout_dims=(16,), d_model=8, n_heads=2, ff_dim=16, ae_hidden=16, latent_dim=4,
                           head_hidden=8, pathway_interactions=2)
    torch.manual_seed(0)
    net = PathwayNet(cfg, M)
    est = init_wide(net, X, y, "classification", "l2")
    start = init_crosstalk(net, X, y, est, "classification")
    return net.eval(), start


def test_started_network_exports_to_onnx_with_the_same_outputs(tmp_path):
    import onnxruntime as ort

    X, y, M = _xor_cohort(n=600)
    net, start = _started_net(X, y, M)
    assert start.kept and float(net.fm_gate.detach()) == 1.0 and net.fm_linear.abs().sum() > 0
    assert not torch.allclose(net.fm_mix, torch.eye(M.shape[1]))
    with torch.no_grad():  # the head's output layer is zero: the network is the GLM + pathway terms
        ref = net(torch.as_tensor(X[:50])).logits.numpy()
    acc = balanced_accuracy_score(y, net(torch.as_tensor(X)).logits.argmax(1).numpy())
    assert acc > 0.75
    path = export_onnx(net, tmp_path / "xor.onnx", X.shape[1], 0)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"expression": X[:50], "covariates": np.zeros((50, 0), np.float32)})[0]
    np.testing.assert_allclose(np.log(got) - np.log(got).mean(1, keepdims=True),
                               ref - ref.mean(1, keepdims=True), atol=1e-4)
    # a checkpoint without the read-out and linear terms loads with their neutral values
    sd = {k: v for k, v in net.state_dict().items() if k not in ("fm_mix", "fm_linear")}
    net2 = PathwayNet(net.config, M)
    net2.load_state_dict(sd)
    assert torch.equal(net2.fm_mix, torch.eye(M.shape[1])) and not net2.fm_linear.any()


def test_small_cohort_keeps_the_network_as_built():
    X, y, M = _xor_cohort(n=150)
    net, start = _started_net(X, y, M)
    assert start is None and float(net.fm_gate.detach()) == 0.0 and not net.fm_linear.any()
    assert not net.fm_mix.requires_grad and not net.fm_linear.requires_grad


def test_pathway_term_shapley_ranks_the_planted_pathways_first():
    X, y, M = _xor_cohort(n=600, seed=1)
    net, start = _started_net(X, y, M)
    phi = pathway_term_shapley(net, TensorData(X, np.zeros((len(X), 0), np.float32), y))
    assert set(np.argsort(-phi)[:3]) == {0, 1, 2}, phi
