"""Registry against a real MLflow tracking server process: register, gate, promote, rollback, deploy checks."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from _serving_servers import mlflow_server, prestart_mlflow

from genexflow.errors import InputError
from genexflow.metrics import evaluate_labels
from genexflow.serving.registry import CHALLENGER, CHAMPION, GatePolicy, Registry
from genexflow.serving.repository import ModelRepository
from genexflow.serving.toy import make_toy_artifact, toy_cohort

prestart_mlflow()  # its first start migrates a sqlite DB; let that overlap collection and other tests


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(mlflow_server().url)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("arts")
    a = make_toy_artifact(root / "a", seed=0)
    b = make_toy_artifact(root / "b", seed=5)
    return a, b


@pytest.fixture(scope="module")
def heldout(artifacts):
    """Held-out cohort labelled by model A's own argmax: A is perfect on it, B is not."""
    from genexflow.export import run_onnx
    from genexflow.serving.inputs import build_inputs

    a = artifacts[0]
    co = toy_cohort(a.info, 120, seed=11)
    feeds, _ = build_inputs(a.info, co.frame(), co.samples, [i.name for i in a.inputs])
    p = run_onnx(a.onnx_path, feeds)["probabilities"]
    co.samples["label"] = np.asarray(a.info.class_names)[p.argmax(1)]
    return co


