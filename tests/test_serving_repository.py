"""Triton model repository: config.pbtxt generation parsed with tritonclient's model_config_pb2, versioned
deploys with sha256 checks, the serving artifact (ONNX + sidecar) and request building."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from genexflow.errors import InputError
from genexflow.export import load_artifact, onnx_io, run_onnx, sha256_file
from genexflow.serving.inputs import build_inputs, output_frame
from genexflow.serving.repository import (
    ModelRepository,
    TritonConfig,
    build_config,
    check_config,
    decode_sidecar,
    parse_config,
    render_config,
)
from genexflow.serving.toy import make_toy_artifact, toy_cohort, toy_module


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return make_toy_artifact(tmp_path_factory.mktemp("toy") / "a", n_genes=40)


def test_export_matches_torch_and_has_dynamic_batch(art):
    import torch

    inputs, outputs, opset = onnx_io(art.onnx_path)
    assert [(i.name, i.dtype, i.shape) for i in inputs] == [
        ("expression", "float32", [-1, 40]), ("covariates", "float32", [-1, 3]), ("batch_index", "int64", [-1])]
    assert [(o.name, o.shape) for o in outputs] == [("probabilities", [-1, 3])]
    co = toy_cohort(art.info, 37, seed=3)
    feeds, _ = build_inputs(art.info, co.frame(), co.samples, [i.name for i in inputs])
    got = run_onnx(art.onnx_path, feeds)["probabilities"]
    with torch.no_grad():
        ref = toy_module(art.info)(*(torch.from_numpy(feeds[k]) for k in ("expression", "covariates",
                                                                          "batch_index"))).numpy()
    assert np.abs(got - ref).max() < 1e-6
    assert np.allclose(got.sum(1), 1, atol=1e-5)


def test_sidecar_round_trip_and_tamper_detection(art, tmp_path):
    side = json.loads(art.sidecar_path.read_text())
    assert side["bundle"]["input_genes"] == art.info.input_genes
    assert side["bundle"]["covariates"][1]["categories"] == ["F", "M"]
    assert side["onnx"]["sha256"] == sha256_file(art.onnx_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.onnx").write_bytes(art.onnx_path.read_bytes() + b"\0")
    (copy / "model.json").write_text(art.sidecar_path.read_text())
    with pytest.raises(InputError, match="sha256"):
        load_artifact(copy)


@pytest.mark.parametrize("target", ["local", "gpu"])
def test_config_parses_with_model_config_pb2(art, target):
    cfg = TritonConfig(max_batch_size=128, preferred_batch_sizes=[8, 32], max_queue_delay_us=200,
                       instance_count=2, tensorrt_fp16=target == "gpu", gpus=[0] if target == "gpu" else [])
    text = render_config(build_config(art, "m", target, cfg, {"1": {"version": 3}}, {1: art.sidecar_path.read_text()}))
    m = parse_config(text)
    check_config(m, art)
    assert m.max_batch_size == 128
    assert list(m.dynamic_batching.preferred_batch_size) == [8, 32]
    assert m.dynamic_batching.max_queue_delay_microseconds == 200
    assert m.version_policy.latest.num_versions == 1
    assert [(t.name, mc.DataType.Name(t.data_type), list(t.dims)) for t in m.input] == [
        ("expression", "TYPE_FP32", [40]), ("covariates", "TYPE_FP32", [3]), ("batch_index", "TYPE_INT64", [1])]
    assert m.input[2].HasField("reshape") and list(m.input[2].reshape.shape) == []
    group = m.instance_group[0]
    if target == "gpu":
        assert m.platform == "onnxruntime_onnx" and not m.backend
        assert group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == [0]
        acc = m.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    else:
        assert m.backend == "python" and group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 2
        assert m.parameters["n_batch_levels"].string_value == "2"
    side = decode_sidecar(m.parameters["genexflow_sidecar_1"].string_value)
    assert side["bundle"]["input_genes"] == art.info.input_genes


def test_config_errors(art):
    with pytest.raises(InputError, match="max_batch_sise"):
        parse_config("name: 'm'\nmax_batch_sise: 4\n")
    with pytest.raises(InputError, match="KIND_TPU"):
        parse_config("instance_group [{ kind: KIND_TPU }]")
    with pytest.raises(InputError, match="preferred"):
        build_config(art, config=TritonConfig(max_batch_size=8, preferred_batch_sizes=[16]))
    m = build_config(art)
    m.input[0].dims[0] = 41
    with pytest.raises(InputError, match="expression"):
        check_config(m, art)
    m = build_config(art, target="gpu")
    m.instance_group[0].kind = mc.ModelInstanceGroup.KIND_CPU
    with pytest.raises(InputError, match="KIND_GPU"):
        check_config(m, art)


def test_versions_sha_checks_and_pruning(art, tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    for k in range(4):
        v, path = repo.add_version(art, "m", registry={"version": k + 1}, keep=3)
        assert v == k + 1 and (path / "model.py").exists() and (path / "model.json").exists()
    assert repo.versions("m") == [2, 3, 4]
    assert sorted(repo.version_map("m")) == [2, 3, 4] and repo.version_map("m")[4]["version"] == 4
    check_config(parse_config((tmp_path / "repo" / "m" / "config.pbtxt").read_text()), art)
    with pytest.raises(InputError, match="registry"):
        repo.add_version(art, "m", expected_sha256="0" * 64)
    other = make_toy_artifact(tmp_path / "other", n_genes=41)
    with pytest.raises(InputError, match="does not fit"):
        repo.add_version(other, "m")
    assert repo.versions("m") == [2, 3, 4]
    assert not list((tmp_path / "repo" / "m").glob(".staging-*"))


def test_build_inputs_aligns_genes_and_reports_problems(art):
    co = toy_cohort(art.info, 6)
    frame = co.frame()
    shuffled = frame[frame.columns[::-1]].copy()
    shuffled["EXTRA"] = 1.0
    a, missing = build_inputs(art.info, frame, co.samples, ["expression", "covariates", "batch_index"])
    b, _ = build_inputs(art.info, shuffled, co.samples, ["expression", "covariates", "batch_index"])
    assert missing == [] and np.array_equal(a["expression"], b["expression"])
    dropped = frame.drop(columns=frame.columns[:3])
    c, missing = build_inputs(art.info, dropped, co.samples, ["expression"])
    assert missing == list(frame.columns[:3]) and np.isnan(c["expression"][:, :3]).all()
    with pytest.raises(InputError, match="model genes are absent"):
        build_inputs(art.info, frame.iloc[:, :10], co.samples, ["expression"])
    with pytest.raises(InputError, match="sample sheet"):
        build_inputs(art.info, frame, None, ["expression", "covariates"])
    bad = frame.copy()
    bad.iloc[0, 0] = -5
    with pytest.raises(InputError, match="negative"):
        build_inputs(art.info, bad, co.samples, ["expression"])
    samples = co.samples.copy()
    samples["batch"] = ["b0", "b1", "new", "b0", "b1", "b0"]
    d, _ = build_inputs(art.info, frame, samples, ["expression", "batch_index"])
    assert d["batch_index"].tolist() == [0, 1, -1, 0, 1, 0]
    out = output_frame(art.info, {"probabilities": np.eye(3, dtype=np.float32)[[0, 2]]}, pd.Index(["x", "y"]))
    assert out["prediction"].tolist() == ["class_0", "class_2"]
