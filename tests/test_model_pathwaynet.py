"""PathwayNet: variants (deterministic / VAE / regression / no covariates / edge-list graph), loss, save/load,
and learning: planted pathway signal is learned, shuffled labels stay at chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genexflow.errors import InputError
from genexflow.models import PathwayNet, PathwayNetConfig
from genexflow.priors import build_priors, load_gene_sets

SMALL = dict(gcn_dim=4, d_model=16, n_heads=2, ff_dim=32, readout_dims=(64, 32), ae_hidden=32, latent_dim=8,
             head_hidden=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted_cohort(n: int = 240, n_sets: int = 12, seed: int = 0):
    """Expression driven by per-sample pathway activities on real KEGG sets; label = sign(a_0 - a_1)."""
    rng = np.random.default_rng(seed)
    kegg = load_gene_sets("kegg")
    names = sorted(k for k, v in kegg.items() if 15 <= len(v) <= 60)[:n_sets]
    genes = sorted({g for k in names for g in kegg[k]})
    pri = build_priors(genes, {k: kegg[k] for k in names}, min_size=10)
    M = pri.membership
    A = rng.normal(size=(n, M.shape[1]))
    loadings = M.T * rng.normal(0.8, 0.2, size=M.T.shape)
    X = A @ loadings / np.sqrt(M.sum(1).clip(1)) + rng.normal(size=(n, len(genes)))
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    y = (A[:, 0] - A[:, 1] > 0).astype(np.int64)
    target = (A[:, 0] - A[:, 1] + 0.2 * rng.normal(size=n)).astype(np.float32)
    return pri, X, y, target


def fit_eval(net, X, y, epochs=12, lr=3e-3, n_train=160):
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-2)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    tr = np.arange(n_train)
    for ep in range(epochs):
        net.train()
        perm = np.random.default_rng(ep).permutation(tr)
        for b in range(0, len(perm), 32):
            i = perm[b:b + 32]
            opt.zero_grad()
            loss = net.loss(net(Xt[i]), Xt[i], yt[i])
            loss.total.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        out = net(Xt[n_train:])
    return out, yt[n_train:]


def test_learns_planted_signal_and_shuffled_labels_stay_at_chance():
    pri, X, y, _ = planted_cohort()
    accs = {}
    for name, labels in {"real": y, "shuffled": np.random.default_rng(1).permutation(y)}.items():
        torch.manual_seed(0)
        net = PathwayNet.from_priors(pri, n_outputs=2, **SMALL)
        out, yt = fit_eval(net, X, labels)
        accs[name] = float((out.logits.argmax(1) == yt).float().mean())
    assert accs["real"] >= 0.8, accs
    assert 0.3 <= accs["shuffled"] <= 0.7, accs


def test_regression_head_learns_target():
    pri, X, _, target = planted_cohort(seed=2)
    torch.manual_seed(0)
    net = PathwayNet.from_priors(pri, n_outputs=1, task="regression", **SMALL)
    out, yt = fit_eval(net, X, target, epochs=15)
    assert out.logits.shape == (80, 1)
    pred = out.logits.squeeze(1).numpy()
    r = np.corrcoef(pred, yt.numpy())[0, 1]
    assert r > 0.7, r


def test_learns_on_simulator_cohort():
    """The lead's simulator plants a non-additive (XOR-like) class 1 vs 0 and an additive class 2."""
    sim = pytest.importorskip("genexflow.simulate")
    cohort, truth = sim.simulate_cohort(n_samples=400, n_genes=300, n_pathways=12, n_classes=3, n_batches=1,
                                        signal=1.5, value_type="log-expression", seed=5)
    X = cohort.X.astype(np.float32)
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    y = cohort.samples["label"].astype("category").cat.codes.to_numpy().astype(np.int64)
    pri = build_priors(list(cohort.genes), truth.pathways, min_size=5)
    accs = {}
    for name, labels in {"real": y, "shuffled": np.random.default_rng(1).permutation(y)}.items():
        torch.manual_seed(0)
        net = PathwayNet.from_priors(pri, n_outputs=3, **SMALL)
        out, yt = fit_eval(net, X, labels, epochs=25, n_train=300)
        chance = np.bincount(labels[300:]).max() / 100
        accs[name] = (float((out.logits.argmax(1) == yt).float().mean()), chance)
    assert accs["real"][0] >= accs["real"][1] + 0.2, accs
    assert accs["shuffled"][0] <= accs["shuffled"][1] + 0.1, accs


