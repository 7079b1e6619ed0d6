"""The drift check: a new cohort against a reference profile (or a model bundle holding one).

:func:`compute_reports` runs the detectors and returns their reports (no IO); :func:`drift_check` adds the
decision, writes the reports (Evidently HTML + JSON, the gene-level table, the decision) and records the
decision and evidence in MLflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genexflow.cohort import Cohort
from genexflow.errors import GenexflowError, InputError
from genexflow.io import read_cohort
from genexflow.monitoring import metrics as drift_metrics
from genexflow.monitoring.detectors import (
    CovariateShiftDetector,
    DriftReport,
    FeatureDriftDetector,
    GeneDriftDetector,
    LatentNoveltyDetector,
    PerformanceDecayDetector,
    UnseenBatchDetector,
)
from genexflow.monitoring.policy import DriftDecision, DriftPolicy
from genexflow.profile import ReferenceProfile
from genexflow.training.model import TrainedModel

DEFAULT_EXPERIMENT = "genexflow-drift"


@dataclass
class ModelOutputs:
    """What only the model can compute for a new cohort (all optional, rows in cohort order)."""

    predictions: Any = None  # (n,) values/labels or (n, n_classes) probabilities
    latent: Any = None  # (n, k)
    pathway_scores: Any = None  # (n, P) when the profile stores the model's pathway scores
    reference_metrics: dict[str, Any] = field(default_factory=dict)  # e.g. the bundle's CV metrics
    error: str | None = None  # why the model could not score the cohort (the check goes on without it)


@dataclass
class DriftResult:
    """Outcome of :func:`drift_check`."""

    decision: DriftDecision
    reports: dict[str, DriftReport]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    reference: str = ""
    model_key: str = "default"
    trigger: Any = None  # TriggerResult once trigger_retrain ran

    @property
    def drift(self) -> bool:
        return self.decision.drift


def resolve_reference(reference_or_bundle: Any) -> tuple[ReferenceProfile, Path | None, str]:
    """A ReferenceProfile from a profile object, a profile folder or a model-bundle folder.

    Returns ``(profile, bundle folder or None, description)``.
    """
    if isinstance(reference_or_bundle, ReferenceProfile):
        return reference_or_bundle, None, f"profile of {reference_or_bundle.meta.get('cohort_name', 'cohort')}"
    path = Path(reference_or_bundle)
    if not path.exists():
        raise InputError(f"{path}: no such reference profile or model bundle folder")
    if (path / "bundle.json").exists():
        if not (path / "reference" / "profile.json").exists():
            raise InputError(f"{path}: the model bundle has no reference/ profile; retrain with a reference "
                             "profile or pass a profile folder")
        return ReferenceProfile.load(path / "reference"), path, str(path)
    return ReferenceProfile.load(path), None, str(path)


def _as_cohort(new: Any, samples: Any = None, value_type: str | None = None) -> Cohort:
    """A Cohort from a Cohort, a cohort folder / ``.h5ad``, or a matrix file (+ sample sheet) read with
    ``value_type`` (the reference's: a bare matrix does not say what its numbers are)."""
    if isinstance(new, Cohort):
        return new

    path = Path(new)
    if not path.exists():
        raise InputError(f"{path}: no such cohort (a folder with expression.parquet + samples.csv, .h5ad, "
                         "or a matrix file with its sample sheet)")
    if path.is_dir() or path.suffix == ".h5ad":
        return Cohort.read(path)
    return read_cohort(path, samples, value_type=value_type or "log-expression")


def compute_reports(
    new: Cohort,
    reference: ReferenceProfile,
    *,
    policy: DriftPolicy | None = None,
    outputs: ModelOutputs | None = None,
    label_column: str | None = None,
    evidently: bool = True,
    feature_groups: Sequence[str] = ("qc", "pathway", "pca", "latent", "prediction"),
    max_pathways: int = 50,
) -> tuple[dict[str, DriftReport], pd.DataFrame]:
    """Run every applicable detector on ``new`` against ``reference``.

    Parameters
    ----------
    new : Cohort of shape (n_samples, n_genes)
    reference : ReferenceProfile
    policy : DriftPolicy, optional
        Detector thresholds (FDR, effect floors, novelty quantile, covariate alpha).
    outputs : ModelOutputs, optional
        The model's predictions / latent / pathway scores for ``new``.
    label_column : str, optional
        Labels of ``new`` for performance decay (default: the profile's label column when present).
    evidently : bool
        Run the Evidently feature report (off for quick statistical sweeps).
    feature_groups, max_pathways
        Columns given to Evidently.

    Returns
    -------
    reports : dict of kind -> report
    features : DataFrame of shape (n_samples, F)
        The compact features of ``new``.
    """
    policy = policy or DriftPolicy()
    outputs = outputs or ModelOutputs()
    if new.n_samples == 0:
        raise InputError(f"the new cohort {new.name!r} has no samples to check")
    reports: dict[str, DriftReport] = {}
    reports["gene"] = GeneDriftDetector(fdr=policy.gene_fdr, min_ks=policy.gene_min_ks).fit(reference).score(new)
    features = reference.compute_features(new, pathway_scores=outputs.pathway_scores, latent=outputs.latent,
                                          predictions=outputs.predictions)
    if evidently:
        reports["feature"] = FeatureDriftDetector(groups=tuple(feature_groups), max_pathways=max_pathways,
                                                  drift_share=policy.max_feature_drift_share
                                                  ).fit(reference).score(features)
    reports["batch"] = UnseenBatchDetector().fit(reference).score(new)
    if reference.meta.get("covariates"):
        reports["covariate"] = CovariateShiftDetector(alpha=policy.covariate_alpha,
                                                      min_effect=policy.covariate_min_effect
                                                      ).fit(reference).score(new)
    reports["novelty"] = LatentNoveltyDetector(quantile=policy.novelty_quantile).fit(reference).score(features)
    label_column = label_column or reference.meta.get("label_column")
    if outputs.predictions is not None and label_column and label_column in new.samples.columns:
        det = PerformanceDecayDetector().fit(reference)
        ref_value = outputs.reference_metrics.get(det.metric_)
        if isinstance(ref_value, int | float):  # honest (cross-validated) reference when the bundle has one
            det = PerformanceDecayDetector(reference_value=float(ref_value)).fit(reference)
        reports["performance"] = det.score(new.samples[label_column].to_numpy(), outputs.predictions)
    return reports, features


def model_outputs_from_bundle(bundle: Path, cohort: Cohort) -> ModelOutputs:
    """Predictions and latent coordinates of a bundle's model on ``cohort``
    (:meth:`genexflow.training.model.TrainedModel.predict_arrays`), with the bundle's cross-validated
    metrics as the performance reference. A model that cannot score the cohort (e.g. a covariate column
    is missing) does not stop the check: the error is reported and the model-free detectors still run."""
    try:
        model = TrainedModel.load(bundle)
        out = model.predict_arrays(cohort)
    except (GenexflowError, FileNotFoundError, KeyError, ValueError, RuntimeError) as exc:
        return ModelOutputs(error=f"the model could not score the new cohort: {exc}")
    info = model.info
    preds = out.get("proba") if info.task == "classification" else out.get("prediction")
    metrics = {k: v for k, v in (info.metrics or {}).items() if isinstance(v, int | float)}
    # prefer the pooled out-of-fold estimate (the one the gate used) over per-fold means
    oof = ((info.metrics or {}).get("oof") or {}).get("pathwaynet") or {}
    metrics.update({k: v for k, v in oof.items() if isinstance(v, int | float)})
    return ModelOutputs(predictions=preds, latent=out.get("latent"), reference_metrics=metrics)


def drift_check(
    new_cohort: Cohort | str | Path,
    reference_or_bundle: ReferenceProfile | str | Path,
    *,
    policy: DriftPolicy | None = None,
    out_dir: str | Path,
    mlflow_tracking_uri: str | None = None,
    experiment_name: str = DEFAULT_EXPERIMENT,
    samples: str | Path | None = None,
    outputs: ModelOutputs | None = None,
    label_column: str | None = None,
    model_key: str | None = None,
    evidently: bool = True,
    feature_groups: Sequence[str] = ("qc", "pathway", "pca", "latent", "prediction"),
    max_pathways: int = 50,
    tags: dict[str, str] | None = None,
) -> DriftResult:
    """Check a new cohort for drift, write the reports and record the decision in MLflow.

    Parameters
    ----------
    new_cohort : Cohort, or path to a cohort folder / ``.h5ad`` / matrix file (with ``samples``)
    reference_or_bundle : ReferenceProfile, profile folder or model-bundle folder (with ``reference/``)
    policy : DriftPolicy, optional
    out_dir : path
        Receives ``evidently_report.html``, ``evidently_report.json``, ``gene_drift.parquet``,
        ``gene_drift_top.csv``, ``pathway_enrichment.csv``, ``novelty_scores.csv``, ``decision.json``
        and ``drift.prom`` (Prometheus textfile-collector format).
    mlflow_tracking_uri : str, optional
        Tracking URI (e.g. ``sqlite:///mlflow.db``); without one the current MLflow default is used
        (``MLFLOW_TRACKING_URI`` or ``./mlruns``). Pass ``"none"`` to skip MLflow.
    experiment_name : str
    samples : path, optional
        Sample sheet when ``new_cohort`` is a bare matrix file.
    outputs : ModelOutputs, optional
        The model's predictions / latent for the new cohort (computed from a bundle when possible).
    label_column : str, optional
        Labels in the new sample sheet for performance decay.
    model_key : str, optional
        Identifies the monitored model (metrics label, cooldown key); default from the bundle/profile.
    evidently, feature_groups, max_pathways
        Evidently report options (see :func:`compute_reports`).
    tags : dict, optional
        Extra MLflow tags.

    Returns
    -------
    DriftResult
    """
    policy = policy or DriftPolicy()
    t0 = time.time()
    profile, bundle, ref_desc = resolve_reference(reference_or_bundle)
    cohort = _as_cohort(new_cohort, samples, profile.meta.get("value_type"))
    if outputs is None and bundle is not None:
        outputs = model_outputs_from_bundle(bundle, cohort)
    key = model_key or (bundle.name if bundle is not None else str(profile.meta.get("cohort_name", "default")))
    reports, features = compute_reports(cohort, profile, policy=policy, outputs=outputs, label_column=label_column,
                                        evidently=evidently, feature_groups=feature_groups,
                                        max_pathways=max_pathways)
    decision = policy.decide(reports, n_samples=cohort.n_samples)
    if outputs is not None and outputs.error:
        decision.notes.append(outputs.error)
    decision.evidence["check"] = {"cohort": cohort.name, "n_samples": cohort.n_samples, "n_genes": cohort.n_genes,
                                  "reference": ref_desc, "model_key": key, "seconds": round(time.time() - t0, 3)}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _write_reports(out, reports, decision, features)
    result = DriftResult(decision=decision, reports=reports, out_dir=out, files=files, reference=ref_desc,
                         model_key=key)
    files["metrics"] = drift_metrics.write_textfile(result, out / "drift.prom")
    if mlflow_tracking_uri != "none":
        result.mlflow_run_id = _log_mlflow(result, policy, mlflow_tracking_uri, experiment_name, tags or {})
        (out / "decision.json").write_text(json.dumps(
            {**json.loads(files["decision"].read_text()), "mlflow_run_id": result.mlflow_run_id}, indent=1))
    return result


def _write_reports(out: Path, reports: dict[str, DriftReport], decision: DriftDecision,
                   features: pd.DataFrame) -> dict[str, Path]:
    files: dict[str, Path] = {}
    f = reports.get("feature")
    if f is not None:
        files["evidently_html"] = f.save_html(out / "evidently_report.html")
        files["evidently_json"] = f.save_json(out / "evidently_report.json")
        f.table.to_csv(out / "feature_drift.csv")
        files["feature_table"] = out / "feature_drift.csv"
    g = reports["gene"]
    g.table.to_parquet(out / "gene_drift.parquet")
    files["gene_table"] = out / "gene_drift.parquet"
    g.top_genes(200).to_csv(out / "gene_drift_top.csv")
    files["gene_top"] = out / "gene_drift_top.csv"
    g.top_pathways.to_csv(out / "pathway_enrichment.csv")
    files["pathways"] = out / "pathway_enrichment.csv"
    nv = reports.get("novelty")
    if nv is not None and nv.checked:
        pd.DataFrame({"novelty_score": nv.scores, "novel": nv.scores > nv.threshold}).to_csv(out / "novelty_scores.csv")
        files["novelty"] = out / "novelty_scores.csv"
    c = reports.get("covariate")
    if c is not None:
        c.table.to_csv(out / "covariate_shift.csv")
        files["covariates"] = out / "covariate_shift.csv"
    features.to_parquet(out / "features.parquet")
    files["features"] = out / "features.parquet"
    (out / "decision.json").write_text(decision.to_json())
    files["decision"] = out / "decision.json"
    return files


def _log_mlflow(result: DriftResult, policy: DriftPolicy, tracking_uri: str | None, experiment: str,
                tags: dict[str, str]) -> str:
    # lazy: mlflow takes seconds to import
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    d = result.decision
    rep = result.reports
    metrics: dict[str, float] = {"drift": float(d.drift), "n_samples": float(d.n_samples or 0),
                                 "n_reasons": float(len(d.reasons))}
    g = rep.get("gene")
    if g is not None:
        metrics |= {"gene_drift_share": g.drift_share, "genes_drifted": g.n_drifted, "genes_tested": g.n_tested}
    if "feature" in rep:
        metrics["feature_drift_share"] = rep["feature"].drift_share
    if "batch" in rep:
        metrics["unseen_batch_fraction"] = rep["batch"].unseen_fraction
    if "novelty" in rep and rep["novelty"].checked:
        metrics["novel_fraction"] = rep["novelty"].novel_fraction
    if "covariate" in rep and len(rep["covariate"].table):
        metrics["covariates_shifted"] = float(rep["covariate"].table["drifted"].sum())
    if "performance" in rep and rep["performance"].decay is not None:
        metrics["performance_decay"] = rep["performance"].decay
    with mlflow.start_run(run_name=f"drift-{result.model_key}") as run:
        mlflow.set_tags({"genexflow.kind": "drift-check", "genexflow.drift": "yes" if d.drift else "no",
                         "genexflow.drift_reasons": ",".join(d.reason_kinds) or "none",
                         "genexflow.model_key": result.model_key, "genexflow.reference": result.reference[:250],
                         **tags})
        mlflow.log_params({f"policy.{k}": (",".join(v) if isinstance(v, list) else v)
                           for k, v in policy.to_dict().items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)})
        mlflow.log_dict(d.to_dict(), "decision.json")
        mlflow.log_artifacts(str(result.out_dir), artifact_path="drift")
        return run.info.run_id


