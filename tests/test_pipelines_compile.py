"""The three pipelines compile, the compiled IR validates, the checked-in specs are not stale, and the
cluster specs carry the kfp-kubernetes settings (PVC, Secrets as env, GPU, node selector, tolerations)."""

from __future__ import annotations

import pytest
import yaml
from google.protobuf import json_format

from genexflow.components import _base
from genexflow.errors import InputError
from genexflow.pipelines import compile as comp
from genexflow.pipelines.kubernetes import ClusterSettings


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    comp.compile_all(out, base_image=_base.DEFAULT_BASE_IMAGE, gpu_image=_base.DEFAULT_GPU_IMAGE)
    return out


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("name", list(comp.PIPELINES))
@pytest.mark.parametrize("target", comp.TARGETS)
def test_compiles_and_validates(fresh, name, target):
    path = fresh / comp.spec_filename(name, target)
    spec = comp.validate_spec(path)
    assert spec.pipeline_info.name.startswith("genexflow-")
    docs = _docs(path)
    assert (len(docs) == 2) == (target == "cluster")
    images = {ex["container"]["image"] for ex in docs[0]["deploymentSpec"]["executors"].values()}
    expected = {_base.DEFAULT_BASE_IMAGE} | ({_base.DEFAULT_GPU_IMAGE} if target == "cluster" and name != "batch-inference" else set())
    if name == "monitoring" and target == "cluster":
        expected = {_base.DEFAULT_BASE_IMAGE}  # retraining is a separate run there: no training executor
    assert images == expected


def test_checked_in_specs_are_fresh(fresh):
    stale = [f.name for f in sorted(fresh.iterdir())
             if not (comp.compiled_dir() / f.name).exists()
             or (comp.compiled_dir() / f.name).read_text() != f.read_text()]
    assert not stale, f"stale compiled specs {stale}: run `genexflow pipeline compile`"


def test_stale_detection_catches_an_edit(tmp_path, fresh):
    for f in fresh.iterdir():
        (tmp_path / f.name).write_text(f.read_text())
    assert comp.stale_specs(tmp_path) == []
    t = tmp_path / "training.yaml"
    t.write_text(t.read_text().replace("genexflow-training", "genexflow-training-old", 1))
    assert comp.stale_specs(tmp_path) == ["training.yaml"]


def test_training_dag_shape(fresh):
    spec = _docs(fresh / "training.yaml")[0]
    root = spec["root"]["dag"]["tasks"]
    # the exit handler wraps the run; record-outcome fires on ALL_UPSTREAM_TASKS_COMPLETED
    assert set(root) == {"exit-handler-1", "record-outcome"}
    assert root["record-outcome"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    order = ["ingest-validate", "preprocess-fit", "train", "evaluate", "export-onnx", "register", "gate"]
    assert set(order) < set(inner)
    assert "register" in inner["gate"]["dependentTasks"]
    cond = inner["condition-2"]
    assert "gate" in cond["dependentTasks"]
    assert "gate-Output" in cond["triggerPolicy"]["condition"]
    gated = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert set(gated) == {"infra-validate", "promote", "deploy"}
    assert "infra-validate" in gated["promote"]["dependentTasks"]
    assert "promote" in gated["deploy"]["dependentTasks"]
    # caching: deterministic steps cached, side effects never
    assert inner["preprocess-fit"]["cachingOptions"].get("enableCache") is True
    assert inner["export-onnx"]["cachingOptions"].get("enableCache") is True
    for t in ("ingest-validate", "train", "register", "gate"):
        assert not inner[t]["cachingOptions"].get("enableCache"), t


def test_batch_inference_dag_shape(fresh):
    spec = _docs(fresh / "batch-inference.yaml")[0]
    root = spec["root"]["dag"]["tasks"]
    loop = next(t for n, t in root.items() if n.startswith("for-loop"))
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("shard-cohort-Output")
    assert loop["iteratorPolicy"]["parallelismLimit"] == 4
    merge = root["merge-predictions"]
    assert "parts" in merge["inputs"]["artifacts"]


def test_monitoring_nested_vs_client(fresh):
    portable = _docs(fresh / "monitoring.yaml")[0]
    cluster = _docs(fresh / "monitoring.k8s.yaml")[0]
    assert "comp-genexflow-training" in portable["components"]  # nested training pipeline
    assert "comp-trigger-retrain" not in portable["components"]
    assert "comp-trigger-retrain" in cluster["components"]
    assert "comp-genexflow-training" not in cluster["components"]


def test_cluster_platform_settings(fresh):
    platform = _docs(fresh / "training.k8s.yaml")[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    s = ClusterSettings()
    for ex in platform.values():
        assert ex["pvcMount"][0]["mountPath"] == s.data_mount
    train = platform["exec-train"]
    assert train["nodeSelector"]["labels"] == s.gpu_node_selector
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"
    envs = {e["envVar"] for sec in train["secretAsEnv"] for e in sec["keyToEnv"]}
    assert {"MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= envs
    assert "tolerations" in platform["exec-infra-validate"]
    assert "nodeSelector" not in platform["exec-ingest-validate"]
    spec = _docs(fresh / "training.k8s.yaml")[0]
    acc = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"]
    assert acc["resourceType"] == "nvidia.com/gpu" and int(acc["resourceCount"]) == 1


def test_cluster_retrain_trigger_reads_kfp_settings(fresh):
    k8s = _docs(fresh / "monitoring.k8s.yaml")[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    trig = k8s["exec-trigger-retrain"]
    envs = {e["envVar"] for cm in trig["configMapAsEnv"] for e in cm["keyToEnv"]}
    assert "KFP_HOST" in envs and trig["configMapAsEnv"][0]["configMapName"] == "kfp-settings"
    assert "configMapAsEnv" not in k8s["exec-drift-check"]


def test_custom_images_and_settings(tmp_path):
    s = ClusterSettings(data_pvc="cohorts", gpus=2, mlflow_secret="mlf")
    p = comp.compile_pipeline("training", tmp_path / "t.yaml", target="cluster", settings=s,
                              base_image="registry.local/gx:1", gpu_image="registry.local/gx:1-cuda")
    docs = _docs(p)
    execs = docs[0]["deploymentSpec"]["executors"]
    assert execs["exec-train"]["container"]["image"] == "registry.local/gx:1-cuda"
    assert execs["exec-ingest-validate"]["container"]["image"] == "registry.local/gx:1"
    assert execs["exec-train"]["container"]["resources"]["accelerator"]["resourceCount"] == "2"
    k8s = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-train"]["pvcMount"][0]["constant"] == "cohorts"
    assert any(sec["secretName"] == "mlf" for sec in k8s["exec-train"]["secretAsEnv"])


def test_validate_rejects_broken_specs(tmp_path, fresh):
    bad = tmp_path / "bad.yaml"
    spec = _docs(fresh / "training.yaml")[0]
    del spec["deploymentSpec"]["executors"]["exec-train"]
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(InputError, match="no executor"):
        comp.validate_spec(bad)
    bad.write_text(yaml.safe_dump({"pipelineInfo": {"name": "x"}, "notAField": 1}))
    with pytest.raises(json_format.ParseError):
        comp.validate_spec(bad)
    with pytest.raises(InputError, match="no such compiled"):
        comp.validate_spec(tmp_path / "missing.yaml")


def test_unknown_pipeline_or_target():
    with pytest.raises(InputError, match="unknown pipeline"):
        comp.build("nope")
    with pytest.raises(InputError, match="compile target"):
        comp.spec_filename("training", "gke")
