"""The monitoring pipeline: check a new cohort for drift against the served model; retrain on drift.

::

    ingest + validate the new cohort -> drift check vs the champion's reference profile
      -> dsl.If(drift): retrain
           portable / local: the training pipeline runs nested inside this run (same DAG engine, so a
                             laptop runs exactly what the cluster would)
           cluster:          trigger_retrain submits a separate training run to the KFP endpoint, so the
                             retraining shows up as its own run with its own lineage

Scheduled with ``genexflow pipeline schedule --cron`` as a KFP recurring run.
"""

# no `from __future__ import annotations`: KFP reads the real annotation objects
# lazy: each component imports inside its body, because KFP ships the function body alone to the container
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input

from genexflow.components._base import component
from genexflow.components.data import ingest_validate
from genexflow.components.monitoring import drift_check
from genexflow.pipelines import training
from genexflow.pipelines.kubernetes import Platform

NAME = "genexflow-monitoring"


# The retrain step starts a pipeline run, so it lives here with the pipelines (components sit below them).
@component
def trigger_retrain(
    evidence: Input[Artifact],
    training_arguments: dict,
    kfp_host: str = "",
    experiment_name: str = "genexflow",
    model_key: str = "default",
    cooldown_path: str = "/data/drift/cooldown.json",
) -> NamedTuple("TriggerOutputs", [("triggered", bool), ("run_id", str), ("url", str), ("reason", str)]):
    """Submit a training pipeline run to the KFP endpoint for the drift decision in ``evidence`` (at most
    once per cooldown, tracked in ``cooldown_path`` on the data volume); an unreachable endpoint fails
    the step."""
    import json
    from pathlib import Path

    from genexflow.monitoring.policy import DriftDecision
    from genexflow.pipelines.trigger import trigger_retrain as trigger

    decision = DriftDecision.from_dict(json.loads((Path(evidence.path) / "decision.json").read_text()))
    res = trigger(decision, mode="kfp", training_arguments=training_arguments, host=kfp_host or None,
                  experiment=experiment_name, cooldown=cooldown_path, model_key=model_key)
    return (res.triggered, res.run_id or "", res.url or "", res.reason)


def build(platform: Platform | None = None) -> Any:
    """Build the monitoring pipeline (nested retraining, or a KFP-client retraining run on a cluster)."""
    platform = platform or Platform()
    training_pipeline = None if platform.cluster else training.build(platform)

    @dsl.pipeline(name=NAME, description="Drift check of a new cohort against the served model; retrain "
                  "on drift.")
    def monitoring_pipeline(
        expression_uri: str,
        samples_uri: str,
        label_column: str,
        value_type: str = "auto",
        batch_column: str = "",
        covariates: list = [],  # noqa: B006 - KFP pipeline parameters take literal defaults
        model_name: str = "genexflow-classifier",
        serving_name: str = "genexflow_classifier",
        alias: str = "champion",
        experiment_name: str = "genexflow",
        mlflow_tracking_uri: str = "",
        quarantine_root: str = "/data/quarantine",
        ingest_config: dict = {},  # noqa: B006
        train_config: dict = {},  # noqa: B006
        preprocessing: dict = {},  # noqa: B006
        hpo_trials: int = 0,
        cv_folds: int = 5,
        explain_samples: int = 100,
        baselines: list = [],  # noqa: B006
        test_fraction: float = 0.2,
        seed: int = 0,
        gate_metric: str = "balanced_accuracy",
        gate_margin: float = 0.0,
        baseline_margin: float = 0.0,
        triton_repository: str = "/data/triton/models",
        triton_url: str = "",
        kfp_host: str = "",
        cooldown_path: str = "/data/drift/cooldown.json",
    ):
        ing = ingest_validate(expression_uri=expression_uri, samples_uri=samples_uri, label_column="",
                              value_type=value_type, batch_column=batch_column, covariates=covariates,
                              quarantine_root=quarantine_root, run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                              ingest_config=ingest_config)
        platform(ing, "data").set_display_name("ingest + validate new cohort").set_caching_options(False)
        dc = drift_check(cohort=ing.outputs["cohort"], model_name=model_name, alias=alias,
                         mlflow_tracking_uri=mlflow_tracking_uri)
        platform(dc, "data", "mlflow").set_display_name("drift check").set_caching_options(False)
        with dsl.If(dc.outputs["Output"] == True, name="drift-detected"):  # noqa: E712 - KFP condition
            args = dict(expression_uri=expression_uri, samples_uri=samples_uri, label_column=label_column,
                        value_type=value_type, batch_column=batch_column, covariates=covariates,
                        quarantine_root=quarantine_root, ingest_config=ingest_config, model_name=model_name,
                        serving_name=serving_name,
                        experiment_name=experiment_name,
                        mlflow_tracking_uri=mlflow_tracking_uri, train_config=train_config,
                        preprocessing=preprocessing, hpo_trials=hpo_trials, cv_folds=cv_folds,
                        explain_samples=explain_samples, baselines=baselines, test_fraction=test_fraction,
                        seed=seed,
                        gate_metric=gate_metric, gate_margin=gate_margin, baseline_margin=baseline_margin,
                        triton_repository=triton_repository, triton_url=triton_url)
            if training_pipeline is not None:
                rt = training_pipeline(**args)
                rt.set_display_name("retrain (nested training pipeline)")
            else:
                rt = trigger_retrain(evidence=dc.outputs["evidence"], training_arguments=args, kfp_host=kfp_host,
                                     experiment_name=experiment_name, model_key=model_name,
                                     cooldown_path=cooldown_path)
                platform(rt, "kfp").set_display_name("trigger retraining run").set_caching_options(False)

    return monitoring_pipeline


#: The portable monitoring pipeline (nested retraining).
monitoring_pipeline = build()
