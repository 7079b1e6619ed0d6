"""drift_check end to end: reports on disk, the decision in a real (sqlite) MLflow, the CLI's exit codes,
a trained model bundle as the reference, Prometheus exposition and the shipped alert rules / dashboard."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from importlib import resources

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from genexflow.errors import InputError
from genexflow.monitoring import scenarios
from genexflow.monitoring.check import drift_check, resolve_reference
from genexflow.monitoring.metrics import serve_metrics
from genexflow.monitoring.policy import DriftPolicy
from genexflow.profile import build_reference_profile
from genexflow.simulate import simulate_cohort

FAST = dict(feature_groups=("qc", "pca"), max_pathways=3)  # Evidently on ~17 columns keeps the tests quick


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    cohort, truth = simulate_cohort(n_samples=300, n_genes=300, n_batches=4, seed=3,
                                    batch_labels=["b1", "b2", "b3", "site_9"])
    known = cohort.samples["batch"].to_numpy() != "site_9"
    ref, same = scenarios.split(cohort.subset(known), 0.5, seed=3)
    prof = build_reference_profile(ref, batch_column="batch", covariates=("age", "sex"), label_column="label",
                                   gene_sets=truth.pathways)
    prof.save(root / "reference")
    shifted = cohort.subset(~known)
    same.write(root / "same")
    shifted.write(root / "shifted")
    return {"root": root, "uri": f"sqlite:///{root / 'mlflow.db'}", "prof": prof, "same": same,
            "shifted": shifted, "truth": truth}


@pytest.fixture(scope="module")
def drifted(world):
    out = world["root"] / "out-shifted"
    res = drift_check(world["shifted"], world["root"] / "reference", out_dir=out,
                      mlflow_tracking_uri=world["uri"], model_key="demo-model", **FAST)
    return res


def test_drift_check_writes_every_report(drifted):
    res = drifted
    assert res.drift and {"batch", "gene"} <= set(res.decision.reason_kinds)
    for key in ("evidently_html", "evidently_json", "gene_table", "gene_top", "pathways", "decision", "metrics",
                "features", "novelty", "covariates"):
        assert res.files[key].is_file(), key
    html = res.files["evidently_html"].read_text()
    assert "<html" in html.lower() and "qc_detected_fraction" in html
    ev = json.loads(res.files["evidently_json"].read_text())
    assert any(m["config"]["type"].endswith("DriftedColumnsCount") for m in ev["metrics"])
    table = pd.read_parquet(res.files["gene_table"])
    assert len(table) == 300 and table["drifted"].sum() == res.reports["gene"].n_drifted
    decision = json.loads(res.files["decision"].read_text())
    assert decision["drift"] is True and decision["mlflow_run_id"] == res.mlflow_run_id
    assert decision["evidence"]["batch"]["unseen_levels"] == ["site_9"]
    assert decision["evidence"]["check"]["model_key"] == "demo-model"


def test_decision_and_evidence_are_in_mlflow(world, drifted):
    client = mlflow.MlflowClient(tracking_uri=world["uri"])
    run = client.get_run(drifted.mlflow_run_id)
    assert run.data.tags["genexflow.drift"] == "yes"
    assert set(run.data.tags["genexflow.drift_reasons"].split(",")) >= {"batch", "gene"}
    assert run.data.metrics["drift"] == 1.0
    assert run.data.metrics["gene_drift_share"] == pytest.approx(drifted.reports["gene"].drift_share)
    assert run.data.params["policy.gene_fdr"] == str(DriftPolicy().gene_fdr)
    names = {a.path for a in client.list_artifacts(run.info.run_id, "drift")}
    assert {"drift/evidently_report.html", "drift/evidently_report.json", "drift/gene_drift.parquet",
            "drift/decision.json"} <= names
    logged = json.loads(open(client.download_artifacts(run.info.run_id, "decision.json")).read())
    assert logged["drift"] is True and logged["reasons"]


def test_same_distribution_with_evidently_is_not_drift(world):
    res = drift_check(world["same"], world["prof"], out_dir=world["root"] / "out-same", mlflow_tracking_uri="none",
                      **FAST)
    assert not res.drift, str(res.decision)
    assert res.reports["feature"].drift_share < 0.5
    assert res.mlflow_run_id is None


def test_textfile_metrics_parse(drifted):
    text = drifted.files["metrics"].read_text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    detected = fams["genexflow_drift_detected"].samples[0]
    assert detected.labels == {"model": "demo-model"} and detected.value == 1.0
    reasons = {s.labels["kind"]: s.value for s in fams["genexflow_drift_reason"].samples}
    assert reasons["batch"] == 1.0 and reasons["performance"] == 0.0
    assert fams["genexflow_drift_unseen_batch_fraction"].samples[0].value == 1.0
    feats = {s.labels["feature"] for s in fams["genexflow_drift_feature_score"].samples}
    assert "qc_detected_fraction" in feats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scrape_endpoint_serves_the_newest_check_per_model(world, drifted):
    port = _free_port()
    server, thread = serve_metrics(world["root"], port=port)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    by_model = {s.labels["model"]: s.value for s in fams["genexflow_drift_detected"].samples}
    assert by_model["demo-model"] == 1.0
    assert server.server_address[0] == "127.0.0.1"


def test_alert_rules_and_dashboard_use_exposed_metrics(drifted):
    exposed = {f.name for f in text_string_to_metric_families(drifted.files["metrics"].read_text())}
    pkg = resources.files("genexflow.monitoring")
    rules = yaml.safe_load(pkg.joinpath("alerts.yaml").read_text())
    assert rules["kind"] == "PrometheusRule" and rules["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = [r for g in rules["spec"]["groups"] for r in g["rules"]]
    assert {"GenexflowDriftDetected", "GenexflowUnseenBatch", "GenexflowDriftCheckStale"} <= {a["alert"] for a in alerts}
    used = set()
    for a in alerts:
        assert a["labels"]["severity"] in ("info", "warning", "critical")
        assert a["annotations"]["summary"]
        used |= set(re.findall(r"genexflow_drift_\w+", a["expr"]))
    assert used <= exposed, used - exposed
    dash = json.loads(pkg.joinpath("grafana_dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    dash_used = {m for e in exprs for m in re.findall(r"genexflow_drift_\w+", e)}
    assert dash_used <= exposed and len(dash["panels"]) >= 8
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_cli_exit_codes_and_json(world):
    """The installed entry point exits 3 on drift (schedulers act on it), 0 without, 2 on bad input."""
    from typer.testing import CliRunner

    from genexflow.cli.main import app

    args = ["--model", str(world["root"] / "reference"), "--tracking-uri", "none", "--no-evidently", "--json"]
    res = subprocess.run([sys.executable, "-m", "genexflow", "drift", str(world["root"] / "shifted"),
                          "--out", str(world["root"] / "cli-shifted"), *args],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 3, res.stderr
    assert json.loads(res.stdout)["drift"] is True
    runner = CliRunner()
    same = runner.invoke(app, ["drift", str(world["root"] / "same"), "--out", str(world["root"] / "cli-same"), *args])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["drift"] is False
    nofail = runner.invoke(app, ["drift", "check", str(world["root"] / "shifted"), "--out",
                                 str(world["root"] / "cli-nofail"), "--no-fail-on-drift", *args])
    assert nofail.exit_code == 0 and json.loads(nofail.stdout)["drift"] is True
    bad = runner.invoke(app, ["drift", str(world["root"] / "nope"), *args])
    assert isinstance(bad.exception, InputError) and "no such cohort" in str(bad.exception)
    # the metrics of those checks, printed once
    once = runner.invoke(app, ["drift", "serve-metrics", "--state-dir", str(world["root"]), "--once"])
    assert once.exit_code == 0 and "genexflow_drift_detected" in once.stdout


def test_policy_from_yaml_changes_the_decision(world, tmp_path):
    (tmp_path / "p.yaml").write_text("policy:\n  max_gene_drift_share: 0.99\n  triggers: [gene, covariate]\n")
    policy = DriftPolicy.from_file(tmp_path / "p.yaml")
    res = drift_check(world["shifted"], world["prof"], policy=policy, out_dir=tmp_path / "o",
                      mlflow_tracking_uri="none", evidently=False)
    assert not res.drift  # unseen batch and novelty are reported but do not trigger under this policy
    assert "batch" in res.decision.reason_kinds
    (tmp_path / "bad.yaml").write_text("max_gene_drift: 0.1\n")
    with pytest.raises(InputError, match="unknown drift policy key"):
        DriftPolicy.from_file(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="unknown drift trigger"):
        DriftPolicy(triggers=("genes",))


def test_too_few_samples_is_no_decision(world, tmp_path):
    res = drift_check(world["shifted"].subset(np.arange(5)), world["prof"], out_dir=tmp_path,
                      mlflow_tracking_uri="none", evidently=False)
    assert not res.drift and "min_samples" in res.decision.notes[0]


def test_resolve_reference_errors(tmp_path):
    (tmp_path / "bundle.json").write_text("{}")
    with pytest.raises(InputError, match="no reference/ profile"):
        resolve_reference(tmp_path)
    with pytest.raises(InputError, match="no such reference"):
        resolve_reference(tmp_path / "missing")


def test_trained_bundle_reference_gives_latent_predictions_and_performance(tmp_path):
    """A real model bundle (training writes reference/ with the model's latent space and predictions)."""
    from genexflow.training.config import TrainConfig
    from genexflow.training.model import TrainedModel

    cohort, _ = simulate_cohort(n_samples=120, n_genes=150, seed=7)
    train, new = scenarios.split(cohort, 0.6, seed=7)
    cfg = TrainConfig(label="label", batch_column="batch", covariates=["age", "sex"], epochs=2, patience=1,
                      num_threads=1)
    model = TrainedModel.fit(train, cfg)
    model.info.metrics = {"balanced_accuracy": 0.99}  # as if cross-validation had been perfect
    bundle = model.save(tmp_path / "bundle", reference=train)
    res = drift_check(new, bundle, out_dir=tmp_path / "out", mlflow_tracking_uri="none", evidently=False)
    prof = resolve_reference(bundle)[0]
    assert prof.columns("latent") and prof.columns("prediction")
    assert res.reports["novelty"].space == "latent"
    perf = res.reports["performance"]
    assert perf.reference == 0.99 and perf.n_labelled == new.n_samples
    assert perf.decay == pytest.approx(0.99 - perf.current)
    feats = pd.read_parquet(res.files["features"])
    assert any(c.startswith("pred_prob_") for c in feats.columns)
    assert any(c.startswith("latent_") for c in feats.columns)


def test_shipped_cohorts(tmp_path):
    """Real data: bladderbatch arrays (batches 4 and 5 unseen) and GEUVADIS counts (halves; men only)."""
    from genexflow import datasets

    b = datasets.load_bladderbatch()
    known = b.samples["batch"].isin(["1", "2", "3"]).to_numpy()
    prof = build_reference_profile(b.subset(known), batch_column="batch", label_column="cancer")
    res = drift_check(b.subset(~known), prof, out_dir=tmp_path / "b", mlflow_tracking_uri="none", evidently=False)
    assert res.drift and res.reports["batch"].unseen_levels == ["4", "5"]

    g = datasets.load_geuvadis_sex()
    ref, new = scenarios.split(g, 0.5, seed=0)
    prof = build_reference_profile(ref, covariates=("sex",), gene_sets=None)
    same = drift_check(new, prof, out_dir=tmp_path / "g", mlflow_tracking_uri="none", evidently=False)
    assert not same.drift, str(same.decision)
    men = drift_check(g.subset((g.samples["sex"] == "Male").to_numpy()), prof, out_dir=tmp_path / "m",
                      mlflow_tracking_uri="none", evidently=False)
    assert men.drift and men.decision.reason_kinds == ["covariate"]
    with pytest.raises(InputError, match="no samples"):
        drift_check(g.subset(np.zeros(g.n_samples, bool)), prof, out_dir=tmp_path / "e", mlflow_tracking_uri="none")
