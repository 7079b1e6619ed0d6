"""A local workspace: where a laptop run of the pipelines keeps its state, and typed entry points that run
the three pipelines with kfp.local and read back what they produced.

::

    <workspace>/
      mlflow.db            MLflow tracking + model registry (sqlite)
      mlartifacts/         MLflow artifacts (model bundles, reports, plots)
      kfp/<run>/<task>/    kfp.local pipeline root: every step's artifacts and executor outputs
      quarantine/          rejected samples/files, with reasons
      triton/models/       the Triton model repository that ``deploy`` writes
      datasets/            shipped cohorts exported for ``genexflow run --demo``

On a cluster the same parameters point at the MLflow server (from a Secret), the data PVC and the Triton
deployment instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genexflow.components._steps import PREDICTIONS
from genexflow.errors import InputError
from genexflow.paths import workspace_dir
from genexflow.pipelines import batch_inference
from genexflow.pipelines.local import LocalRun, TaskEvent, run_local
from genexflow.pipelines.monitoring import monitoring_pipeline
from genexflow.pipelines.training import training_pipeline
from genexflow.training.tracking import ensure_experiment

DEFAULT_WORKSPACE = ".genexflow"
DRIFT_EXPERIMENT = "genexflow-drift"  # genexflow.monitoring.check.DEFAULT_EXPERIMENT


@dataclass
class Workspace:
    """Paths of a local workspace (created on first use)."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser().resolve()

    @classmethod
    def default(cls) -> Workspace:
        """``$GENEXFLOW_WORKSPACE``, else ``$GENEXFLOW_HOME``, else ``./.genexflow`` (where training, the
        registry commands, drift checks and the local Triton launcher keep their state too:
        :func:`genexflow.paths.workspace_dir`)."""
        return cls(workspace_dir())

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def pipeline_root(self) -> Path:
        return self.root / "kfp"

    @property
    def quarantine_root(self) -> Path:
        return self.root / "quarantine"

    @property
    def triton_repository(self) -> Path:
        return self.root / "triton" / "models"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def create(self) -> Workspace:
        for p in (self.root, self.artifact_root, self.pipeline_root, self.quarantine_root,
                  self.triton_repository):
            p.mkdir(parents=True, exist_ok=True)
        return self

    def ensure_experiment(self, name: str) -> str:
        """Create the MLflow experiment with its artifacts inside the workspace (``mlartifacts/`` next to
        ``mlflow.db``, as training does); returns its id."""
        self.create()
        return ensure_experiment(name, self.tracking_uri)


# --------------------------------------------------------------------------------------------- training
@dataclass
class TrainingResult:
    """What a local training run produced (paths are local files)."""

    run: LocalRun
    workspace: Workspace
    model_name: str
    mlflow_run_id: str | None = None
    registered_version: str | None = None
    gate_passed: bool | None = None
    gate_reason: str | None = None
    promoted: bool = False
    deployed_path: str | None = None
    triton_version: int | None = None
    reports: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    infra: dict[str, Any] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline_run": str(self.run.run_dir), "state": self.run.state, "seconds": round(self.run.seconds, 1),
            "tracking_uri": self.workspace.tracking_uri, "mlflow_run_id": self.mlflow_run_id,
            "model_name": self.model_name, "registered_version": self.registered_version,
            "gate_passed": self.gate_passed, "gate_reason": self.gate_reason, "promoted": self.promoted,
            "deployed_path": self.deployed_path, "triton_version": self.triton_version,
            "reports": self.reports, "metrics": self.metrics, "infra_validation": self.infra,
            "log": str(self.run.log_path),
        }


