"""Registry components (MLflow): register as challenger, gate against champion and baselines, promote.

The registered version IS the exported serving artifact (ONNX with its sidecar and sha256) plus the
training bundle, so what the gate scores, Triton validates and deploy ships are the same bytes.
"""

# no `from __future__ import annotations`: KFP reads the real annotation objects
# lazy: each component imports inside its body, because KFP ships the function body alone to the container
from typing import NamedTuple

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from genexflow.components._base import component


@component
def register(
    onnx: Input[Model],
    bundle: Input[Model],
    evaluation: Input[Metrics],
    mlflow_run_id: str,
    model_name: str,
    mlflow_tracking_uri: str = "",
) -> NamedTuple("RegisterOutputs", [("version", str), ("sha256", str)]):
    """Register the ONNX artifact (+ bundle) in the training run as a new version, alias ``challenger``."""
    from genexflow.components._steps import split_evaluation
    from genexflow.serving.registry import Registry

    metrics, baselines = split_evaluation(evaluation.metadata)
    v = Registry(mlflow_tracking_uri or None).register(
        onnx.path, model_name, bundle_dir=bundle.path, run_id=mlflow_run_id or None,
        metrics=metrics or None, baselines=baselines or None)
    return (str(v.version), v.sha256)


@component
def gate(
    model_name: str,
    version: str,
    heldout: Input[Dataset],
    decision: Output[Markdown],
    mlflow_tracking_uri: str = "",
    metric: str = "balanced_accuracy",
    margin: float = 0.0,
    baseline_margin: float = 0.0,
) -> bool:
    """Score challenger and champion on the same held-out split, compare with the baselines; the returned
    ``passed`` decides promotion (recorded as ``gate.*`` tags on the version; the reason and metrics are in
    ``decision``). A single bool output, because kfp.local resolves ``dsl.If`` only on ``Output``."""
    from genexflow.cohort import Cohort
    from genexflow.components._steps import gate_markdown
    from genexflow.serving.registry import GatePolicy, Registry

    d = Registry(mlflow_tracking_uri or None).gate(
        model_name, Cohort.read(heldout.path), challenger=version,
        policy=GatePolicy(metric=metric, margin=margin, baseline_margin=baseline_margin),
        data_description=f"held-out split {heldout.uri}")
    gate_markdown(d, decision.path)
    decision.metadata.update({"passed": d.passed, "reason": d.reason, "version": version,
                              "champion_version": d.champion_version or ""})
    return d.passed


@component
def promote(model_name: str, version: str, mlflow_tracking_uri: str = "") -> str:
    """Point alias ``champion`` at ``version`` (refused unless its gate and infra validation passed); the
    previous champion stays registered for rollback. Returns the previous champion version ('' if none)."""
    from genexflow.serving.registry import Registry

    v = Registry(mlflow_tracking_uri or None).promote(model_name, version)
    return v.tags.get("promotion.previous_champion", "")
