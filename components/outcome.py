"""The exit-handler component: record how a pipeline run ended, whatever happened inside it."""

# no `from __future__ import annotations`: KFP reads the real annotation objects
# lazy: each component imports inside its body, because KFP ships the function body alone to the container
from kfp import dsl
from kfp.dsl import Artifact, Output

from genexflow.components._base import component


@component
def record_outcome(
    status: dsl.PipelineTaskFinalStatus,
    pipeline_job: str,
    outcome: Output[Artifact],
    mlflow_tracking_uri: str = "",
    experiment_name: str = "",
    model_name: str = "",
) -> str:
    """Write the run's final state (and error) as JSON, tag this job's MLflow runs with it and complete the
    model card of each run's report (registry version, aliases, gate, infra-validation, outcome)."""
    from genexflow.components._steps import record_outcome as record
    from genexflow.report import finalize_run_report

    error = (status.error_message or "") if status.state != "SUCCEEDED" else ""
    rec = record(status.state, error, pipeline_job, outcome.path, tracking_uri=mlflow_tracking_uri,
                 experiment=experiment_name, model_name=model_name)
    outcome.metadata.update({"state": rec["state"], "mlflow_runs": len(rec["mlflow_runs"])})
    for run_id in rec["mlflow_runs"]:  # the last step: the report's model card gets registry, gate, infra
        finalize_run_report(run_id, mlflow_tracking_uri or None, model_name=model_name or None, outcome=rec)
    return status.state
