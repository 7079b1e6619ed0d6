"""Harmony estimator: integration on simulated batches, the frozen map, the torch/ONNX op, the
batch-label confounding diagnostic."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import silhouette_score

from genexflow.errors import InputError, NotFittedError
from genexflow.preprocessing.confounding import batch_label_association
from genexflow.preprocessing.harmony import Harmony, HarmonyOp, run_harmony


def cohort(n=240, genes=120, n_batch=3, n_type=3, batch_sd=2.0, seed=0):
    """Cell types on a 10-dim program, batch shifts in the same subspace, noise in gene space."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, n_type, n)
    b = rng.integers(0, n_batch, n)
    V = np.linalg.qr(rng.normal(size=(genes, 10)))[0].T
    Z = rng.normal(0, 3, (n_type, 10))[t] + rng.normal(0, batch_sd, (n_batch, 10))[b] + rng.normal(0, 0.7, (n, 10))
    X = 8 + Z @ V + rng.normal(0, 0.2, (n, genes))
    return X, np.array([f"b{i}" for i in b]), t


def test_harmony_removes_batch_keeps_types():
    X, b, t = cohort()
    est = Harmony(n_components=10)
    Xc = est.fit_transform(X, batch=b)
    assert Xc.shape == X.shape
    Z0 = (X - est.mean_) @ est.components_.T
    Z1 = (Xc - est.mean_) @ est.components_.T
    assert silhouette_score(Z0, b) > 0.1
    assert abs(silhouette_score(Z1, b)) < 0.05  # batches mixed
    assert silhouette_score(Z1, t) > silhouette_score(Z0, t) + 0.1  # types sharper than before
    # the residual outside the PCA subspace is untouched
    P = est.components_.T @ est.components_
    np.testing.assert_allclose((Xc - X) @ (np.eye(X.shape[1]) - P), 0, atol=1e-9)


def test_frozen_map_reproduces_training_embedding_and_new_rows_alone():
    X, b, _ = cohort(seed=1)
    tr = np.arange(len(b)) % 4 != 0
    est = Harmony(n_components=10).fit(X[tr], batch=b[tr])
    Z = (X[tr] - est.mean_) @ est.components_.T
    mapped = est.map_embedding(Z, est.level_index(b[tr], None, int(tr.sum())))
    # the frozen map of the training rows is Harmony's own corrected embedding
    assert np.corrcoef(mapped.ravel(), est.embedding_.ravel())[0, 1] > 0.999
    new = est.transform(X[~tr], batch=b[~tr])
    one = est.transform(X[~tr][:1], batch=b[~tr][:1])
    np.testing.assert_allclose(one, new[:1], rtol=1e-12, atol=1e-12)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.transform(X[~tr], batch=b[~tr]), new)
    np.testing.assert_array_equal(est.fit_transform(X[tr], batch=b[tr]), est.transform(X[tr], batch=b[tr]))


def test_covariates_one_theta_each_and_unseen_levels():
    X, b, t = cohort(seed=2)
    site = pd.DataFrame({"site": np.where(np.arange(len(b)) % 2, "s1", "s2")})
    est = Harmony(n_components=8, theta=[2.0, 1.0]).fit(X, batch=b, covariates=site)
    assert est.variables_ == ["batch", "site"]
    assert est.corrections_.shape[0] == 3 + 2
    with pytest.raises(InputError, match="one per variable"):
        Harmony(theta=[1.0, 2.0, 3.0]).fit(X, batch=b, covariates=site)
    with pytest.raises(InputError, match="not seen in fit"):
        est.transform(X[:2], batch=["new", "b0"], covariates=site[:2])
    loose = clone(est).set_params(unseen_batch="ignore").fit(X, batch=b, covariates=site)
    out = loose.transform(X[:2], batch=["new", "b0"], covariates=site[:2])
    idx = loose.level_index(["new", "b0"], site[:2], 2)
    assert idx[0, 0] == -1 and idx[1, 0] == 0
    assert np.isfinite(out).all()
    with pytest.raises(NotFittedError):
        Harmony().transform(X, batch=b)
    with pytest.raises(InputError, match="two batches"):
        Harmony().fit(X, batch=np.repeat("a", len(b)))


def test_run_harmony_converges_and_records_objective():
    X, b, _ = cohort(seed=3)
    codes = np.unique(b, return_inverse=True)[1][:, None]
    res = run_harmony(X[:, :10] - X[:, :10].mean(0), codes, [3], random_state=1)
    assert res.n_iter >= 1 and len(res.objective) == res.n_iter + 1
    assert res.R.shape == (len(b), res.Y.shape[0])
    np.testing.assert_allclose(res.R.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(res.Y, axis=1), 1.0, atol=1e-12)


