"""The training-speed forms compute the old functions: the crosstalk stored per membership entry equals the
dense masked (G, P) form (forward and gradients, old checkpoints load), the membership products over member
genes only equal the dense products, validation in row chunks equals one call, the CPU gradient clipping
equals torch's, and the ONNX export (dense graph) still matches torch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from genexflow.models import PathwayNet, PathwayNetConfig, PathwayPooling, export_onnx
from genexflow.models.layers import GraphConv, make_propagation
from genexflow.priors import comembership_graph
from genexflow.training.trainer import batched_call, call_module, clip_grad_norm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(gcn_dim=4, d_model=16, n_heads=2, ff_dim=32, readout_dims=(32, 16), ae_hidden=16, latent_dim=4,
             head_hidden=16)


def _membership(G=50, P=7, seed=0):
    rng = np.random.default_rng(seed)
    M = np.zeros((G, P), np.float32)
    for k in range(P):  # genes 40.. are in no set: the member-only products must leave them right
        M[rng.choice(40, rng.integers(3, 12), replace=False), k] = 1
    return M


def _net(M, **kw):
    G, P = M.shape
    cfg = PathwayNetConfig(n_genes=G, n_pathways=P, n_covariates=2, n_outputs=3, **{**SMALL, **kw})
    return PathwayNet(cfg, M)


def _dense_crosstalk(net, W, x):
    """The old formula: s = x (W ⊙ M) with a dense (G, P) W."""
    s = x @ (W * net.membership)
    V = net.fm_factors
    return (0.5 * net.fm_gate) * (((s @ V).pow(2) - s.pow(2) @ V.pow(2)) @ net.fm_sum)


def test_crosstalk_member_weights_equal_dense_form_forward_and_gradients():
    torch.manual_seed(0)
    M = _membership()
    net = _net(M)
    # Start: the member vector holds exactly the old dense init's membership entries (1/|S_k|).
    size = np.maximum(M.sum(0, keepdims=True), 1.0)
    np.testing.assert_array_equal(net.fm_gene_weights.detach().numpy(), (M / size) * M)
    assert net.fm_member_weights.numel() == int(M.sum())
    W = torch.randn(M.shape, dtype=torch.float32)  # a dense weight, arbitrary off the membership too
    with torch.no_grad():
        net.fm_member_weights.copy_(W[torch.as_tensor(M) != 0])  # row-major membership entries
        net.fm_gate.fill_(0.7)
    x = torch.randn(6, M.shape[0])
    got = net.crosstalk(x.unsqueeze(1))
    Wd = W.clone().requires_grad_(True)
    ref = _dense_crosstalk(net, Wd, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    weights = torch.linspace(-1, 2, ref.numel()).reshape(ref.shape)
    (got * weights).sum().backward()
    (ref * weights).sum().backward()
    mask = torch.as_tensor(M) != 0
    torch.testing.assert_close(net.fm_member_weights.grad, Wd.grad[mask], rtol=1e-5, atol=1e-6)
    assert torch.all(Wd.grad[~mask] == 0)  # the dense form's off-membership weights never mattered


def test_old_dense_crosstalk_checkpoint_loads(tmp_path):
    torch.manual_seed(1)
    M = _membership()
    net = _net(M).eval()
    W = torch.randn(M.shape)
    state = net.state_dict()
    state.pop("fm_member_weights")
    state["fm_gene_weights"] = W  # as saved before the member-vector form
    torch.save({"config": net.config.to_dict(), "state_dict": state}, tmp_path / "old.pt")
    old = PathwayNet.load(tmp_path / "old.pt").eval()
    x, c = torch.randn(4, M.shape[0]), torch.randn(4, 2)
    torch.testing.assert_close(old.fm_gene_weights, W * torch.as_tensor(M))
    with torch.no_grad():
        old.fm_gate.fill_(1.0)
        torch.testing.assert_close(old.crosstalk(x.unsqueeze(1)), _dense_crosstalk(old, W, x))
    # New saves round-trip.
    old.save(tmp_path / "new.pt")
    new = PathwayNet.load(tmp_path / "new.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(new(x, c).logits, old(x, c).logits)


def test_member_only_products_equal_dense_products_with_gradients():
    torch.manual_seed(2)
    M = _membership()
    genes = [f"g{i}" for i in range(M.shape[0])]
    prop = make_propagation(comembership_graph(M, genes))
    H = torch.randn(5, M.shape[0], dtype=torch.float64)
    prop64 = prop.double()
    dense = torch.addcmul((H @ prop64.basis) @ prop64.basis.t(), H, prop64.self_weight)
    torch.testing.assert_close(prop64(H), dense)
    # The fused GCN layer (member-only products in forward and backward) against autograd on the dense form.
    layer = GraphConv(3, dropout=0.0).double().train()
    H3 = torch.randn(2, 3, M.shape[0], dtype=torch.float64, requires_grad=True)
    out = layer(H3, prop64)
    Hd = H3.detach().clone().requires_grad_(True)
    U = torch.einsum("ij,bjg->big", layer.lin.weight, Hd).reshape(-1, M.shape[0])
    Z = torch.addcmul((U @ prop64.basis) @ prop64.basis.t(), U, prop64.self_weight).reshape(Hd.shape)
    ref = Hd + torch.nn.functional.gelu(Z + layer.bias[:, None])
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    dH, dW = torch.autograd.grad((out * g).sum(), (H3, layer.lin.weight))
    dHr, dWr = torch.autograd.grad((ref * g).sum(), (Hd, layer.lin.weight))
    torch.testing.assert_close(dH, dHr)
    torch.testing.assert_close(dW, dWr)
    # Pathway pooling: member-only sums equal the dense formula, gradients included.
    pool = PathwayPooling(M.shape[0]).double()
    with torch.no_grad():
        pool.gene_logits.normal_()
    Mt = torch.as_tensor(M, dtype=torch.float64)
    X = torch.randn(3, 2, M.shape[0], dtype=torch.float64, requires_grad=True)
    got = pool(X, Mt)
    e = torch.exp(pool.gene_logits - pool.gene_logits.max())
    ref = ((X.reshape(-1, M.shape[0]) * e) @ Mt / (e @ Mt).clamp_min(1e-12)).reshape(3, 2, -1)
    torch.testing.assert_close(got, ref)
    g = torch.randn_like(ref)
    a = torch.autograd.grad((got * g).sum(), (X, pool.gene_logits))
    b = torch.autograd.grad((ref * g).sum(), (X, pool.gene_logits))
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v)


def test_onnx_export_of_member_forms_matches_torch(tmp_path):
    torch.manual_seed(3)
    M = _membership()
    net = _net(M)
    with torch.no_grad():  # off the initialization: a non-zero crosstalk term and member weights
        net.fm_member_weights.normal_()
        net.fm_gate.fill_(0.5)
        net.pooling.gene_logits.normal_()
    net.eval()
    path = export_onnx(net, tmp_path / "m.onnx", M.shape[0], 2, include_attention=True, atol=1e-4)
    x = np.random.default_rng(0).normal(size=(9, M.shape[0])).astype(np.float32)
    c = np.random.default_rng(1).normal(size=(9, 2)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"expression": x, "covariates": c})
    with torch.no_grad():
        ref = net(torch.as_tensor(x), torch.as_tensor(c))
    expected = torch.softmax(ref.logits, -1).numpy() if got[0].shape == ref.logits.shape else None
    assert expected is not None
    np.testing.assert_allclose(got[0], expected, atol=1e-5)


def test_batched_validation_call_equals_one_call():
    torch.manual_seed(4)
    M = _membership()
    net = _net(M).eval()
    x, c = torch.randn(21, M.shape[0]), torch.randn(21, 2)
    with torch.no_grad():
        one = call_module(net, x, c, attention=False)
        chunks = batched_call(net, x, c, batch_size=8, attention=False)
    assert one.attention is None and chunks.attention is None
    for a, b in zip(one, chunks, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b)
    lin = torch.nn.Linear(M.shape[0], 2)  # a plain module (tensor output, no covariates)
    with torch.no_grad():
        torch.testing.assert_close(batched_call(lin, x, c, batch_size=5), lin(x))


@pytest.mark.parametrize("scale", [1e-3, 10.0, float("nan")])
def test_cpu_gradient_clipping_equals_torch(scale):
    g = torch.Generator().manual_seed(5)
    ps = [torch.nn.Parameter(torch.randn(7, 3, generator=g)) for _ in range(3)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for p, q in zip(ps, qs, strict=True):
        grad = torch.randn(p.shape, generator=g) * scale
        p.grad, q.grad = grad.clone(), grad.clone()
    clip_grad_norm(ps, 1.0)
    torch.nn.utils.clip_grad_norm_(qs, 1.0)
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True)