def training_arguments(
    expression: str | Path,
    samples: str | Path,
    label: str,
    workspace: Workspace,
    *,
    value_type: str = "auto",
    batch_column: str | None = None,
    covariates: list[str] | None = None,
    allowed_labels: list[str] | None = None,
    model_name: str = "genexflow-classifier",
    experiment: str = "genexflow",
    ingest_config: dict[str, Any] | None = None,
    train_config: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
    hpo_trials: int = 0,
    cv_folds: int = 5,
    explain_samples: int = 100,
    test_fraction: float = 0.2,
    seed: int = 0,
    baselines: list[str] | None = None,
    gate_metric: str = "balanced_accuracy",
    gate_margin: float = 0.0,
    baseline_margin: float = 0.0,
    triton_url: str = "",
) -> dict[str, Any]:
    """Pipeline parameters for a local training run (checks that the input files exist)."""
    for p, what in ((expression, "expression matrix"), (samples, "sample sheet")):
        if not Path(p).exists():
            raise InputError(f"{p}: {what} not found")
    return dict(
        expression_uri=str(Path(expression).resolve()), samples_uri=str(Path(samples).resolve()),
        label_column=label, value_type=value_type, batch_column=batch_column or "",
        covariates=list(covariates or []), allowed_labels=list(allowed_labels or []),
        quarantine_root=str(workspace.quarantine_root), ingest_config=dict(ingest_config or {}),
        model_name=model_name, experiment_name=experiment,
        mlflow_tracking_uri=workspace.tracking_uri, train_config=dict(train_config or {}),
        preprocessing=dict(preprocessing or {}), hpo_trials=hpo_trials, cv_folds=cv_folds,
        explain_samples=explain_samples, test_fraction=test_fraction,
        seed=seed, baselines=list(baselines or []), gate_metric=gate_metric, gate_margin=gate_margin,
        baseline_margin=baseline_margin,
        triton_repository=str(workspace.triton_repository), triton_url=triton_url,
    )


def run_training(arguments: dict[str, Any], workspace: Workspace, *, enable_caching: bool = True,
                 on_event: Callable[[TaskEvent], None] | None = None) -> TrainingResult:
    """Run the training pipeline locally with ``arguments`` (see :func:`training_arguments`)."""
    workspace.ensure_experiment(arguments.get("experiment_name", "genexflow"))
    run = _run_with_env(training_pipeline, arguments, workspace, enable_caching, on_event)
    return read_training_result(run, workspace, arguments.get("model_name", "genexflow-classifier"))


def read_training_result(run: LocalRun, workspace: Workspace, model_name: str) -> TrainingResult:
    """Pull the registry version, gate decision, deploy location and report paths out of a run's tasks.
    Inside a nested pipeline the task names carry no prefix, so the same reader serves the monitoring run."""
    res = TrainingResult(run, workspace, model_name)

    def first(prefix: str):
        found = run.find(prefix)
        return found[0] if found else None

    if (t := first("train")) is not None:
        res.mlflow_run_id = t.parameters.get("mlflow_run_id")
    if (t := first("register")) is not None:
        res.registered_version = str(t.parameters.get("version"))
    if (t := first("gate")) is not None:
        res.gate_passed = bool(t.output)
        res.gate_reason = t.metadata.get("decision", {}).get("reason")
        if uri := t.artifact("decision"):
            res.reports["gate decision"] = uri
    if (t := first("promote")) is not None:
        res.promoted = True
    if (t := first("deploy")) is not None:
        res.deployed_path = t.parameters.get("path")
        res.triton_version = t.parameters.get("triton_version")
    for task, art, label in (("ingest-validate", "report", "validation report"),
                             ("evaluate", "report", "evaluation report"),
                             ("record-outcome", "outcome", "run outcome")):
        if (t := first(task)) is not None and (uri := t.artifact(art)) and Path(uri).is_file():
            res.reports[label] = uri
    if (t := first("infra-validate")) is not None:
        res.infra = dict(t.metadata.get("report", {}))
    if (t := first("evaluate")) is not None:
        res.metrics = dict(t.metadata.get("metrics", {}))
    if (t := first("record-outcome")) is not None and (uri := t.artifact("outcome")):
        try:
            res.outcome = json.loads(Path(uri).read_text())
        except (OSError, ValueError):
            res.outcome = {}
    return res


