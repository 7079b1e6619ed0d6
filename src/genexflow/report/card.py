"""The model card after the pipeline's later steps: registry version and aliases, the gate's decision and
margin, the infra-validation result and the pipeline's outcome are read back from MLflow, written into the
report's data and the page is rendered again (same path in the run's artifacts); the registered version
gets a tag and a description line pointing at the report."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from genexflow.errors import InputError
from genexflow.report.page import clean_json, read_page_data, write_page
from genexflow.report.render import render_run_report

#: Where the report lives in the training run's MLflow artifacts.
ARTIFACT_DIR = "report"
ARTIFACT_NAME = "report.html"
VERSION_TAG = "genexflow.report"


def _loads(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def version_facts(mv: Any) -> dict[str, Any]:
    """Registry, gate and infra-validation facts of one MLflow model version (its ``gate.*``/``infra.*`` tags)."""
    tags = dict(mv.tags or {})
    out: dict[str, Any] = {"registry": {"name": mv.name, "version": int(mv.version), "aliases": list(mv.aliases or []),
                                        "sha256": tags.get("sha256")}}
    if "gate.decision" in tags:
        metrics = _loads(tags.get("gate.metrics")) or {}
        policy = _loads(tags.get("gate.policy")) or {}
        out["gate"] = {"decision": tags["gate.decision"], "reason": tags.get("gate.reason"), "policy": policy,
                       "time": tags.get("gate.time"), "metrics": metrics, "margin": _gate_margin(metrics, policy)}
    if "infra.decision" in tags:
        out["infra"] = {"decision": tags["infra.decision"], "reason": tags.get("infra.reason"),
                        "details": _loads(tags.get("infra.details")) or {}, "time": tags.get("infra.time")}
    return out


def _gate_margin(metrics: dict[str, Any], policy: dict[str, Any]) -> str | None:
    """The challenger's lead over the champion and the best baseline on the gate metric, as measured."""
    m = policy.get("metric")
    ch = (metrics.get("challenger") or {}).get(m) if isinstance(metrics, dict) else None
    if not isinstance(ch, int | float):
        return None
    sign = -1.0 if m in ("rmse", "mae", "log_loss", "mse") else 1.0
    out = []
    champ = (metrics.get("champion") or {}).get(m)
    if isinstance(champ, int | float):
        out.append(f"{sign * (ch - champ):+.4f} vs champion")
    paired = metrics.get("oof_vs_best_baseline") or {}
    base = metrics.get("baselines") or {}
    if paired.get("difference") is not None:  # the gate's stable estimate (out-of-fold, paired, bootstrap CI)
        out.append(f"{paired['difference']:+.4f} (95% CI {paired.get('ci_low', float('nan')):+.4f} to "
                   f"{paired.get('ci_high', float('nan')):+.4f}) out-of-fold vs best baseline {paired.get('baseline')}")
    elif base:
        best = max(base, key=lambda b: sign * base[b])
        out.append(f"{sign * (ch - base[best]):+.4f} vs best baseline {best}")
    return "; ".join(out) or None


def report_artifact_uri(run_id: str, tracking_uri: str | None = None) -> str:
    """Where run ``run_id``'s report is (or will be) in its MLflow artifacts."""
    # lazy: mlflow takes seconds to import
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=tracking_uri or None).get_run(run_id)
    return f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_DIR}/{ARTIFACT_NAME}"


def log_run_report(path: str | Path, run_id: str, tracking_uri: str | None = None) -> str:
    """Log the report to MLflow run ``run_id`` (``report/report.html``); tag the run with its artifact URI."""
    # lazy: mlflow takes seconds to import
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or None)
    p = Path(path)
    if p.name != ARTIFACT_NAME:  # MLflow keeps the file name: stage a copy under the canonical one
        with tempfile.TemporaryDirectory() as tmp:
            staged = write_page(p.read_text(encoding="utf-8"), Path(tmp) / ARTIFACT_NAME)
            client.log_artifact(run_id, str(staged), ARTIFACT_DIR)
    else:
        client.log_artifact(run_id, str(p), ARTIFACT_DIR)
    uri = report_artifact_uri(run_id, tracking_uri)
    client.set_tag(run_id, VERSION_TAG, uri)
    return uri


def update_card(path: str | Path, updates: dict[str, Any]) -> Path:
    """Merge ``updates`` into the model card of the report at ``path`` and render the page again in place."""
    data = read_page_data(path)
    data.setdefault("card", {}).update(clean_json(updates))
    return write_page(render_run_report(data), path)


def finalize_run_report(run_id: str, tracking_uri: str | None = None, *, model_name: str | None = None,
                        outcome: dict[str, Any] | None = None) -> str | None:
    """Refresh the model card of training run ``run_id``'s report from the registry and log it back.

    Reads the model version(s) registered from the run (name ``model_name`` when given), writes registry
    version, aliases, gate and infra-validation facts and the pipeline ``outcome`` into the card, logs the
    page to the same artifact path, and tags each version with the report's artifact URI (plus a line in
    its description). Returns that URI, or None when the run has no report (e.g. training failed first).
    """
    # lazy: mlflow takes seconds to import
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or None)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{ARTIFACT_NAME}", tmp)
        except (MlflowException, OSError):
            return None
        query = f"run_id='{run_id}'" + (f" and name='{model_name}'" if model_name else "")
        versions = [client.get_model_version(v.name, v.version) for v in client.search_model_versions(query)]
        uri = report_artifact_uri(run_id, tracking_uri)
        updates: dict[str, Any] = {"mlflow": {**(read_page_data(local).get("card", {}).get("mlflow") or {}),
                                              "run_id": run_id, "report_uri": uri}}
        if versions:
            updates.update(version_facts(max(versions, key=lambda v: int(v.version))))
        if outcome:
            updates["outcome"] = {k: outcome.get(k) for k in ("state", "error", "pipeline_job", "finished_at")}
        update_card(local, updates)
        client.log_artifact(run_id, local, ARTIFACT_DIR)
    for v in versions:
        client.set_model_version_tag(v.name, v.version, VERSION_TAG, uri)
        desc = v.description or ""
        line = f"Run report: {uri}"
        if line not in desc:
            client.update_model_version(v.name, v.version, description=(desc + "\n" if desc else "") + line)
    return uri


def fetch_run_report(run_id: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Download run ``run_id``'s report to ``dst`` (a file path)."""
    # lazy: mlflow takes seconds to import
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the CLI summary clean
    client = MlflowClient(tracking_uri=tracking_uri or None)
    dst = Path(dst)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{ARTIFACT_NAME}", tmp)
        except (MlflowException, OSError) as exc:
            raise InputError(f"MLflow run {run_id} has no {ARTIFACT_DIR}/{ARTIFACT_NAME}") from exc
        return write_page(Path(local).read_text(encoding="utf-8"), dst)
