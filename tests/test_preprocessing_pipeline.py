"""The composed pipeline: numpy transform == torch module == ONNX Runtime, frozen for new samples."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from genexflow.cohort import Cohort
from genexflow.errors import InputError
from genexflow.preprocessing.pipeline import PreprocessingConfig, PreprocessingPipeline


def _count_cohort(n=24, G=200, seed=0, missing=0.03):
    rng = np.random.default_rng(seed)
    mu = rng.gamma(0.7, 80, size=G)
    bidx = np.repeat([0, 1, 2], n // 3)
    eff = np.exp(rng.normal(0, 0.4, (3, G)))[bidx]
    X = rng.negative_binomial(5, 5 / (5 + mu * rng.uniform(0.5, 2, (n, 1)) * eff)).astype(np.float32)
    X[rng.random(X.shape) < missing] = np.nan
    samples = pd.DataFrame({"batch": np.array(["b1", "b2", "b3"])[bidx], "sex": np.tile(["F", "M"], n // 2)},
                           index=[f"s{i}" for i in range(n)])
    return Cohort(X, [f"g{i}" for i in range(G)], samples, value_type="counts")


def _log_cohort(n=20, G=80, seed=1):
    rng = np.random.default_rng(seed)
    bidx = np.repeat([0, 1], n // 2)
    X = rng.normal(7, 1, (n, G)) + rng.normal(0, 1, (2, G))[bidx]
    X[:, 5] = 3.0  # constant gene: dropped by the variance filter
    samples = pd.DataFrame({"batch": bidx, "tissue": np.tile(["x", "y"], n // 2)}, index=[f"s{i}" for i in range(n)])
    return Cohort(X.astype(np.float32), [f"p{i}" for i in range(G)], samples, value_type="log-expression")


def _torch_out(pipe, X, batch=None, cov=None):
    m = pipe.to_torch()
    args = [torch.as_tensor(np.asarray(X, np.float32))]
    if pipe.needs_batch:
        args.append(torch.as_tensor(pipe.batch_index(batch)))
        args.append(torch.as_tensor(pipe.covariate_design(cov, len(X))))
    with torch.no_grad():
        return m(*args).numpy(), args


def test_counts_pipeline_numpy_torch_onnx_agree(tmp_path):
    import onnxruntime as ort

    c = _count_cohort()
    pipe = PreprocessingPipeline(PreprocessingConfig(covariates=["sex"]))
    H = pipe.fit_transform(c, batch_column="batch")
    assert repr(pipe).startswith("PreprocessingPipeline(low-count -> tmm-logcpm -> knn -> combat(batch) -> scale")
    assert np.isfinite(H).all() and H.shape == (24, len(pipe.genes_out_))
    np.testing.assert_allclose(pipe.transform(c), H, atol=1e-10)  # frozen transform of training rows
    out, args = _torch_out(pipe, c.X, c.samples["batch"], c.samples[["sex"]])
    np.testing.assert_allclose(out, H, atol=1e-5)
    # ONNX (TorchScript exporter; the dynamo exporter is checked below on a smaller pipeline)
    path = tmp_path / "prep.onnx"
    names = ["x", "batch_index", "covariates"]
    torch.onnx.export(pipe.to_torch(), tuple(a[:3] for a in args), str(path), dynamo=False, input_names=names,
                      output_names=["out"], dynamic_axes={k: {0: "B"} for k in [*names, "out"]})
    sess = ort.InferenceSession(str(path))
    got = sess.run(None, {k: a.numpy() for k, a in zip(names, args, strict=True)})[0]
    np.testing.assert_allclose(got, H, atol=1e-4)


def test_new_samples_missing_values_do_not_propagate():
    c = _count_cohort()
    pipe = PreprocessingPipeline(PreprocessingConfig(covariates=["sex"])).fit(c, batch_column="batch")
    new = _count_cohort(n=6, seed=7, missing=0.1)
    H = pipe.transform(new)
    assert np.isfinite(H).all()
    out, _ = _torch_out(pipe, new.X, new.samples["batch"], new.samples[["sex"]])
    np.testing.assert_allclose(out, H, atol=1e-5)
    # one sample alone gets the same values as within its batch of new samples (no test-time refit)
    np.testing.assert_allclose(pipe.transform(new.subset(samples=[2])), H[[2]], atol=1e-10)


def test_log_expression_defaults_and_dynamo_export(tmp_path):
    import onnxruntime as ort

    c = _log_cohort()
    pipe = PreprocessingPipeline().fit(c, batch_column="batch", covariates=["tissue"])
    assert pipe.plan_["normalization"] == "none" and pipe.imputer_ is None
    assert "p5" not in set(pipe.genes_out_) and len(pipe.genes_out_) == 79
    H = pipe.transform(c)
    np.testing.assert_allclose(H.mean(0), 0, atol=1e-9)
    out, args = _torch_out(pipe, c.X, c.samples["batch"], c.samples[["tissue"]])
    np.testing.assert_allclose(out, H, atol=1e-5)
    onnx_program = torch.onnx.export(pipe.to_torch(), tuple(args), dynamo=True,
                                     dynamic_shapes=tuple({0: torch.export.Dim("B")} for _ in args))
    path = tmp_path / "prep_dynamo.onnx"
    onnx_program.save(str(path))
    sess = ort.InferenceSession(str(path))
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
    np.testing.assert_allclose(sess.run(None, feeds)[0], H, atol=1e-4)


def test_cohort_alignment_pickle_and_errors():
    c = _log_cohort()
    pipe = PreprocessingPipeline().fit(c, batch_column="batch")
    shuffled = c.subset(genes=list(c.genes[::-1]))
    np.testing.assert_allclose(pipe.transform(shuffled), pipe.transform(c))
    again = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(again.transform(c), pipe.transform(c))
    with pytest.raises(InputError, match="training genes are missing"):
        pipe.transform(c.subset(genes=list(c.genes[:10])))
    with pytest.raises(InputError, match="not in training"):
        pipe.batch_index([0, 7])
    with pytest.raises(InputError, match="pass batch="):
        pipe.transform(c.X)
    with pytest.raises(InputError, match="needs raw counts"):
        PreprocessingPipeline(PreprocessingConfig(normalization="tmm-logcpm")).fit(c)


def test_tpm_uses_log2p1_and_mean_fill():
    rng = np.random.default_rng(2)
    X = rng.gamma(1, 20, (10, 40)).astype(np.float32)
    c = Cohort(X, [f"t{i}" for i in range(40)], pd.DataFrame(index=[f"s{i}" for i in range(10)]), value_type="tpm")
    pipe = PreprocessingPipeline(PreprocessingConfig(scale=False)).fit(c)
    np.testing.assert_allclose(pipe.transform(c), np.log2(X.astype(np.float64) + 1), rtol=1e-12)
    Xn = X.copy()
    Xn[0, 3] = np.nan
    out, _ = _torch_out(pipe, Xn)
    assert out[0, 3] == pytest.approx(np.log2(X.astype(np.float64) + 1)[:, 3].mean(), rel=1e-6)


def test_serving_conventions_batch_levels_covariate_encoding_and_unseen_batch():
    # 11 integer batches (string order differs from numeric order), a numeric and a binary covariate
    rng = np.random.default_rng(4)
    nb, per, G = 11, 4, 30
    bidx = np.repeat(np.arange(1, nb + 1), per)
    n = len(bidx)
    X = rng.normal(6, 1, (n, G)) + rng.normal(0, 1, (nb + 1, G))[bidx]
    age = rng.normal(50, 10, n)
    smoker = np.tile([0, 1], n // 2)
    X += 0.02 * age[:, None]
    samples = pd.DataFrame({"batch": bidx, "age": age, "smoker": smoker}, index=[f"s{i}" for i in range(n)])
    c = Cohort(X.astype(np.float32), [f"p{i}" for i in range(G)], samples, value_type="log-expression")
    pipe = PreprocessingPipeline().fit(c, batch_column="batch", covariates=["age", "smoker"])
    assert pipe.batch_levels_[:3] == ["1", "10", "11"]
    from genexflow.bundle import BundleInfo, encode_covariates, fit_covariates

    specs = fit_covariates(samples, ["age", "smoker"])
    cov = encode_covariates(samples, specs)
    np.testing.assert_array_equal(pipe.covariate_design(samples[["age", "smoker"]], n), cov)
    info = BundleInfo("classification", "y", ["a"], list(c.genes), "log-expression", specs, "batch",
                      sorted(map(str, samples["batch"].unique())))
    bi = info.batch_index(samples)
    np.testing.assert_array_equal(bi, pipe.batch_index(samples["batch"]))
    m = pipe.to_torch()
    assert m.takes_batch and m.takes_covariates and pipe.n_covariate_columns == cov.shape[1]
    with torch.no_grad():
        out = m(torch.as_tensor(c.X), torch.as_tensor(bi), torch.as_tensor(cov)).numpy()
    np.testing.assert_allclose(out, pipe.transform(c), atol=1e-5)
    # an unseen batch (-1) gets no batch adjustment in the module: ComBat is the identity there
    no_scale = PreprocessingPipeline(PreprocessingConfig(scale=False)).fit(c, batch_column="batch",
                                                                           covariates=["age", "smoker"])
    with torch.no_grad():
        ident = no_scale.to_torch()(torch.as_tensor(c.X[:3]), torch.full((3,), -1), torch.as_tensor(cov[:3])).numpy()
    np.testing.assert_allclose(ident, c.X[:3], atol=1e-4)
    assert (pipe.batch_index(["99"], unseen="minus-one") == -1).all()


def test_max_genes_and_combat_switch():
    c = _count_cohort()
    pipe = PreprocessingPipeline(PreprocessingConfig(max_genes=50, combat=False)).fit(c, batch_column="batch")
    assert pipe.combat_ is None and len(pipe.genes_out_) == 50
    H = pipe.transform(c)
    assert H.shape == (24, 50)
    # the kept genes are the most variable ones after normalization, in input order
    full = PreprocessingPipeline(PreprocessingConfig(combat=False, scale=False)).fit(c)
    var = full.transform(c).var(0)
    expected = full.genes_out_[np.sort(np.argsort(-var, kind="stable")[:50])]
    np.testing.assert_array_equal(pipe.genes_out_, expected)
    out, _ = _torch_out(pipe, c.X)
    np.testing.assert_allclose(out, H, atol=1e-5)
