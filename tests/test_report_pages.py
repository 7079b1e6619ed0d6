"""The training run's report, from a tiny real tracked run: every section is on the page, the numbers are
the run's (CV table against CVResult), the page is self-contained and under budget, it is logged to
MLflow, the pipeline's last step fills the model card from the registry, and a real headless Chromium
opens it without console errors or broken images (screenshot saved under the test's tmp folder)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _browser import Browser, chromium_binary

from genexflow.report import (
    MAX_BYTES,
    RUN_SECTIONS,
    corrected_t_interval,
    finalize_run_report,
    read_page_data,
    update_card,
)
from genexflow.simulate import simulate_cohort
from genexflow.training.config import MODEL_PRESETS, TrainConfig


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    from genexflow.training.run import train_and_track

    tmp = tmp_path_factory.mktemp("report-run")
    c, _ = simulate_cohort(n_samples=60, n_genes=200, n_pathways=10, seed=3)
    c.X = c.X.astype(np.float32)
    c.X[0, 5] = np.nan  # one missing value: the report must say it was imputed, and where
    cfg = TrainConfig(label="label", epochs=3, lr=1e-3, batch_size=16, batch_column="batch", num_threads=1,
                      model=MODEL_PRESETS["tiny"], wide_init="none")
    uri = f"sqlite:///{tmp}/mlflow.db"
    out = train_and_track(c, cfg, cv=2, baselines=["logreg_l2", "hist_gb"], tracking_uri=uri, out=tmp / "bundle",
                          explain_samples=12, explain_methods=("attention", "integrated_gradients"),
                          run_name="report")
    return out, c, uri, tmp


def test_report_has_every_section_and_the_runs_numbers(run):
    out, cohort, _, _ = run
    html = out.report_path.read_text()
    assert out.report_path == out.bundle_dir / "report.html"
    assert out.report_path.stat().st_size < MAX_BYTES
    for sid in RUN_SECTIONS:
        assert f"<section id='{sid}'>" in html
    assert "http://" not in re.sub(r"href='[^']*'", "", html).replace("http://www.w3.org", "")  # nothing fetched
    data = read_page_data(out.report_path)
    assert data["cohort"]["n_samples"] == cohort.n_samples
    assert data["cohort"]["imputed"]["n_cells"] == 1
    assert data["cohort"]["imputed"]["samples"] == {str(cohort.sample_ids[0]): 1}
    # CV table: means are the CVResult's, the paired difference is the mean per-fold difference
    s = out.cv.summary(["balanced_accuracy"])
    rows = {r["model"]: r for r in data["cv"]["rows"]}
    assert set(rows) == set(s.index)
    for m, r in rows.items():
        assert r["mean"] == pytest.approx(s.loc[m, "balanced_accuracy_mean"])
        assert 0.0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1.0  # clipped to the metric's range
    best = max((m for m in rows if m != "pathwaynet"), key=lambda m: rows[m]["mean"])
    assert rows[best]["is_best_baseline"]
    f = out.cv.folds.pivot_table(index="split", columns="model", values="balanced_accuracy")
    assert rows["pathwaynet"]["diff"] == pytest.approx((f["pathwaynet"] - f[best]).mean())
    # the registry gate's stable estimate, as training recorded it in the bundle
    oof = out.model.info.metrics["oof"]["vs_best_baseline"]
    assert data["cv"]["gate_estimate"]["difference"] == pytest.approx(oof["difference"])
    assert "The registry gate decides on the pooled out-of-fold estimate" in html
    # batch views: the correction lowers the batch silhouette of the simulator's planted batch effect
    views = data["batch"]["views"]
    assert views["after"]["batch_silhouette"] < views["before"]["batch_silhouette"]
    assoc = data["batch"]["association"]
    assert assoc["test"] == "chi-squared" and sum(map(sum, (r.values() for r in assoc["table"].values()))) == 60
    # biology: top pathways link to KEGG
    assert "https://www.kegg.jp/pathway/hsa" in html
    assert data["card"]["data"]["md5"] == out.model.info.lineage["dataset"]["md5"]


def test_report_is_logged_to_mlflow(run):
    from mlflow.tracking import MlflowClient

    out, _, uri, tmp = run
    client = MlflowClient(uri)
    assert "report/report.html" in [a.path for a in client.list_artifacts(out.run_id, "report")]
    tag = client.get_run(out.run_id).data.tags["genexflow.report"]
    assert tag.endswith("/report/report.html")
    assert read_page_data(out.report_path)["card"]["mlflow"]["report_uri"] == tag


def test_pipeline_step_fills_the_model_card_from_the_registry(run):
    """The final pipeline step reads version, aliases, gate and infra tags and re-renders the card."""
    import json

    from mlflow.tracking import MlflowClient

    out, _, uri, tmp = run
    client = MlflowClient(uri)
    name = "report-test-model"
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{out.run_id}/bundle", run_id=out.run_id)
    client.set_registered_model_alias(name, "champion", mv.version)
    metrics = {"challenger": {"balanced_accuracy": 0.9}, "champion": None, "baselines": {"logreg_l2": 0.85},
               "oof_vs_best_baseline": {"difference": 0.05, "ci_low": -0.01, "ci_high": 0.11, "baseline": "logreg_l2"}}
    for k, v in {"gate.decision": "pass", "gate.reason": "beats best baseline logreg_l2 by +0.0500",
                 "gate.metrics": json.dumps(metrics), "gate.policy": json.dumps({"metric": "balanced_accuracy",
                                                                                 "margin": 0.0, "baseline_margin": 0.0}),
                 "infra.decision": "pass", "infra.reason": "Triton answers = onnxruntime",
                 "infra.details": json.dumps({"max_abs_diff": 1e-7, "n_requests": 4})}.items():
        client.set_model_version_tag(name, mv.version, k, v)
    report_uri = finalize_run_report(out.run_id, uri, model_name=name, outcome={"state": "SUCCEEDED"})
    assert report_uri.endswith("/report/report.html")
    got = client.get_model_version(name, mv.version)
    assert got.tags["genexflow.report"] == report_uri and report_uri in got.description
    local = client.download_artifacts(out.run_id, "report/report.html", str(tmp / "dl"))
    card = read_page_data(local)["card"]
    assert card["registry"]["version"] == int(mv.version) and card["registry"]["aliases"] == ["champion"]
    assert card["gate"]["decision"] == "pass" and "+0.0500 (95% CI -0.0100 to +0.1100) out-of-fold vs best baseline logreg_l2" in card["gate"]["margin"]
    assert card["infra"]["details"]["n_requests"] == 4 and card["outcome"]["state"] == "SUCCEEDED"
    html = open(local).read()
    assert "The registry gate passed for version" in html
    # a second update keeps the rest of the data
    update_card(local, {"outcome": {"state": "FAILED"}})
    assert read_page_data(local)["card"]["registry"]["version"] == int(mv.version)


def test_corrected_interval_matches_scipy():
    from scipy import stats

    v = np.array([0.71, 0.8, 0.77, 0.9, 0.68, 0.74])
    m, s, lo, hi = corrected_t_interval(v, 0.25)
    ref = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=np.sqrt(1 / len(v) + 0.25) * v.std(ddof=1))
    assert (m, s) == pytest.approx((v.mean(), v.std(ddof=1)))
    assert (lo, hi) == pytest.approx(ref)


@pytest.mark.skipif(chromium_binary() is None, reason="chromium is not installed (Debian package `chromium`)")
def test_report_opens_in_chromium(run, tmp_path):
    out, _, _, _ = run
    with Browser(tmp_path / "profile") as b:
        b.open(out.report_path, ready="['ready', 'failed'].includes(document.body.dataset.plots)")
        assert b.eval("document.body.dataset.plots") == "ready"
        assert b.eval("Array.from(document.querySelectorAll('section')).map(s => s.id)") == list(RUN_SECTIONS)
        n_plots = b.eval("document.querySelectorAll('.gx-plot').length")
        assert n_plots >= 5 and b.eval("document.querySelectorAll('.gx-plot .main-svg').length") >= n_plots
        assert b.eval("document.images.length") >= 3
        assert b.eval("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length") == 0
        shot = b.screenshot(tmp_path / "report.png")
        assert b.errors == []
    assert shot.stat().st_size > 50_000


def test_terminal_summary_reads_the_report(run):
    """What genexflow train/run print at the end: CV table, value type, imputation, gate, report path."""
    from rich.console import Console

    from genexflow.cli._summary import print_run_summary

    out, cohort, _, _ = run
    con = Console(record=True, width=160)
    print_run_summary(con, out.report_path)
    text = con.export_text()
    rows = {r["model"]: r for r in read_page_data(out.report_path)["cv"]["rows"]}
    deep = rows["pathwaynet"]
    assert f"{deep['mean']:.3f} ± {deep['sd']:.3f}" in text and f"{deep['diff']:+.3f}" in text
    assert "best baseline" in text and "value type: counts" in text
    assert "imputed: 1 missing value(s) by KNN" in text and str(cohort.sample_ids[0]) in text
    assert "gate: Not gated" in text and str(out.report_path.resolve()) in text.replace("\n", "")


# ------------------------------------------------------------------------------------------------ drift page
@pytest.fixture(scope="module")
def drift(run):
    """A real drift check of the run's model on a shifted cohort with an unseen batch."""
    from genexflow.monitoring.check import drift_check
    from genexflow.report import write_drift_page

    out, cohort, _, tmp = run
    new = cohort.subset(np.arange(40))
    new.X = new.X.astype(np.float32)
    new.X[:, :30] *= 6  # thirty genes shift up
    new.samples = new.samples.copy()
    new.samples.loc[new.samples.index[:10], "batch"] = "batch9"  # a site the model never saw
    res = drift_check(new, out.bundle_dir, out_dir=tmp / "drift", mlflow_tracking_uri="none", max_pathways=10)
    return res, write_drift_page(tmp / "drift")


