"""Layers: the factorized and edge-list graph propagation agree with the dense ``Â H``; attention weights;
pathway pooling; config validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genexflow.errors import InputError
from genexflow.models import (
    EdgePropagation,
    GraphConv,
    MembershipPropagation,
    PathwayNet,
    PathwayNetConfig,
    PathwayPooling,
    dense_propagation,
    make_propagation,
)
from genexflow.priors import PathwayScorer, comembership_graph, edge_list_graph, normalized_adjacency


def _sets(G=40, P=6, seed=0):
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(G)]
    sets = {f"s{k}": list(rng.choice(genes[: G - 3], size=rng.integers(4, 12), replace=False)) for k in range(P)}
    return genes, sets


def test_factorized_propagation_equals_dense():
    genes, sets = _sets()
    g = comembership_graph(sets, genes)
    A_hat = torch.tensor(normalized_adjacency(g.adjacency().toarray().astype(np.float64)))
    H = torch.randn(5, 40, dtype=torch.float64)  # 5 signals over 40 genes (rows)
    ref = dense_propagation(A_hat, H)
    torch.testing.assert_close(ref, (A_hat @ H.t()).t())
    prop = make_propagation(g)
    assert isinstance(prop, MembershipPropagation)
    got = prop(H.float()).double()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # The numpy reference of the priors (gene rows) agrees too.
    np.testing.assert_allclose(g.propagate(H.numpy().T).T, ref.numpy(), rtol=1e-5, atol=1e-6)
    # Genes outside every set (the last three) are left unchanged: their row of Â is e_i.
    torch.testing.assert_close(got[:, -3:], H[:, -3:], rtol=1e-6, atol=1e-6)


def test_edge_propagation_equals_dense_with_duplicate_targets():
    import pandas as pd

    rng = np.random.default_rng(1)
    genes = [f"g{i}" for i in range(30)]
    i, j = rng.integers(0, 30, 150), rng.integers(0, 30, 150)
    edges = pd.DataFrame({"gene1": np.array(genes)[i], "gene2": np.array(genes)[j],
                          "weight": rng.random(150).astype(np.float32)})
    g = edge_list_graph(edges, genes)
    prop = make_propagation(g)
    assert isinstance(prop, EdgePropagation)
    A_hat = torch.tensor(normalized_adjacency(g.adjacency().toarray().astype(np.float64)))
    H = torch.randn(4, 30, dtype=torch.float64)
    torch.testing.assert_close(prop(H.float()).double(), H @ A_hat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prop.transpose(H.float()).double(), H @ A_hat.t(), rtol=1e-5, atol=1e-6)


def test_graphconv_shapes_residual_and_gradients():
    genes, sets = _sets()
    prop = make_propagation(comembership_graph(sets, genes))
    layer = GraphConv(8, dropout=0.0)
    H = torch.randn(3, 8, 40, requires_grad=True)  # (B, F, G)
    out = layer(H, prop)
    assert out.shape == (3, 8, 40)
    # Formula: H + GELU(Â (Θ H) + b), with Â applied to every sample and channel.
    A_hat = torch.tensor(normalized_adjacency(comembership_graph(sets, genes).adjacency().toarray()))
    Z = torch.einsum("ij,bfj->bfi", A_hat.float(), torch.einsum("fk,bkg->bfg", layer.lin.weight, H))
    torch.testing.assert_close(out, H + torch.nn.functional.gelu(Z + layer.bias[:, None]), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert H.grad is not None and layer.lin.weight.grad.abs().sum() > 0
    # Samples do not mix: changing sample 0 leaves samples 1 and 2 unchanged.
    H2 = H.detach().clone()
    H2[0] += 1.0
    out2 = layer(H2, prop)
    torch.testing.assert_close(out2[1:], out.detach()[1:])


@pytest.mark.parametrize("graph_kind", ["membership", "edges"])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_fused_graphconv_matches_plain_ops(graph_kind, p):
    """The memory-saving fused training path and the plain ops give the same output and gradients."""
    import pandas as pd

    genes, sets = _sets()
    if graph_kind == "membership":
        g = comembership_graph(sets, genes)
    else:
        rng = np.random.default_rng(4)
        g = edge_list_graph(pd.DataFrame({"gene1": rng.choice(genes, 90), "gene2": rng.choice(genes, 90),
                                          "weight": rng.random(90)}), genes)
    prop = make_propagation(g)
    layer = GraphConv(6, dropout=p).train()
    H0 = torch.randn(3, 6, 40)
    results = []
    for fused in (True, False):
        layer.fused = fused
        layer.zero_grad()
        H = H0.clone().requires_grad_(True)
        torch.manual_seed(7)  # same dropout mask on both paths
        out = layer(H, prop)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out.detach(), H.grad, layer.lin.weight.grad.clone(), layer.bias.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # And the hand-written backward against finite differences (float64, no dropout).
    layer64 = GraphConv(3, dropout=0.0).double().train()
    prop64 = make_propagation(g).double()
    H = torch.randn(2, 3, 40, dtype=torch.float64, requires_grad=True)
    from genexflow.models.layers import _FusedGraphConv

    assert torch.autograd.gradcheck(lambda h, w, b: _FusedGraphConv.apply(h, w, b, prop64, 0.0),
                                    (H, layer64.lin.weight, layer64.bias))


def test_pooling_starts_at_pathway_means_and_learns_weights():
    genes, sets = _sets()
    from genexflow.priors import membership_matrix

    M = torch.tensor(membership_matrix(sets, genes))
    X = np.random.default_rng(2).normal(size=(5, 40)).astype(np.float32)
    pool = PathwayPooling(40)
    pooled = pool(torch.tensor(X).unsqueeze(1), M).squeeze(1)  # (B, P)
    ref = PathwayScorer(sets, min_size=1, genes=genes).fit(X).transform(X)
    np.testing.assert_allclose(pooled.detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        pool.gene_logits[0] = 3.0
    W = pool.weights(M)
    torch.testing.assert_close(W.sum(0), torch.ones(6))
    assert torch.all(W[M == 0] == 0)
    via_weights = torch.tensor(X) @ W
    torch.testing.assert_close(pool(torch.tensor(X).unsqueeze(1), M).squeeze(1), via_weights)


@pytest.mark.parametrize("norm_first", [False, True])
def test_attention_weights_shape_and_normalization(norm_first):
    genes, sets = _sets()
    from genexflow.priors import membership_matrix

    M = membership_matrix(sets, genes)
    cfg = PathwayNetConfig(n_genes=40, n_pathways=6, n_covariates=2, n_outputs=3, n_heads=2, d_model=16,
                           transformer_layers=3, norm_first=norm_first)
    net = PathwayNet(cfg, M).eval()
    x, c = torch.randn(4, 40), torch.randn(4, 2)
    out = net(x, c, return_attention=True)
    # The fused kernel (default) and the explicit softmax compute the same network.
    fast = net(x, c, return_attention=False)
    assert fast.attention is None
    assert len(net(x, c).attention) == 3  # eval mode returns the weights by default
    torch.testing.assert_close(fast.logits, out.logits)
    assert len(out.attention) == 3
    for w in out.attention:
        assert w.shape == (4, 2, 7, 7)
        assert torch.all(w >= 0)
        torch.testing.assert_close(w.sum(-1), torch.ones(4, 2, 7))
    pa = net.pathway_attention(out)
    assert pa.shape == (4, 6) and torch.all(pa.sum(1) < 1.0 + 1e-6)
    # Attention runs over a real token sequence: different pathways get different weights.
    assert pa.std(1).min() > 0


def test_config_validation():
    with pytest.raises(InputError, match="regression"):
        PathwayNetConfig(n_genes=10, n_pathways=2, task="regression", n_outputs=2)
    with pytest.raises(InputError, match="divisible"):
        PathwayNetConfig(n_genes=10, n_pathways=2, d_model=10, n_heads=4)
    with pytest.raises(InputError, match="task"):
        PathwayNetConfig(n_genes=10, n_pathways=2, task="ranking")
    cfg = PathwayNetConfig(n_genes=10, n_pathways=2, readout_dims=[32, 16])
    assert PathwayNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="shape"):
        PathwayNet(cfg, np.zeros((9, 2)))
    with pytest.raises(InputError, match="unknown"):
        PathwayNetConfig.from_dict({**cfg.to_dict(), "bogus": 1})
