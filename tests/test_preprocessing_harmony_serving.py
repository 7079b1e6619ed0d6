"""Harmony end to end: train (batch_method="harmony", a categorical covariate) -> one ONNX graph ->
onnxruntime and a REAL local tritonserver give the Python pipeline's predictions on new samples; the
CLI's --batch-method and the confounding-driven ``auto`` choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _serving_servers import triton_server

from genexflow.export import export_bundle, run_onnx
from genexflow.serving.client import TritonClient
from genexflow.serving.inputs import build_inputs
from genexflow.serving.repository import deploy
from genexflow.simulate import simulate_cohort
from genexflow.training.config import MODEL_PRESETS, TrainConfig
from genexflow.training.model import TrainedModel, load_bundle, predict


@pytest.fixture(scope="module")
def harmony_artifact(tmp_path_factory):
    torch.set_num_threads(1)
    c, _ = simulate_cohort(n_samples=80, n_genes=150, n_pathways=8, batch_location=0.8, seed=4)
    new = np.arange(len(c.samples)) % 5 == 0  # never seen by training
    train, test = c.subset(~new), c.subset(new)
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=16, num_threads=1, model=MODEL_PRESETS["tiny"], label="label",
                      batch_column="batch", covariates=["sex", "age"],
                      preprocessing={"batch_method": "harmony", "harmony_components": 8})
    root = tmp_path_factory.mktemp("harmony")
    TrainedModel.fit(train, cfg).save(root / "bundle")
    art = export_bundle(root / "bundle", root / "art")
    return root / "bundle", art, test


def test_bundle_uses_harmony_and_onnx_equals_python_on_new_samples(harmony_artifact):
    bundle, art, test = harmony_artifact
    _, pre, _ = load_bundle(bundle)
    assert pre.harmony_ is not None and pre.combat_ is None
    assert pre.harmony_.variables_ == ["batch", "sex"]  # age is numeric: a model covariate only
    assert [i.name for i in art.inputs] == ["expression", "covariates", "batch_index"]
    feeds, missing = build_inputs(art.info, test.frame(), test.samples, [i.name for i in art.inputs])
    assert missing == []
    got = run_onnx(art.onnx_path, feeds)["probabilities"]
    ref = predict(bundle, test)[art.info.class_names].to_numpy()
    assert np.abs(got - ref).max() <= 1e-4
    # the preprocessing alone: the torch graph of the fitted pipeline vs its numpy transform
    module = pre.to_torch()
    x = module(torch.as_tensor(feeds["expression"]), torch.as_tensor(feeds["batch_index"]),
               torch.as_tensor(feeds["covariates"])).numpy()
    np.testing.assert_allclose(x, pre.transform(test), atol=1e-5)


def test_triton_serves_the_harmony_graph(harmony_artifact):
    _, art, test = harmony_artifact
    server, repo = triton_server()
    res = deploy(art, repo, "harmony", server.url)
    assert res.loaded
    feeds, _ = build_inputs(art.info, test.frame(), test.samples, [i.name for i in art.inputs])
    want = run_onnx(art.onnx_path, feeds)["probabilities"]
    with TritonClient(server.url, "harmony") as client:
        df, contract, missing = client.predict(test.frame(), test.samples, max_batch=8)
    assert contract.sha256 == art.sha256 and missing == []
    assert np.abs(df.filter(like="p_").to_numpy() - want).max() <= 1e-6


def test_batch_method_options_and_auto():
    from genexflow.cli._batch import batch_method_overrides
    from genexflow.errors import InputError
    from genexflow.preprocessing.confounding import batch_label_association

    o: dict = {}
    assert batch_method_overrides("harmony", False, o) is True and o["preprocessing"]["batch_method"] == "harmony"
    assert batch_method_overrides("none", False, {}) is False
    assert batch_method_overrides(None, True, {}) is False  # --no-combat alias
    with pytest.raises(InputError, match="contradicts"):
        batch_method_overrides("harmony", True, {})
    with pytest.raises(InputError, match="unknown --batch-method"):
        batch_method_overrides("mnn", False, {})
    b = pd.Series(np.repeat(["1", "2"], 20))
    confounded = batch_label_association(b, np.repeat(["x", "y"], 20))
    balanced = batch_label_association(b, np.tile(["x", "y"], 20))
    assert batch_method_overrides("auto", False, {}, confounded) is False
    assert batch_method_overrides("auto", False, {}, balanced) is None  # ComBat, the configured default
    kept = {"preprocessing": {"batch_method": "harmony"}}
    assert batch_method_overrides(None, False, kept, confounded) is None  # an explicit config wins


def test_cli_train_with_harmony_warns_on_confounding(tmp_path, capsys):
    from genexflow.cli.main import main

    c, _ = simulate_cohort(n_samples=40, n_genes=120, n_pathways=6, seed=6)
    c.samples["batch"] = np.where(c.samples["label"] == c.samples["label"].iloc[0], "b1", "b2")
    c.write(tmp_path / "cohort")
    main(["train", str(tmp_path / "cohort"), "--label", "label", "--batch-column", "batch", "--batch-method",
          "harmony", "--cv", "0", "--epochs", "1", "--preset", "tiny", "--no-tracking", "--explain-samples", "0",
          "--baselines", "none", "--out", str(tmp_path / "bundle"), "--set", "preprocessing.harmony_components=5"])
    err = capsys.readouterr().err
    assert "WARNING batch-label association" in err
    assert load_bundle(tmp_path / "bundle")[1].harmony_ is not None
