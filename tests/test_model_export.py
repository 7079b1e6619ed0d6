"""Export: ONNX (dynamic batch, opset >= 17) reloaded in onnxruntime matches torch within 1e-4 on random and
real inputs; TorchScript reloads and matches; the edge-list graph exports too."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from genexflow.errors import InputError
from genexflow.models import PathwayNet, PathwayNetConfig, export_onnx, export_torchscript, verify_onnx
from genexflow.priors import build_priors, edge_list_graph

SMALL = dict(gcn_dim=4, d_model=16, n_heads=2, ff_dim=32, readout_dims=(64, 32), ae_hidden=32, latent_dim=8,
             head_hidden=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(path, x, c):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"expression": x, "covariates": c}), strict=True))


def _trained_a_little(net, G, C, steps=5):
    # Move the weights off their initialization so parity is checked on a non-trivial model.
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, c = torch.randn(16, G, generator=g), torch.randn(16, C, generator=g)
        y = torch.randint(0, net.config.n_outputs, (16,), generator=g)
        opt.zero_grad()
        net.loss(net(x, c if C else None), x, y).total.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def golub(shared_data):
    d = shared_data / "golub"
    X = pd.read_parquet(d / "expression.parquet").set_index("sample_id")
    genes = pd.read_csv(d / "genes.csv")
    sym = genes.set_index("gene_id")["symbol"].reindex(X.columns)
    keep = sym.notna() & ~sym.duplicated()
    X = X.loc[:, keep.to_numpy()]
    X.columns = sym[keep].to_numpy()
    return X


def test_onnx_parity_random_and_real_golub(tmp_path, golub):
    pri = build_priors(list(golub.columns), "kegg", min_size=10)
    assert pri.n_pathways > 50
    net = PathwayNet.from_priors(pri, n_covariates=2, n_outputs=2, **SMALL)
    net = _trained_a_little(net, pri.n_genes, 2)
    path = export_onnx(net, tmp_path / "golub.onnx", pri.n_genes, 2, include_attention=True)

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ins = {i.name: i for i in model.graph.input}
    assert list(ins) == ["expression", "covariates"]
    assert ins["expression"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert ins["expression"].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert ins["expression"].type.tensor_type.shape.dim[1].dim_value == pri.n_genes
    assert [o.name for o in model.graph.output] == ["probabilities", "latent", "pathway_attention"]

    rng = np.random.default_rng(0)
    real = golub.to_numpy(np.float32)  # already standardized per array (see shared/data/golub/README.md)
    for x in (rng.normal(size=(1, pri.n_genes)).astype(np.float32),
              rng.normal(size=(7, pri.n_genes)).astype(np.float32), real):
        c = rng.normal(size=(len(x), 2)).astype(np.float32)
        got = _run(path, x, c)
        with torch.no_grad():
            out = net(torch.from_numpy(x), torch.from_numpy(c), return_attention=True)
        np.testing.assert_allclose(got["probabilities"], torch.softmax(out.logits, -1).numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["latent"], out.latent.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["pathway_attention"], net.pathway_attention(out).numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["probabilities"].sum(1), 1.0, atol=1e-5)
    assert max(verify_onnx(net, path, real, rng.normal(size=(len(real), 2))).values()) < 1e-4


def test_onnx_edge_graph_vae_regression_without_covariates(tmp_path):
    rng = np.random.default_rng(1)
    genes = [f"g{i}" for i in range(120)]
    sets = {f"s{k}": list(rng.choice(genes, 15, replace=False)) for k in range(8)}
    edges = pd.DataFrame({"gene1": rng.choice(genes, 500), "gene2": rng.choice(genes, 500),
                          "weight": rng.random(500).astype(np.float32)})
    pri = build_priors(genes, sets, min_size=5, graph=edge_list_graph(edges, genes))
    net = PathwayNet.from_priors(pri, n_covariates=0, n_outputs=1, task="regression", variational=True, **SMALL)
    net.train()  # export must switch to eval (no sampling) and restore the flag
    path = export_onnx(net, tmp_path / "edges.onnx", include_latent=False)
    assert net.training
    x = rng.normal(size=(5, 120)).astype(np.float32)
    got = _run(path, x, np.zeros((5, 0), np.float32))
    assert list(got) == ["prediction"] and got["prediction"].shape == (5, 1)
    net.eval()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(got["prediction"], ref, atol=1e-4, rtol=0)


def test_torchscript_roundtrip_any_batch(tmp_path):
    rng = np.random.default_rng(2)
    M = (rng.random((80, 6)) < 0.2).astype(np.float32)
    net = _trained_a_little(PathwayNet(PathwayNetConfig(n_genes=80, n_pathways=6, n_covariates=3, n_outputs=4,
                                                        **SMALL), M), 80, 3)
    path = export_torchscript(net, tmp_path / "m.pt")
    ts = torch.jit.load(str(path))
    for b in (1, 9):
        x, c = torch.randn(b, 80), torch.randn(b, 3)
        probs, latent = ts(x, c)
        with torch.no_grad():
            out = net(x, c)
        torch.testing.assert_close(probs, torch.softmax(out.logits, -1))
        torch.testing.assert_close(latent, out.latent)


def test_export_rejects_wrong_sizes_and_old_opset(tmp_path):
    M = np.ones((10, 2), np.float32)
    net = PathwayNet(PathwayNetConfig(n_genes=10, n_pathways=2, n_covariates=1, **SMALL), M)
    with pytest.raises(InputError, match="built for 10 genes"):
        export_onnx(net, tmp_path / "x.onnx", n_genes=11, n_covariates=1)
    with pytest.raises(InputError, match="opset"):
        export_onnx(net, tmp_path / "x.onnx", opset=13)


def test_torchscript_onnx_exporter_sums_repeated_edge_targets(tmp_path):
    """Serving exports with the TorchScript-based ONNX exporter; edge-list message passing must survive it
    (repeated scatter targets are summed, not overwritten)."""
    import warnings

    from genexflow.models.export import ServingModule

    rng = np.random.default_rng(3)
    genes = [f"g{i}" for i in range(60)]
    sets = {f"s{k}": list(rng.choice(genes, 10, replace=False)) for k in range(4)}
    edges = pd.DataFrame({"gene1": rng.choice(genes, 300), "gene2": rng.choice(genes, 300),
                          "weight": rng.random(300).astype(np.float32)})
    pri = build_priors(genes, sets, min_size=5, graph=edge_list_graph(edges, genes))
    net = PathwayNet.from_priors(pri, n_covariates=2, n_outputs=3, **SMALL).eval()
    wrapper = ServingModule(net).eval()
    path = tmp_path / "legacy.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (torch.randn(2, 60), torch.randn(2, 2)), str(path), dynamo=False,
                          input_names=["expression", "covariates"], output_names=wrapper.output_names,
                          dynamic_axes={"expression": {0: "b"}, "covariates": {0: "b"}}, opset_version=17)
    x, c = rng.normal(size=(7, 60)).astype(np.float32), rng.normal(size=(7, 2)).astype(np.float32)
    assert max(verify_onnx(net, path, x, c).values()) < 1e-5