def _run_with_env(pipeline: Any, arguments: dict[str, Any], workspace: Workspace, enable_caching: bool,
                  on_event: Callable[[TaskEvent], None] | None) -> LocalRun:
    """Run a pipeline with the workspace's MLflow as the default tracking server of every step."""
    workspace.create()
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI",)}
    os.environ["MLFLOW_TRACKING_URI"] = workspace.tracking_uri
    try:
        return run_local(pipeline, arguments, root=workspace.pipeline_root, enable_caching=enable_caching,
                         on_event=on_event)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------- batch, monitoring
def run_batch_inference(expression: str | Path, samples: str | Path, triton_url: str, workspace: Workspace, *,
                        serving_name: str = "genexflow_classifier", n_shards: int = 4, value_type: str = "auto",
                        parallelism: int | None = None, ingest_config: dict[str, Any] | None = None,
                        on_event: Callable[[TaskEvent], None] | None = None) -> tuple[LocalRun, Path]:
    """Score a cohort through a running Triton with the batch-inference pipeline; returns the run and the
    merged predictions file."""
    pipeline = (batch_inference.batch_inference_pipeline if parallelism is None
                else batch_inference.build(parallelism=parallelism))
    args = dict(expression_uri=str(Path(expression).resolve()), samples_uri=str(Path(samples).resolve()),
                triton_url=triton_url, serving_name=serving_name, value_type=value_type, n_shards=n_shards,
                quarantine_root=str(workspace.quarantine_root), ingest_config=dict(ingest_config or {}))
    run = _run_with_env(pipeline, args, workspace, False, on_event)
    merged = run.task("merge-predictions").artifact("predictions")
    return run, Path(merged) / PREDICTIONS


@dataclass
class MonitoringResult:
    """What a local monitoring run found and, on drift, what the nested retraining produced."""

    run: LocalRun
    drift: bool
    reason: str | None
    report: str | None
    evidence: str | None
    retraining: TrainingResult | None


def run_monitoring(arguments: dict[str, Any], workspace: Workspace, *,
                   on_event: Callable[[TaskEvent], None] | None = None) -> MonitoringResult:
    """Run the monitoring pipeline locally; on drift the training pipeline runs nested in the same run."""
    workspace.ensure_experiment(arguments.get("experiment_name", "genexflow"))
    workspace.ensure_experiment(DRIFT_EXPERIMENT)  # the drift check logs there; keep its artifacts local
    run = _run_with_env(monitoring_pipeline, arguments, workspace, False, on_event)
    dc = run.task("drift-check")
    drift = bool(dc.output)
    retrain = read_training_result(run, workspace, arguments.get("model_name", "genexflow-classifier")) \
        if run.ran("train") else None
    return MonitoringResult(run, drift, dc.metadata.get("evidence", {}).get("reason"), dc.artifact("report"),
                            dc.artifact("evidence"), retrain)


def monitoring_arguments(expression: str | Path, samples: str | Path, label: str, workspace: Workspace,
                         **kw: Any) -> dict[str, Any]:
    """Pipeline parameters for a local monitoring run (retraining uses the same workspace)."""
    targs = training_arguments(expression, samples, label, workspace,
                               **{k: v for k, v in kw.items() if k not in ("alias",)})
    keep = ("expression_uri", "samples_uri", "label_column", "value_type", "batch_column", "covariates",
            "model_name", "experiment_name", "mlflow_tracking_uri", "quarantine_root", "ingest_config",
            "train_config", "preprocessing", "hpo_trials", "cv_folds", "explain_samples", "baselines", "test_fraction",
            "seed", "gate_metric", "gate_margin", "baseline_margin", "triton_repository", "triton_url")
    args = {k: targs[k] for k in keep}
    args["alias"] = kw.get("alias", "champion")
    return args