@pytest.mark.parametrize(
    "variant",
    [dict(), dict(variational=True), dict(task="regression", n_outputs=1), dict(n_covariates=0),
     dict(use_transformer=False), dict(use_gcn=False), dict(use_autoencoder=False), dict(gcn_layers=3)],
    ids=["deterministic", "vae", "regression", "no-covariates", "no-transformer", "no-gcn", "no-ae", "3-layers"],
)
def test_variants_forward_loss_backward(variant):
    rng = np.random.default_rng(0)
    M = (rng.random((60, 5)) < 0.25).astype(np.float32)
    kw = {**SMALL, "n_covariates": 3, "n_outputs": 3, **variant}
    cfg = PathwayNetConfig(n_genes=60, n_pathways=5, **kw)
    net = PathwayNet(cfg, M)
    x = torch.randn(6, 60)
    cov = torch.randn(6, cfg.n_covariates) if cfg.n_covariates else None
    out = net(x, cov, return_attention=True)
    assert out.logits.shape == (6, cfg.n_outputs)
    assert (out.reconstruction is None) == (not cfg.use_autoencoder)
    assert (out.attention is None) == (not cfg.use_transformer)
    if cfg.use_autoencoder:
        assert out.reconstruction.shape == (6, 60) and out.latent.shape == (6, 8)
    target = torch.randn(6) if cfg.task == "regression" else torch.randint(0, 3, (6,))
    loss = net.loss(out, x, target)
    expected = loss.prediction + cfg.recon_weight * loss.reconstruction + cfg.kl_weight * loss.kl
    torch.testing.assert_close(loss.total, expected)
    assert (loss.kl > 0) == bool(cfg.variational and cfg.use_autoencoder)
    assert set(loss.metrics) >= {"loss", "prediction_loss", "reconstruction_loss", "kl"}
    loss.total.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    prob = net.predict(out)
    if cfg.task == "classification":
        torch.testing.assert_close(prob.sum(1), torch.ones(6))


def test_vae_latent_is_mean_in_eval_and_sampled_in_training():
    rng = np.random.default_rng(0)
    M = (rng.random((50, 4)) < 0.3).astype(np.float32)
    net = PathwayNet(PathwayNetConfig(n_genes=50, n_pathways=4, variational=True, **SMALL), M)
    x = torch.randn(5, 50)
    net.eval()
    a, b = net(x), net(x)
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.latent, b.latent)
    net.train()
    torch.manual_seed(1)
    c = net(x)
    torch.manual_seed(2)
    d = net(x)
    assert not torch.allclose(c.reconstruction, d.reconstruction)
    torch.testing.assert_close(c.latent, d.latent)  # the exposed latent is the mean either way


def test_save_load_roundtrip_membership_and_edges(tmp_path):
    import pandas as pd

    pri, X, *_ = planted_cohort(n=20)
    net = PathwayNet.from_priors(pri, n_outputs=2, n_covariates=1, **SMALL).eval()
    x, c = torch.tensor(X[:4]), torch.randn(4, 1)
    back = PathwayNet.load(net.save(tmp_path / "m.pt")).eval()
    torch.testing.assert_close(back(x, c).logits, net(x, c).logits)

    rng = np.random.default_rng(0)
    genes = pri.genes
    e = pd.DataFrame({"gene1": rng.choice(genes, 300), "gene2": rng.choice(genes, 300), "weight": 0.9})
    pri_e = build_priors(genes, pri.gene_sets, min_size=10, graph=_edges_graph(e, genes))
    net_e = PathwayNet.from_priors(pri_e, n_outputs=2, **SMALL).eval()
    assert net_e.config.graph_kind == "edges" and net_e.config.n_edges == pri_e.graph.n_edges
    back_e = PathwayNet.load(net_e.save(tmp_path / "e.pt")).eval()
    torch.testing.assert_close(back_e(x).logits, net_e(x).logits)


def _edges_graph(frame, genes):
    from genexflow.priors import edge_list_graph

    return edge_list_graph(frame, genes)


def test_missing_covariates_is_a_clear_error():
    M = np.ones((10, 2), np.float32)
    net = PathwayNet(PathwayNetConfig(n_genes=10, n_pathways=2, n_covariates=2, **SMALL), M)
    with pytest.raises(InputError, match="covariates"):
        net(torch.randn(2, 10))
