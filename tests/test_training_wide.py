"""The wide path (GLM start, CANN) and the pathway-crosstalk term of PathwayNet.

- fit_glm's logits reproduce scikit-learn's probabilities (binary split -z/2, +z/2; multiclass; a class
  absent from training), and regression predictions;
- the network starts exactly at the GLM and keeps that start when no epoch beats it;
- regression: target standardization is folded into the wide path too;
- the crosstalk term equals the brute-force pairwise sum and learns an XOR of two pathways that a linear
  model cannot;
- on the shipped GEUVADIS sex cohort (signal in a few chrY genes), the network reaches the elastic net.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from genexflow.models import PathwayNet, PathwayNetConfig
from genexflow.training.config import MODEL_PRESETS, TrainConfig
from genexflow.training.wide import fit_glm, init_wide

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _sparse_signal(n=90, g=300, k=2, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = rng.normal(size=(n, g))
    X[:, :3] += 1.5 * (y[:, None] == 1) - 1.5 * (y[:, None] == 2)
    return X.astype(np.float32), y


@pytest.mark.parametrize("k", [2, 3])
def test_glm_logits_match_sklearn_probabilities(k):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    X, y = _sparse_signal(k=k)
    W, b = fit_glm(X, y, "classification", "l2", seed=0, n_outputs=k)
    ref = LogisticRegressionCV(Cs=np.logspace(-3, 1, 5), l1_ratios=(0.0,), scoring="neg_log_loss", max_iter=3000,
                               tol=1e-3, cv=StratifiedKFold(3, shuffle=True, random_state=0),
                               use_legacy_attributes=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(X.astype(np.float64), y)
    np.testing.assert_allclose(_softmax(X @ W.T + b), ref.predict_proba(X), atol=1e-5)
    assert W.shape == (k, X.shape[1]) and b.shape == (k,)


def test_glm_class_absent_from_training_gets_no_probability():
    X, y = _sparse_signal(k=3)
    keep = y != 1
    W, b = fit_glm(X[keep], y[keep], "classification", "auto", n_outputs=3)
    p = _softmax(X @ W.T + b)
    assert p[:, 1].max() < 1e-3
    assert (W[1] == 0).all()
    acc = (p.argmax(1)[keep] == y[keep]).mean()
    assert acc > 0.9


def test_glm_regression_predictions():
    from sklearn.linear_model import RidgeCV

    X, _ = _sparse_signal()
    t = X[:, 0] - 0.5 * X[:, 1] + 0.1 * np.random.default_rng(1).normal(size=len(X))
    W, b = fit_glm(X, t, "regression", "l2")
    ref = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(X, t)
    np.testing.assert_allclose((X @ W.T + b)[:, 0], ref.predict(X), atol=1e-4)
    W2, b2 = fit_glm(X, t, "regression", "auto")
    r2 = 1 - np.var(t - (X @ W2.T + b2)[:, 0]) / np.var(t)
    assert r2 > 0.9


def _net(G=40, P=5, k=2, **kw):
    M = (np.random.default_rng(0).random((G, P)) < 0.3).astype(np.float32)
    M[:P, :P] = np.eye(P)  # every set non-empty
    cfg = PathwayNetConfig(n_genes=G, n_pathways=P, n_outputs=k, **{**dict(gcn_dim=2, d_model=8, n_heads=2,
                           ff_dim=8, readout_dims=(8,), ae_hidden=8, latent_dim=4, head_hidden=8), **kw})
    torch.manual_seed(0)
    return PathwayNet(cfg, M).eval(), M


def test_network_starts_at_the_glm_and_freezes_it():
    X, y = _sparse_signal(g=40)
    W, b = fit_glm(X, y, "classification", "l2", n_outputs=2)
    net, _ = _net(pathway_interactions=0)
    assert init_wide(net, X, y, "classification", "l2")
    with torch.no_grad():
        p = torch.softmax(net(torch.as_tensor(X)).logits, 1).numpy()
    np.testing.assert_allclose(p, _softmax(X @ W.T + b), atol=1e-5)
    assert not net.wide.weight.requires_grad
    # With the crosstalk term (random factors, gate at 0) the start is still exactly the GLM.
    net, _ = _net()
    init_wide(net, X, y, "classification", "l2")
    with torch.no_grad():
        p = torch.softmax(net(torch.as_tensor(X)).logits, 1).numpy()
    np.testing.assert_allclose(p, _softmax(X @ W.T + b), atol=1e-5)
    assert not init_wide(net, X, y, "classification", "none")


def test_trainer_keeps_the_start_when_no_epoch_beats_it():
    from genexflow.training.trainer import TensorData, Trainer

    X, y = _sparse_signal(g=40)
    net, _ = _net()
    init_wide(net, X, y, "classification", "l2")
    start = {k: v.clone() for k, v in net.state_dict().items()}
    data = TensorData(X, np.zeros((len(X), 0)), y)
    # A learning rate this large wrecks the deep branches on the first step: every epoch is worse.
    cfg = TrainConfig(epochs=4, lr=50.0, grad_clip=0, patience=4, num_threads=1, deterministic=False)
    res = Trainer(cfg).fit(net, data.take(np.arange(60)), data.take(np.arange(60, 90)), start_is_candidate=True)
    assert res.best_epoch == -1 and len(res.history) == 4
    for k, v in res.module.state_dict().items():
        torch.testing.assert_close(v, start[k])
    # Without the flag the same run keeps its least-bad epoch instead.
    net2, _ = _net()
    init_wide(net2, X, y, "classification", "l2")
    res2 = Trainer(cfg).fit(net2, data.take(np.arange(60)), data.take(np.arange(60, 90)))
    assert res2.best_epoch >= 0


def test_regression_wide_path_in_original_units():
    import pandas as pd

    from genexflow.cohort import Cohort
    from genexflow.training.cv import prepare_fold, train_deep
    from genexflow.training.trainer import predict_module

    X, _ = _sparse_signal(n=80, g=60)
    t = (50 + 10 * X[:, 0] - 5 * X[:, 1]).astype(np.float32)
    c = Cohort(X, [f"g{i}" for i in range(60)], pd.DataFrame({"t": t}, index=[f"s{i}" for i in range(80)]),
               value_type="log-expression")
    cfg = TrainConfig(task="regression", label="t", epochs=2, lr=1e-9, num_threads=1, gene_set_min_size=3,
                      model=MODEL_PRESETS["tiny"], preprocessing={"scale": False})
    fold = prepare_fold(c, None, t, None, cfg)
    res = train_deep(fold, cfg, 1)
    pred = predict_module(res.module, fold.train, "regression", res.target_mean, res.target_std)["prediction"]
    assert res.best_epoch == -1  # lr 1e-9 cannot beat the GLM start by min_delta
    assert np.corrcoef(pred, t)[0, 1] > 0.99 and abs(pred.mean() - t.mean()) < 1.0


def test_crosstalk_equals_pairwise_sum():
    net, M = _net(G=30, P=6, k=3, use_gcn=False, use_transformer=False, use_autoencoder=False,
                  gene_linear=False, pathway_interactions=3)
    x = torch.randn(5, 30)
    with torch.no_grad():
        net.fm_member_weights.normal_()
        net.fm_gate.fill_(1.0)
        out = net.crosstalk(x.unsqueeze(1)).numpy()
        s = (x @ (net.fm_gene_weights * net.membership)).numpy()
        V = net.fm_factors.numpy().reshape(6, 3, 3)  # (P, K, r)
    ref = np.zeros((5, 3))
    for j in range(6):
        for m in range(j + 1, 6):
            ref += (V[j] * V[m]).sum(-1)[None, :] * (s[:, j] * s[:, m])[:, None]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_crosstalk_learns_a_pathway_xor_a_linear_model_cannot():
    from sklearn.linear_model import LogisticRegression

    from genexflow.training.trainer import TensorData, Trainer, predict_module

    rng = np.random.default_rng(0)
    G, P, n = 60, 6, 900
    M = np.zeros((G, P), np.float32)
    for k in range(P):
        M[k * 10:(k + 1) * 10, k] = 1
    A = rng.normal(size=(n, P))
    X = (A @ (M.T * rng.choice([1.0, -1.0], p=[0.8, 0.2], size=M.T.shape)) + rng.normal(size=(n, G))).astype(np.float32)
    y = (A[:, 0] * A[:, 1] > 0).astype(np.int64)
    tr, te = np.arange(600), np.arange(600, n)
    lin = LogisticRegression(max_iter=2000).fit(X[tr], y[tr]).score(X[te], y[te])
    cfg = PathwayNetConfig(n_genes=G, n_pathways=P, use_gcn=False, use_transformer=False, use_autoencoder=False,
                           gene_linear=False, pathway_interactions=2)
    torch.manual_seed(0)
    net = PathwayNet(cfg, M)
    data = TensorData(X, np.zeros((n, 0)), y)
    res = Trainer(TrainConfig(epochs=60, lr=1e-2, batch_size=32, patience=60, num_threads=1,
                              deterministic=False)).fit(net, data.take(tr[:500]), data.take(tr[500:]))
    acc = (predict_module(res.module, data.take(te), "classification")["proba"].argmax(1) == y[te]).mean()
    assert lin < 0.62, lin
    assert acc > 0.8, (acc, lin)
    # the interpretation names the interacting pair
    from genexflow.training.interpret import pathway_crosstalk

    per, pairs = pathway_crosstalk(res.module, data.take(tr), [f"p{k}" for k in range(P)])
    assert set(pairs.iloc[0][["pathway_a", "pathway_b"]]) == {"p0", "p1"}
    assert set(np.argsort(-per)[:2]) == {0, 1}


def test_sparse_chrY_signal_on_shipped_geuvadis():
    from genexflow import datasets
    from genexflow.training.cv import cross_validate

    c = datasets.load_geuvadis_sex()
    cfg = TrainConfig(label="sex", epochs=10, lr=1e-4, batch_size=16, num_threads=1, model=MODEL_PRESETS["tiny"])
    res = cross_validate(c, cfg, n_splits=3, baselines=["elasticnet"])
    s = res.summary(["balanced_accuracy"])["balanced_accuracy_mean"]
    assert s["pathwaynet"] > 0.9
    assert s["pathwaynet"] >= s["elasticnet"] - 0.05


def test_models_saved_before_the_wide_path_still_load(tmp_path):
    net, _ = _net(gene_linear=False, pathway_interactions=0)
    blob = {"config": net.config.to_dict(), "state_dict": net.state_dict()}
    for key in ("gene_linear", "gene_l1", "gene_l2", "pathway_interactions"):
        blob["config"].pop(key)  # what an older genexflow wrote
    torch.save(blob, tmp_path / "old.pt")
    old = PathwayNet.load(tmp_path / "old.pt").eval()
    assert not hasattr(old, "wide") and not hasattr(old, "fm_factors")
    x = torch.randn(3, 40)
    torch.testing.assert_close(old(x).logits, net(x).logits)
