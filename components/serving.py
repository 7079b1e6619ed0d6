"""Serving components: export one ONNX graph, validate it in a real Triton, deploy, score one shard."""

# no `from __future__ import annotations`: KFP reads the real annotation objects
# lazy: each component imports inside its body, because KFP ships the function body alone to the container
from typing import NamedTuple

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from genexflow.components._base import component


@component
def export_onnx(bundle: Input[Model], onnx: Output[Model]) -> str:
    """Export preprocessing + model as one ONNX graph with its sidecar; returns the ONNX sha256."""
    from genexflow.export import export_bundle

    art = export_bundle(bundle.path, onnx.path)
    onnx.metadata.update({"sha256": art.sha256, "format": "onnx"})
    return art.sha256


@component
def infra_validate(
    model_name: str,
    version: str,
    heldout: Input[Dataset],
    report: Output[Metrics],
    mlflow_tracking_uri: str = "",
    triton_url: str = "",
    triton_repository: str = "",
) -> bool:
    """Load the registered version in a real Triton (a local one is started when no server is given), send
    canary requests over HTTP and gRPC, compare with onnxruntime; records ``infra.*`` tags. Fails the step
    (and so blocks promotion) when the model does not pass."""
    from genexflow.cohort import Cohort
    from genexflow.components._steps import log_metrics
    from genexflow.errors import ValidationError
    from genexflow.serving.infra_validate import validate_registered
    from genexflow.serving.registry import Registry

    server = {"url": triton_url, "repository": triton_repository} if triton_url else {}
    res = validate_registered(Registry(mlflow_tracking_uri or None), model_name, version,
                              cohort=Cohort.read(heldout.path), **server)
    log_metrics(report, {"passed": res.passed, "max_abs_diff": res.max_abs_diff, "n_requests": res.n_requests,
                         "n_rows": res.n_rows, "load_seconds": res.load_seconds})
    if not res.passed:
        raise ValidationError(f"infra validation of {model_name} v{version} failed: {res.reason}")
    return res.passed


@component
def deploy(
    onnx: Input[Model],
    model_name: str,
    version: str,
    repository: str,
    serving_name: str = "genexflow_classifier",
    triton_url: str = "",
    mlflow_tracking_uri: str = "",
) -> NamedTuple("DeployOutputs", [("triton_version", int), ("path", str), ("loaded", bool)]):
    """Add the registered version (its sha256 checked against the registry) as a new version of a Triton
    model repository; with ``triton_url`` load it in the running server."""
    from genexflow.serving.registry import Registry

    res = Registry(mlflow_tracking_uri or None).deploy(model_name, version, repository, url=triton_url or None,
                                                       model_name=serving_name, artifact_dir=onnx.path)
    return (res.triton_version, str(res.path), res.loaded)


@component
def batch_infer(
    shards: Input[Dataset],
    shard: dict,
    triton_url: str,
    predictions: Output[Dataset],
    serving_name: str = "genexflow_classifier",
    concurrency: int = 2,
) -> int:
    """Score one shard through Triton (streamed chunks, concurrent requests); returns the rows scored."""
    from pathlib import Path

    from genexflow.components._steps import PREDICTIONS, shard_path
    from genexflow.serving.batch import TritonRunner, score_cohort

    Path(predictions.path).mkdir(parents=True, exist_ok=True)
    res = score_cohort(shard_path(shards.path, shard), Path(predictions.path) / PREDICTIONS,
                       TritonRunner(triton_url, serving_name), concurrency=concurrency)
    return int(res.n_rows)
