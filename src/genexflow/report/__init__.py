"""Run reports: one self-contained HTML page per training run and per drift check.

A training run's report (:func:`write_run_report`) shows the cohort and QC, batch effects before and after
correction, cross-validation against the baselines with intervals, ROC/PR/calibration, the confusion
matrix, learning curves, top genes and pathways by name and the model card. The pipeline's last step
fills the model card's registry, gate and infra-validation entries (:func:`finalize_run_report`). A drift
check's page: :func:`write_drift_report`. docs/report.md explains how to read each section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genexflow.report.card import (
    ARTIFACT_DIR,
    ARTIFACT_NAME,
    fetch_run_report,
    finalize_run_report,
    log_run_report,
    report_artifact_uri,
    update_card,
)
from genexflow.report.collect import collect_run_data
from genexflow.report.drift import DRIFT_SECTIONS, render_drift_report, write_drift_page, write_drift_report
from genexflow.report.page import MAX_BYTES, read_page_data, write_page
from genexflow.report.render import RUN_SECTIONS, gate_sentence, render_run_report
from genexflow.report.stats import ModelRow, corrected_t_interval, cv_comparison


def write_run_report(path: str | Path, cohort: Any, **kwargs: Any) -> Path:
    """Collect a training run's data (see :func:`collect_run_data` for the arguments), render it, write the
    page atomically to ``path`` and, when ``run_id`` is given, log it to that MLflow run as
    ``report/report.html`` (tagged ``genexflow.report`` with its artifact URI)."""
    data = collect_run_data(cohort, **kwargs)
    run_id, uri = kwargs.get("run_id"), kwargs.get("tracking_uri")
    if run_id:
        data["card"]["mlflow"]["report_uri"] = report_artifact_uri(run_id, uri)
    path = write_page(render_run_report(data), path)
    if run_id:
        log_run_report(path, run_id, uri)
    return path


__all__ = [
    "ARTIFACT_DIR", "ARTIFACT_NAME", "DRIFT_SECTIONS", "MAX_BYTES", "ModelRow", "RUN_SECTIONS", "collect_run_data",
    "corrected_t_interval", "cv_comparison", "fetch_run_report", "finalize_run_report", "gate_sentence", "log_run_report",
    "report_artifact_uri",
    "read_page_data", "render_drift_report", "render_run_report", "update_card", "write_drift_page", "write_drift_report", "write_page",
    "write_run_report",
]
