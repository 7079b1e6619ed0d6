"""Serving components: export one ONNX graph, validate it in a real Triton, deploy, score one shard."""

# no `from __future__ import annotations`: KFP reads the real annotation objects
from typing import NamedTuple

from genexflow.components._base import component
from kfp.dsl import Dataset, Input, Metrics, Model, Output


@component
def export_onnx(bundle: Input[Model], onnx: Output[Model]) -> str:
    """Export preprocessing + model as one ONNX graph with its sidecar; returns the ONNX sha256."""
    from genexflow.export import export_bundle

    art = export_bundle(bundle.path, onnx.path)
    onnx.metadata.update({"sha256": art.sha256, "format": "onnx"})
    return art.sha256


@component
def infra_validate(onnx: Input[Model], model_name: str, report: Output[Metrics]) -> bool:
    """Load the exported model in a real Triton server, send requests, compare with onnxruntime."""
    raise NotImplementedError("wired when genexflow.serving.infra_validate lands")


@component
def deploy(
    onnx: Input[Model],
    repository: str,
    model_name: str,
    registry_version: str,
    triton_url: str = "",
) -> NamedTuple("DeployOutputs", [("triton_version", int), ("path", str)]):
    """Add the model as a new version of a Triton model repository (and load it when a server is given)."""
    from genexflow.serving.repository import deploy as deploy_model

    res = deploy_model(onnx.path, repository, name=model_name, url=triton_url or None,
                       registry={"version": registry_version})
    return (res.triton_version, str(res.path))


@component
def batch_infer(
    shards: Input[Dataset],
    shard: dict,
    triton_url: str,
    model_name: str,
    predictions: Output[Dataset],
) -> int:
    """Score one shard through Triton; returns the number of rows scored."""
    raise NotImplementedError("wired when genexflow.serving.batch lands")