def test_drift_page_shows_the_checks_findings(drift):
    from genexflow.report import DRIFT_SECTIONS

    res, page = drift
    html = page.read_text()
    for sid in DRIFT_SECTIONS:
        assert f"<section id='{sid}'>" in html
    assert res.decision.drift and page.stat().st_size < MAX_BYTES
    data = read_page_data(page)["decision"]
    assert data["evidence"]["batch"]["unseen_levels"] == ["batch9"] and "batch9" in html
    top = res.reports["gene"].top_genes(5).index
    assert all(g in html for g in top)
    assert "href='evidently_report.html'" in html and (page.parent / "evidently_report.html").exists()


@pytest.mark.skipif(chromium_binary() is None, reason="chromium is not installed (Debian package `chromium`)")
def test_drift_page_opens_in_chromium(drift, tmp_path):
    from genexflow.report import DRIFT_SECTIONS

    _, page = drift
    with Browser(tmp_path / "profile") as b:
        b.open(page, ready="['ready', 'failed'].includes(document.body.dataset.plots) || !document.querySelector('.gx-plot')")
        assert b.eval("Array.from(document.querySelectorAll('section')).map(s => s.id)") == list(DRIFT_SECTIONS)
        assert b.eval("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length") == 0
        assert b.eval("document.body.dataset.plots || 'none'") in ("ready", "none")
        b.screenshot(tmp_path / "drift.png")
        assert b.errors == []