def test_torch_op_matches_numpy_and_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    X, b, _ = cohort(seed=4)
    tr = np.arange(len(b)) % 3 != 0
    est = Harmony(n_components=10, unseen_batch="ignore").fit(X[tr], batch=b[tr])
    op = HarmonyOp(est).eval()
    labels = b[~tr].copy()
    labels[0] = "unseen"
    idx = est.level_index(labels, None, len(labels))
    want = est.transform(X[~tr], batch=labels)
    got = op(torch.as_tensor(X[~tr]), torch.as_tensor(idx)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-10)
    path = tmp_path / "harmony.onnx"
    torch.onnx.export(op, (torch.as_tensor(X[:2]), torch.as_tensor(idx[:2])), str(path),
                      input_names=["x", "level_index"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "level_index": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": X[~tr], "level_index": idx})[0]
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_batch_label_association_categorical_and_regression():
    rng = np.random.default_rng(0)
    b = np.repeat(["1", "2", "3"], 30)
    balanced = np.tile(["x", "y", "z"], 30)
    r = batch_label_association(b, balanced)
    assert r.kind == "categorical" and r.effect_size < 0.1 and not r.confounded
    assert not r.message().startswith("WARNING")
    confounded = np.where(rng.random(90) < 0.85, np.repeat(["x", "y", "z"], 30), balanced)
    r = batch_label_association(b, confounded)
    from scipy.stats import chi2_contingency

    tab = pd.crosstab(b, confounded).to_numpy()
    chi2, p, _, _ = chi2_contingency(tab, correction=False)
    assert r.p_value == pytest.approx(p) and r.effect_size == pytest.approx(np.sqrt(chi2 / (90 * 2)))
    assert r.confounded and r.message().startswith("WARNING") and r.alternatives
    d = r.to_dict()
    assert d["effect_name"] == "cramers_v" and d["table"]["1"]
    target = rng.normal(size=90) + np.repeat([0.0, 1.0, 2.0], 30)
    r = batch_label_association(b, target, task="regression")
    from scipy.stats import f_oneway

    assert r.kind == "continuous" and r.p_value == pytest.approx(f_oneway(*target.reshape(3, 30)).pvalue)
    assert r.effect_name == "eta_squared" and 0.3 < r.effect_size < 1 and r.confounded
    assert batch_label_association(b, np.repeat(["x", "y", "z"], 30)).level == "complete"


def test_pipeline_batch_methods():
    from genexflow.preprocessing import ComBatSeq, PreprocessingConfig, PreprocessingPipeline
    from genexflow.simulate import simulate_cohort

    c, _ = simulate_cohort(n_samples=40, n_genes=120, n_pathways=6, seed=8)
    seq = PreprocessingPipeline(PreprocessingConfig(batch_method="combat-seq", unseen_batch="estimate"))
    H = seq.fit_transform(c, batch_column="batch")
    assert isinstance(seq.combat_seq_, ComBatSeq) and seq.needs_batch and seq.combat_ is None
    np.testing.assert_allclose(seq.transform(c), H, atol=1e-8)  # frozen ComBat-seq + the rest
    with pytest.raises(InputError, match="ONNX"):
        seq.to_torch()
    moved = c.samples["batch"].astype(str).to_numpy().copy()
    moved[:5] = "new-site"  # an unseen batch stays uncorrected; the other rows are unchanged
    out = seq.transform(c, batch=moved)
    np.testing.assert_allclose(out[5:], H[5:], atol=1e-8)
    assert np.isfinite(out).all() and not np.allclose(out[:5], H[:5])
    strict = PreprocessingPipeline(PreprocessingConfig(batch_method="combat-seq", unseen_batch="error"))
    with pytest.raises(InputError, match="not seen"):
        strict.fit(c, batch_column="batch").transform(c, batch=moved)
    off = PreprocessingPipeline(PreprocessingConfig(batch_method="none")).fit(c, batch_column="batch")
    assert not off.needs_batch and off.batch_column_ is None
    with pytest.raises(InputError, match="unknown batch_method"):
        PreprocessingPipeline(PreprocessingConfig(batch_method="mnn")).fit(c, batch_column="batch")
    log = c.subset(np.arange(40))
    log.X = np.log2(np.asarray(c.X, float) + 1)
    log.value_type = type(c.value_type)("log-expression")
    with pytest.raises(InputError, match="raw counts"):
        PreprocessingPipeline(PreprocessingConfig(batch_method="combat-seq")).fit(log, batch_column="batch")


def test_simulator_batch_confounding_strength():
    from genexflow.simulate import simulate_cohort

    base, _ = simulate_cohort(n_samples=150, n_genes=100, n_pathways=5, seed=3)
    v = []
    for s in (0.0, 0.5, 1.0):
        c, _ = simulate_cohort(n_samples=150, n_genes=100, n_pathways=5, seed=3, batch_confounding=s)
        v.append(batch_label_association(c.samples["batch"], c.samples["label"]).effect_size)
        assert (c.samples["label"] == base.samples["label"]).all()  # only the batches move
    assert v[0] < 0.2 < v[1] < v[2] and v[2] > 0.99
    with pytest.raises(InputError, match="batch_confounding"):
        simulate_cohort(n_samples=20, n_genes=100, seed=3, batch_confounding=1.5)
