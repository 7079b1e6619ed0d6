"""Monitoring components: drift check of a new cohort against the champion's reference; retrain trigger."""

# no `from __future__ import annotations`: KFP reads the real annotation objects
from typing import NamedTuple

from genexflow.components._base import component
from kfp.dsl import HTML, Dataset, Input, Metrics, Output


@component
def drift_check(
    cohort: Input[Dataset],
    model_name: str,
    report: Output[HTML],
    metrics: Output[Metrics],
    mlflow_tracking_uri: str = "",
    alias: str = "champion",
) -> NamedTuple("DriftOutputs", [("drift", bool), ("score", float), ("reason", str)]):
    """Compare a new cohort with the reference profile of the served model; ``drift`` decides retraining."""
    raise NotImplementedError("wired when genexflow.monitoring.check lands")


@component
def trigger_retrain(
    kfp_host: str,
    training_arguments: dict,
    reason: str,
    experiment_name: str = "genexflow",
) -> str:
    """Submit a training pipeline run to the KFP endpoint (cluster mode); returns the run id."""
    raise NotImplementedError("wired when genexflow.monitoring.trigger lands")
