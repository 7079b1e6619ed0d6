"""Prometheus metrics of drift checks: a textfile-collector file per check and a scrape endpoint.

Both render the same gauges from a check's ``decision.json`` (+ ``feature_drift.csv``):

======================================================  ==================================================
metric                                                  meaning
======================================================  ==================================================
``genexflow_drift_detected{model}``                     1 when the last check decided drift
``genexflow_drift_gene_share{model}``                   share of genes drifted (BH FDR + KS floor)
``genexflow_drift_feature_share{model}``                Evidently share of drifted compact features
``genexflow_drift_novel_fraction{model}``               share of samples novel in latent space
``genexflow_drift_unseen_batch_fraction{model}``        share of samples from unseen batches
``genexflow_drift_covariates_shifted{model}``           covariates with a significant shift
``genexflow_drift_performance_decay{model}``            metric drop once labels arrive
``genexflow_drift_reason{model,kind}``                  1 per active reason kind
``genexflow_drift_feature_score{model,feature,group}``  Evidently drift score per compact feature
``genexflow_drift_feature_drifted{model,feature,group}`` 1 when Evidently flags the feature
``genexflow_drift_samples{model}``                      samples in the last check
``genexflow_drift_last_check_timestamp_seconds{model}`` time of the last check
``genexflow_drift_retrain_triggered_timestamp_seconds`` time the last retraining run was triggered
======================================================  ==================================================

``genexflow drift serve-metrics --port 9108 --state-dir DIR`` serves them on 127.0.0.1 from the newest
check per model found under DIR (re-read at every scrape, so a running server follows new checks).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from genexflow.monitoring.policy import REASON_KINDS

PREFIX = "genexflow_drift"


def state_from_result(result: Any) -> dict[str, Any]:
    """The metrics state of a :class:`~genexflow.monitoring.check.DriftResult`."""
    features: list[dict[str, Any]] = []
    f = result.reports.get("feature")
    if f is not None:
        features = [{"feature": c, "group": r["group"], "score": r["score"], "drifted": bool(r["drifted"])}
                    for c, r in f.table.iterrows()]
    trig = getattr(result, "trigger", None)
    return {"model": result.model_key, "decision": result.decision.to_dict(), "features": features,
            "triggered_at": getattr(trig, "triggered_at", None) if trig is not None and trig.triggered else None}


def state_from_folder(folder: str | Path) -> dict[str, Any] | None:
    """The metrics state of a check output folder (``decision.json`` + ``feature_drift.csv``)."""
    folder = Path(folder)
    try:
        decision = json.loads((folder / "decision.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    features: list[dict[str, Any]] = []
    if (folder / "feature_drift.csv").exists():
        t = pd.read_csv(folder / "feature_drift.csv", index_col=0)
        features = [{"feature": c, "group": r.get("group", ""), "score": r["score"], "drifted": bool(r["drifted"])}
                    for c, r in t.iterrows()]
    trig = decision.get("trigger") or {}
    return {"model": decision.get("evidence", {}).get("check", {}).get("model_key", folder.name),
            "decision": decision, "features": features,
            "triggered_at": trig.get("triggered_at") if trig.get("triggered") else None}


def _families(states: Iterable[dict[str, Any]]) -> Iterator[GaugeMetricFamily]:
    g = {name: GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["model"]) for name, doc in [
        ("detected", "1 when the last drift check decided drift"),
        ("gene_share", "Share of tested genes that drifted (BH FDR and KS floor)"),
        ("feature_share", "Evidently share of drifted compact features"),
        ("novel_fraction", "Share of samples novel in latent space"),
        ("unseen_batch_fraction", "Share of samples from batches the model never saw"),
        ("covariates_shifted", "Number of covariates with a significant shift"),
        ("performance_decay", "Reference minus current metric once labels arrive"),
        ("samples", "Samples in the last drift check"),
        ("last_check_timestamp_seconds", "Unix time of the last drift check"),
        ("retrain_triggered_timestamp_seconds", "Unix time the last retraining run was triggered"),
    ]}
    reason = GaugeMetricFamily(f"{PREFIX}_reason", "1 per active drift reason kind", labels=["model", "kind"])
    fscore = GaugeMetricFamily(f"{PREFIX}_feature_score", "Evidently drift score per compact feature",
                               labels=["model", "feature", "group"])
    fdrift = GaugeMetricFamily(f"{PREFIX}_feature_drifted", "1 when Evidently flags the feature",
                               labels=["model", "feature", "group"])
    for st in states:
        m = str(st["model"])
        d = st["decision"]
        ev = d.get("evidence", {})

        def put(name: str, value: Any, m: str = m) -> None:
            if value is not None:
                g[name].add_metric([m], float(value))

        put("detected", d.get("drift", False))
        put("gene_share", ev.get("gene", {}).get("drift_share"))
        put("feature_share", ev.get("feature", {}).get("drift_share"))
        nv = ev.get("novelty", {})
        put("novel_fraction", nv.get("novel_fraction") if nv.get("checked") else None)
        b = ev.get("batch", {})
        put("unseen_batch_fraction", b.get("unseen_fraction") if b.get("checked") else None)
        cv = ev.get("covariate")
        put("covariates_shifted", len(cv.get("drifted", [])) if cv else None)
        put("performance_decay", ev.get("performance", {}).get("decay"))
        put("samples", d.get("n_samples"))
        put("last_check_timestamp_seconds", d.get("checked_at"))
        put("retrain_triggered_timestamp_seconds", st.get("triggered_at"))
        active = {r["kind"] for r in d.get("reasons", [])}
        for kind in REASON_KINDS:
            reason.add_metric([m, kind], float(kind in active))
        for f in st.get("features", []):
            if f.get("score") is not None and f["score"] == f["score"]:
                fscore.add_metric([m, f["feature"], str(f["group"])], float(f["score"]))
            fdrift.add_metric([m, f["feature"], str(f["group"])], float(f["drifted"]))
    yield from g.values()
    yield reason
    yield fscore
    yield fdrift


class _StaticCollector(Collector):
    def __init__(self, states: list[dict[str, Any]]):
        self.states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return _families(self.states)


class StateDirCollector(Collector):
    """Collects the newest check per model found under ``state_dir`` (``**/decision.json``) at every scrape."""

    def __init__(self, state_dir: str | Path):
        self.state_dir = Path(state_dir)

    def states(self) -> list[dict[str, Any]]:
        newest: dict[str, dict[str, Any]] = {}
        for path in self.state_dir.rglob("decision.json"):
            st = state_from_folder(path.parent)
            if st is None:
                continue
            t = float(st["decision"].get("checked_at", 0))
            if st["model"] not in newest or t > float(newest[st["model"]]["decision"].get("checked_at", 0)):
                newest[st["model"]] = st
        return list(newest.values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return _families(self.states())


def registry_for(states: list[dict[str, Any]]) -> CollectorRegistry:
    """A registry exposing the given check states."""
    reg = CollectorRegistry()
    reg.register(_StaticCollector(states))
    return reg


def write_textfile(result: Any, path: str | Path) -> Path:
    """Write the metrics of one check in the node-exporter textfile-collector format (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry_for([state_from_result(result)]))
    return path


def serve_metrics(state_dir: str | Path, port: int = 9108, host: str = "127.0.0.1"):
    """Start the scrape endpoint in a daemon thread; returns ``(server, thread)``.

    Bound to 127.0.0.1 by default: expose it through a sidecar / ServiceMonitor, not a public interface.
    """
    # lazy: prometheus_client is only needed for metrics export
    from prometheus_client import start_http_server

    reg = CollectorRegistry()
    reg.register(StateDirCollector(state_dir))
    return start_http_server(port, addr=host, registry=reg)