def test_register_records_sha_signature_and_challenger(registry, artifacts, tmp_path):
    name = f"m-{uuid.uuid4().hex[:6]}"
    a, _ = artifacts
    v = registry.register(a, name, metrics={"balanced_accuracy": 0.9},
                          baselines={"logreg": {"balanced_accuracy": 0.5}}, lineage={"data": "toy"})
    assert v.aliases == [CHALLENGER]
    assert v.sha256 == a.sha256
    assert json.loads(v.tags["lineage"]) == {"data": "toy"}
    # the MLflow model carries the tensor signature and the contract metadata
    from mlflow.models import Model

    art, got = registry.download(name, CHALLENGER, tmp_path / "dl")
    mlmodel = Model.load(str(art.folder / "MLmodel"))
    sig = mlmodel.signature.to_dict()
    assert "expression" in sig["inputs"] and "batch_index" in sig["inputs"]
    assert mlmodel.metadata["genexflow"]["class_names"] == a.info.class_names
    assert art.info.input_genes == a.info.input_genes
    # a tampered download is refused
    with open(art.onnx_path, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(InputError, match="sha256"):
        Registry.verify(got, art)


def test_gate_promote_rollback_cycle(registry, artifacts, heldout, tmp_path):
    name = f"m-{uuid.uuid4().hex[:6]}"
    a, b = artifacts
    v1 = registry.register(a, name, baselines={"logreg": {"balanced_accuracy": 0.4}})
    # promotion without gate / infra validation is refused
    with pytest.raises(InputError, match="gate"):
        registry.promote(name)
    d1 = registry.gate(name, heldout)
    assert d1.passed and d1.champion_version is None
    assert d1.metrics["challenger"]["balanced_accuracy"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="infra"):
        registry.promote(name)
    registry.record_infra(name, v1.version, True, "ok", {"max_abs_diff": 0.0})
    registry.promote(name)
    assert registry.alias_version(name, CHAMPION) == v1.version
    assert registry.alias_version(name, CHALLENGER) is None

    # a worse challenger fails the gate (recorded), and cannot be promoted
    v2 = registry.register(b, name)
    d2 = registry.gate(name, heldout, policy=GatePolicy(margin=0.0))
    assert not d2.passed and "champion" in d2.reason
    tags = registry.get(name, v2.version).tags
    assert tags["gate.decision"] == "fail"
    assert json.loads(tags["gate.metrics"])["champion"]["balanced_accuracy"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="refusing to promote"):
        registry.promote(name, v2.version)
    # with a tolerance margin it passes; promote records the previous champion, rollback re-points it
    d3 = registry.gate(name, heldout, challenger=v2.version, policy=GatePolicy(margin=-1.0))
    assert d3.passed
    registry.record_infra(name, v2.version, True, "ok", {})
    registry.promote(name, v2.version, reason="test")
    assert registry.alias_version(name, CHAMPION) == v2.version
    assert registry.get(name, v2.version).tags["promotion.previous_champion"] == str(v1.version)
    restored = registry.rollback(name, reason="regression in prod")
    assert restored.version == v1.version
    assert registry.alias_version(name, CHAMPION) == v1.version
    assert registry.get(name, v2.version).tags["rollback.reason"] == "regression in prod"
    events = [e["event"] for e in registry.history(name)]
    assert events == ["gate", "infra-validate", "promote", "gate", "gate", "infra-validate", "promote", "rollback"]
    # baselines: a challenger that does not beat the best baseline fails
    d4 = registry.gate(name, heldout, challenger=v2.version, policy=GatePolicy(margin=-1.0),
                       baselines={"xgb": {"balanced_accuracy": 0.999}})
    assert not d4.passed and "baseline xgb" in d4.reason


def test_deploy_refuses_artifact_that_differs_from_registry(registry, artifacts, tmp_path):
    name = f"m-{uuid.uuid4().hex[:6]}"
    a, b = artifacts
    registry.register(a, name)
    repo = tmp_path / "repo"
    res = registry.deploy(name, CHALLENGER, repo)
    assert res.triton_version == 1 and (res.path / "model.onnx").exists()
    assert ModelRepository(repo).version_map()[1]["version"] == 1
    # another model's (valid) artifact presented as this version is refused
    with pytest.raises(InputError, match="sha256"):
        registry.deploy(name, CHALLENGER, repo, artifact_dir=b.folder)
    assert ModelRepository(repo).versions() == [1]
    # the production layout for a GPU Triton: onnxruntime_onnx platform, KIND_GPU, no python model
    gpu = registry.deploy(name, CHALLENGER, tmp_path / "gpu", target="gpu")
    from genexflow.serving.repository import parse_config

    cfg = parse_config((gpu.path.parent / "config.pbtxt").read_text())
    assert cfg.platform == "onnxruntime_onnx" and cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert not (gpu.path / "model.py").exists() and (gpu.path / "model.onnx").exists()


def test_gate_metrics_regression_and_unknown_labels():
    """The gate scores with genexflow.metrics (the same numbers CV reports)."""
    m = evaluate_labels("regression", np.array([1.0, 2.0, 3.0]), np.array([[1.0], [2.0], [4.0]]))
    assert m["rmse"] == pytest.approx(np.sqrt(1 / 3)) and m["mae"] == pytest.approx(1 / 3)
    with pytest.raises(InputError, match="not among"):
        evaluate_labels("classification", np.array(["x"]), np.array([[0.5, 0.5]]), ["a", "b"])


def test_gate_decides_baselines_on_the_out_of_fold_estimate(registry, artifacts, heldout):
    """With training's stable estimate (tag ``oof``: the challenger paired with the best baseline on pooled
    out-of-fold rows, a bootstrap CI of the difference) the gate uses it instead of single held-out
    numbers: a CI wholly below the margin fails, one that reaches it passes."""
    name = f"m-{uuid.uuid4().hex[:6]}"
    a, _ = artifacts
    v = registry.register(a, name, baselines={"logreg": {"balanced_accuracy": 0.999}})  # held-out would fail
    worse = {"metric": "balanced_accuracy", "vs_best_baseline": {
        "baseline": "logreg_l2", "a": 0.70, "b": 0.85, "difference": -0.15, "ci_low": -0.22, "ci_high": -0.08,
        "n": 150}}
    registry.tag(name, v.version, {"oof": worse})
    d = registry.gate(name, heldout)
    assert not d.passed and "out-of-fold balanced_accuracy vs best baseline logreg_l2" in d.reason
    assert "credibly below" in d.reason and d.metrics["oof_vs_best_baseline"]["ci_high"] == -0.08
    tie = {**worse, "vs_best_baseline": {**worse["vs_best_baseline"], "difference": -0.01, "ci_low": -0.06,
                                         "ci_high": 0.04}}
    registry.tag(name, v.version, {"oof": tie})
    assert registry.gate(name, heldout).passed
    # a margin the interval cannot reach fails again
    assert not registry.gate(name, heldout, policy=GatePolicy(baseline_margin=0.05)).passed
