"""One ONNX graph = fitted preprocessing + network (+ softmax): onnxruntime equals the Python pipeline
(``genexflow.training.predict``) within 1e-4 on real samples, for ComBat with and without covariates,
counts and log-expression, classification and regression."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genexflow import datasets
from genexflow.errors import InputError
from genexflow.export import export_bundle, load_artifact, run_onnx
from genexflow.serving.inputs import build_inputs
from genexflow.simulate import simulate_cohort
from genexflow.training.config import MODEL_PRESETS, TrainConfig
from genexflow.training.model import TrainedModel, predict


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=1, lr=1e-3, batch_size=16, num_threads=1, model=MODEL_PRESETS["tiny"]),
                          **kw})


def _onnx_vs_python(bundle, out, cohort, outputs=("probabilities",)):
    art = export_bundle(bundle, out)
    ref = predict(bundle, cohort)
    feeds, missing = build_inputs(art.info, cohort.frame(), cohort.samples, [i.name for i in art.inputs])
    got = run_onnx(art.onnx_path, feeds)
    if art.info.task == "classification":
        diff = np.abs(got["probabilities"] - ref[art.info.class_names].to_numpy()).max()
    else:
        diff = np.abs(got["prediction"][:, 0] - ref["prediction"].to_numpy()).max()
    return art, diff, missing


@pytest.fixture(scope="module")
def bladder_bundle(tmp_path_factory):
    """Real arrays (bladderbatch, 5 batches, RMA log2): mean-fill -> ComBat(batch) -> scale -> PathwayNet."""
    import torch

    torch.set_num_threads(1)
    c = datasets.load("bladderbatch")
    folder = tmp_path_factory.mktemp("bb") / "bundle"
    TrainedModel.fit(c, _cfg(label="cancer", batch_column="batch")).save(folder)
    return folder, c


def test_real_samples_onnx_equals_python_pipeline(bladder_bundle, tmp_path):
    bundle, c = bladder_bundle
    art, diff, missing = _onnx_vs_python(bundle, tmp_path / "art", c)
    assert missing == []
    assert diff <= 1e-4, diff
    assert [i.name for i in art.inputs] == ["expression", "batch_index"]  # no covariates in this model
    assert art.inputs[0].shape == [-1, len(art.info.input_genes)]
    # Triton needs every non-batch dimension fixed (the crosstalk term once lost K in a reshape).
    assert art.outputs[0].shape == [-1, len(art.info.class_names)]
    side = json.loads(art.sidecar_path.read_text())
    assert side["bundle"]["batch_levels"] == sorted(map(str, c.samples["batch"].unique()))
    assert "combat" in side["preprocessing"]["pipeline"]
    # new samples: shuffled gene columns, some genes absent (NaN, filled as training does), an unseen batch
    sub = c.subset(samples=list(range(12)))
    frame = sub.frame()
    frame = frame[frame.columns[::-1]].drop(columns=list(art.info.input_genes[:40]))
    samples = sub.samples.copy()
    samples["batch"] = samples["batch"].astype(str)
    samples.iloc[:3, samples.columns.get_loc("batch")] = "batch-from-elsewhere"
    feeds, missing = build_inputs(art.info, frame, samples, ["expression", "batch_index"])
    assert len(missing) == 40 and (feeds["batch_index"][:3] == -1).all()
    got = run_onnx(art.onnx_path, feeds)["probabilities"]
    from genexflow.cohort import Cohort

    # the Python pipeline on the same aligned rows sent together says the same, the unseen batch included
    # (3 rows of it: estimated from the request, flagged 2)
    aligned = Cohort(feeds["expression"], art.info.input_genes, samples, c.value_type)
    ref = predict(bundle, aligned)
    assert np.abs(got - ref[art.info.class_names].to_numpy()).max() <= 1e-4
    status = run_onnx(art.onnx_path, feeds)["batch_status"]
    assert status.tolist() == [2] * 3 + [1] * 9
    assert ref["batch_correction"].iloc[0] == "estimated (unseen batch)"
    # batch size 1 (dynamic axis): a training-batch row is independent of its request; one row of an unseen
    # batch is too few to estimate it, so it is served uncorrected and flagged 0
    one = run_onnx(art.onnx_path, {k: v[3:4] for k, v in feeds.items()})
    assert np.abs(one["probabilities"] - got[3:4]).max() <= 1e-5 and one["batch_status"].tolist() == [1]
    assert run_onnx(art.onnx_path, {k: v[:1] for k, v in feeds.items()})["batch_status"].tolist() == [0]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_counts_with_covariates_in_model_and_combat(task, tmp_path):
    import torch

    torch.set_num_threads(1)
    c, _ = simulate_cohort(n_samples=60, n_genes=150, n_pathways=8, seed=3)
    label = "label" if task == "classification" else "target"
    cfg = _cfg(task=task, label=label, batch_column="batch", covariates=["age", "sex"])
    TrainedModel.fit(c, cfg).save(tmp_path / "bundle")
    art, diff, _ = _onnx_vs_python(tmp_path / "bundle", tmp_path / "art", c)
    assert diff <= 1e-4, diff
    assert [i.name for i in art.inputs] == ["expression", "covariates", "batch_index"]
    assert art.preprocessing["combat_covariates"] is True
    assert art.outputs[0].name == ("probabilities" if task == "classification" else "prediction")
    assert load_artifact(tmp_path / "art").sha256 == art.sha256


def test_latent_output_and_bad_bundle(bladder_bundle, tmp_path):
    bundle, c = bladder_bundle
    from genexflow.export import export_bundle as eb

    art = eb(bundle, tmp_path / "lat", include_latent=True)
    assert [o.name for o in art.outputs] == ["probabilities", "latent", "batch_status"]
    feeds, _ = build_inputs(art.info, c.frame().iloc[:5], c.samples.iloc[:5], [i.name for i in art.inputs])
    out = run_onnx(art.onnx_path, feeds)
    assert out["latent"].shape[0] == 5 and np.isfinite(out["latent"]).all()
    with pytest.raises(InputError, match="not a genexflow model bundle"):
        eb(tmp_path / "nothing")