def record_trigger(result: DriftResult, trigger: Any, mlflow_tracking_uri: str | None = None) -> None:
    """Add a :class:`~genexflow.pipelines.trigger.TriggerResult` to a check's outputs: ``decision.json``
    (``trigger``), ``drift.prom`` (retrain timestamp) and the MLflow run's tags."""
    result.trigger = trigger
    path = result.out_dir / "decision.json"
    data = json.loads(path.read_text())
    data["trigger"] = trigger.to_dict()
    path.write_text(json.dumps(data, indent=1, default=str))
    drift_metrics.write_textfile(result, result.out_dir / "drift.prom")
    if result.mlflow_run_id and mlflow_tracking_uri != "none":
        # lazy: mlflow takes seconds to import
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_uri) if mlflow_tracking_uri else mlflow.MlflowClient()
        tags = {"genexflow.retrain_triggered": "yes" if trigger.triggered else "no",
                "genexflow.retrain_mode": trigger.mode, "genexflow.retrain_reason": trigger.reason[:250]}
        if trigger.run_id:
            tags["genexflow.retrain_run"] = str(trigger.run_id)[:250]
        for k, v in tags.items():
            client.set_tag(result.mlflow_run_id, k, v)
        client.log_dict(result.mlflow_run_id, trigger.to_dict(), "trigger.json")
