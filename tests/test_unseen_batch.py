"""Served = evaluated for batches unseen in training.

One rule (``docs/preprocessing.md``, unseen batches): rows of a new batch are ComBat-corrected with
parameters estimated from the rows sent together when there are at least ``unseen_min_samples`` of them,
and otherwise pass through uncorrected, flagged in ``batch_status``. The pipeline's numpy ``transform``,
the exported ONNX graph and leave-one-batch-out cross-validation must therefore agree on unseen-batch rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from genexflow.bundle import batch_codes
from genexflow.cohort import Cohort
from genexflow.preprocessing.pipeline import PreprocessingConfig, PreprocessingPipeline
from genexflow.simulate import simulate_cohort
from genexflow.training.config import MODEL_PRESETS, TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort():
    # 4 batches with strong location/scale effects; age as a ComBat covariate
    c, _ = simulate_cohort(n_samples=64, n_genes=150, n_pathways=8, n_informative=3, n_classes=2, n_batches=4,
                           batch_location=1.0, batch_scale=0.4, seed=3)
    return c


def _split(c: Cohort, held: list[str]):
    b = c.samples["batch"].astype(str)
    return c.subset(np.flatnonzero(~b.isin(held).to_numpy())), c.subset(np.flatnonzero(b.isin(held).to_numpy()))


def test_batch_codes_number_unseen_batches():
    codes = batch_codes(["b", "x", "a", "y", "x", "b"], ["a", "b"])
    np.testing.assert_array_equal(codes, [1, -1, 0, -2, -1, 1])


@pytest.mark.parametrize("mean_only", [False, True])
def test_pipeline_numpy_and_torch_agree_on_unseen_batches(cohort, mean_only):
    batches = sorted(cohort.samples["batch"].astype(str).unique())
    train, new = _split(cohort, batches[-2:])
    cfg = PreprocessingConfig(unseen_batch="estimate", unseen_min_samples=3, combat_mean_only=mean_only)
    pipe = PreprocessingPipeline(cfg).fit(train, batch_column="batch", covariates=["age"])
    # a request: training-batch rows, all rows of one new batch, two rows of the other new batch
    b = new.samples["batch"].astype(str).to_numpy()
    big = np.flatnonzero(b == batches[-2])
    small = np.flatnonzero(b == batches[-1])[:2]
    req = _concat(train.subset(np.arange(4)), new.subset(np.concatenate([big, small])))
    H = pipe.transform(req)
    status = pipe.batch_status(req.samples["batch"])
    np.testing.assert_array_equal(status, [1] * 4 + [2] * len(big) + [0] * 2)
    bi = pipe.batch_index(req.samples["batch"], unseen="code")
    cov = pipe.covariate_design(req.samples[["age"]], req.n_samples)
    mod = pipe.to_torch()
    with torch.no_grad():
        T = mod(torch.as_tensor(req.X), torch.as_tensor(bi), torch.as_tensor(cov)).numpy()
        st = mod.batch_status(torch.as_tensor(bi)).numpy()
    np.testing.assert_array_equal(st, status)
    assert np.abs(T - H).max() < 1e-5
    # the estimated batch really was corrected (not the identity), the small one was not
    raw = PreprocessingPipeline(PreprocessingConfig(unseen_batch="estimate", unseen_min_samples=0,
                                                    combat_mean_only=mean_only)
                                ).fit(train, batch_column="batch", covariates=["age"]).transform(req)
    est_rows, small_rows = slice(4, 4 + len(big)), slice(4 + len(big), None)
    assert np.abs(H[est_rows] - raw[est_rows]).mean() > 0.1
    np.testing.assert_allclose(H[small_rows], raw[small_rows], atol=1e-10)
    # estimated from the request: the new batch's corrected mean is near the training batches'
    assert abs(H[est_rows].mean()) < abs(raw[est_rows].mean())


def _concat(a: Cohort, b: Cohort) -> Cohort:
    X = np.vstack([a.X, b.X])
    samples = pd.concat([a.samples, b.samples])
    return Cohort(X, a.genes, samples, a.value_type, a.name)


def _cfg(**kw):
    base = dict(epochs=3, lr=1e-3, batch_size=16, num_threads=1, model=MODEL_PRESETS["tiny"], label="label",
                batch_column="batch", covariates=["age"])
    return TrainConfig(**{**base, **kw})


def test_leave_one_batch_out_scores_what_the_served_graph_returns(cohort, tmp_path):
    """Each LOBO fold's out-of-fold probabilities equal the fold model's exported ONNX graph on the
    held-out batch sent as one request (within 1e-5), and the graph flags the batch as estimated."""
    from genexflow.export import export_bundle, run_onnx
    from genexflow.serving.inputs import build_inputs
    from genexflow.training.cv import DEEP, cross_validate

    sub = cohort.subset(np.flatnonzero(cohort.samples["batch"].astype(str).isin(
        sorted(cohort.samples["batch"].astype(str).unique())[:3]).to_numpy()))
    res = cross_validate(sub, _cfg(), split="lobo", baselines=[], keep_models=True)
    assert len(res.fold_models) == 3
    p = res.predictions[res.predictions["model"] == DEEP]
    worst = 0.0
    for name, model in res.fold_models.items():
        rows = p[p["split"] == name]
        held = sub.subset(np.flatnonzero(sub.sample_ids.isin(rows["sample_id"])))
        art = export_bundle(model.save(tmp_path / name / "bundle"), tmp_path / name / "onnx")
        assert [o.name for o in art.outputs] == ["probabilities", "batch_status"]
        feeds, _ = build_inputs(art.info, held.frame(), held.samples, [i.name for i in art.inputs])
        assert (feeds["batch_index"] == -1).all()  # one batch unseen by this fold's model
        out = run_onnx(art.onnx_path, feeds)
        assert (out["batch_status"] == 2).all()
        oof = rows.set_index("sample_id").loc[held.sample_ids, [f"proba_{c}" for c in res.class_names]].to_numpy()
        worst = max(worst, float(np.abs(out["probabilities"] - oof).max()))
        # and Python predict of the same model says the same, with the same flag
        pred = model.predict(held)
        assert float(np.abs(pred[res.class_names].to_numpy() - out["probabilities"]).max()) < 1e-5
        assert set(pred["batch_correction"]) == {"estimated (unseen batch)"}
    assert worst < 1e-5, worst