def test_quarantine_reasons_come_from_ingests_folder(tmp_path):
    """The QC section lists what ingest's quarantine writer recorded (reasons.csv), with counts per kind."""
    import pandas as pd

    from genexflow.ingest.quarantine import QuarantineRecord, write_quarantine
    from genexflow.report.collect import cohort_section
    from genexflow.report.render import cohort_body

    c, _ = simulate_cohort(n_samples=12, n_genes=200, n_pathways=8, seed=1)
    recs = [QuarantineRecord("sample", "S_bad", "cohort", "no_negative_counts", None, -3, "negative count -3"),
            QuarantineRecord("gene", "GENE_X", "genes", "known_gene_id", "feature_id", "GENE_X", "unmapped ID")]
    sheet = pd.DataFrame({"label": ["a"]}, index=pd.Index(["S_bad"], name="sample_id"))
    qdir = write_quarantine(tmp_path / "q" / "run1", "run1", recs, sheet=sheet)
    c.meta["lineage"] = {"quarantine": {"dir": str(qdir), "counts": {"gene": 1, "sample": 1}, "n_reasons": 2}}
    c.meta["value_type_detected"] = "integer values up to 5e4: counts"  # what ingest records when it detects
    cfg = TrainConfig(label="label", batch_column="batch")
    sec = cohort_section(c, cfg, None, None)
    q = sec["quarantine"]
    assert q["counts"] == {"gene": 1, "sample": 1}
    by_id = {r["id"]: r for r in q["reasons"]}
    assert set(by_id) == {"S_bad", "GENE_X"} and by_id["S_bad"]["message"] == "negative count -3"
    html = cohort_body(sec)
    assert "1 gene, 1 sample" in html and "negative count -3" in html and "unmapped ID" in html
    assert "counts (detected: integer values up to 5e4: counts)" in html


def test_pathways_show_names_ids_and_links():
    """Names from the run's priors (the explanation's name columns) or the shipped collections (GO), next to
    the ID, linked to the pathway's page; crosstalk pairs by name too."""
    import pandas as pd

    from genexflow.report.collect import biology_section
    from genexflow.report.render import biology_body
    from genexflow.training.interpret import Explanation

    genes = pd.DataFrame({"integrated_gradients": [0.3, 0.2]}, index=pd.Index(["TP53", "MYC"], name="gene"))
    pw = pd.DataFrame({"n_genes": [20, 30, 25], "integrated_gradients": [0.5, 0.4, 0.1],
                       "name": ["", "Cell cycle", ""]}, index=pd.Index(["GO:0000002", "hsa04110", "R-HSA-1"], name="pathway"))
    enr = pd.DataFrame({"overlap": [3], "set_size": [20], "fold_enrichment": [4.0], "p_value": [1e-4], "fdr": [0.01]},
                       index=pd.Index(["GO:0000002"], name="set"))
    pairs = pd.DataFrame({"pathway_a": ["GO:0000002"], "name_a": [""], "pathway_b": ["hsa04110"],
                          "name_b": ["Cell cycle"], "strength": [0.7]})
    ex = Explanation(genes, pw, enr, {}, ["s1", "s2"], "integrated_gradients", pairs)
    bio = biology_section(ex)
    names = {p["id"]: p["name"] for p in bio["pathways"]}
    assert names == {"GO:0000002": "mitochondrial genome maintenance", "hsa04110": "Cell cycle", "R-HSA-1": None}
    assert bio["pathways"][0]["fdr"] == 0.01 and bio["crosstalk"][0]["b_name"] == "Cell cycle"
    html = biology_body(bio)
    assert "href='https://amigo.geneontology.org/amigo/term/GO:0000002'" in html
    assert "href='https://www.kegg.jp/pathway/hsa04110'" in html and "href='https://reactome.org/content/detail/R-HSA-1'" in html
    assert html.count("mitochondrial genome maintenance") >= 3  # top pathways, enrichment, crosstalk
