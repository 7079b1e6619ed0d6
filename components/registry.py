"""Registry components (MLflow): register as challenger, gate against champion and baselines, promote."""

# no `from __future__ import annotations`: KFP reads the real annotation objects
from typing import NamedTuple

from genexflow.components._base import component
from kfp.dsl import Input, Markdown, Model, Output


@component
def register(
    bundle: Input[Model],
    mlflow_run_id: str,
    model_name: str,
    mlflow_tracking_uri: str = "",
) -> NamedTuple("RegisterOutputs", [("version", str), ("sha256", str)]):
    """Register the bundle as a new model version with alias ``challenger``."""
    raise NotImplementedError("wired when genexflow.serving.registry lands")


@component
def gate(
    model_name: str,
    version: str,
    decision: Output[Markdown],
    mlflow_tracking_uri: str = "",
    metric: str = "",
    min_improvement: float = 0.0,
) -> NamedTuple("GateOutputs", [("passed", bool), ("reason", str)]):
    """Compare the challenger with the champion and the baselines; ``passed`` decides promotion."""
    raise NotImplementedError("wired when genexflow.serving.registry lands")


@component
def promote(model_name: str, version: str, mlflow_tracking_uri: str = "") -> str:
    """Move alias ``champion`` to ``version`` (the previous champion stays registered for rollback)."""
    raise NotImplementedError("wired when genexflow.serving.registry lands")
