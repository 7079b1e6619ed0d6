"""Monitoring component: drift check of a new cohort against the served model's reference profile (the
retrain trigger step lives with the pipelines: :func:`genexflow.pipelines.monitoring.trigger_retrain`)."""

# no `from __future__ import annotations`: KFP reads the real annotation objects
# lazy: each component imports inside its body, because KFP ships the function body alone to the container
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from genexflow.components._base import component


@component
def drift_check(
    cohort: Input[Dataset],
    model_name: str,
    report: Output[HTML],
    metrics: Output[Metrics],
    evidence: Output[Artifact],
    mlflow_tracking_uri: str = "",
    alias: str = "champion",
) -> bool:
    """Compare a new cohort with the reference profile in the bundle of the ``alias`` version (genes,
    QC/pathway/latent features, batches, covariates, novelty, performance when labelled); the returned
    ``drift`` decides retraining (one bool output: kfp.local resolves ``dsl.If`` only on ``Output``).
    ``evidence`` holds every report, ``decision.json`` and ``drift.prom``; its metadata the reasons."""
    import shutil
    from pathlib import Path

    from genexflow.components._steps import log_metrics
    from genexflow.monitoring.check import drift_check as check
    from genexflow.serving.registry import registered_bundle

    bundle_dir = registered_bundle(model_name, alias, mlflow_tracking_uri, Path(evidence.path) / "bundle")
    res = check(cohort.path, bundle_dir, out_dir=evidence.path, mlflow_tracking_uri=mlflow_tracking_uri or None,
                model_key=f"{model_name}@{alias}")
    html = res.files.get("evidently_html")
    if html:
        shutil.copyfile(html, report.path)
    else:
        Path(report.path).write_text(f"<pre>{res.decision}</pre>")
    reasons = [f"[{r.kind}] {r.message}" for r in res.decision.reasons]
    log_metrics(metrics, {"drift": res.drift, "n_reasons": len(reasons), "n_samples": res.decision.n_samples or 0})
    evidence.metadata.update({"drift": res.drift, "reason": "; ".join(reasons) or "no drift",
                              "reference": res.reference, "mlflow_run_id": res.mlflow_run_id or ""})
    return res.drift
