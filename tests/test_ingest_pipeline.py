"""End-to-end ingestion: shipped cohorts, the simulator, reports, idempotent reruns, DVC lineage, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from _ingest_helpers import counts_frame, reasons, run, sheet_frame, write_cohort

from genexflow import datasets
from genexflow.cohort import Cohort
from genexflow.errors import ValidationError
from genexflow.ingest import IngestConfig, dvc_md5, ingest
from genexflow.ingest.lineage import LineageError, file_md5, record_dvc


def _ingest(tmp_path, cohort, name, **kw):
    cfg = IngestConfig(data_docs=False, dvc="off", **kw.pop("config", {}))
    return ingest(cohort, out_dir=tmp_path / "data" / "validated" / name,
                  quarantine_root=tmp_path / "data" / "quarantine", config=cfg, **kw)


# --------------------------------------------------------------------------- shipped cohorts
def test_golub_with_probe_map(tmp_path):
    res = _ingest(tmp_path, datasets.load_golub(), "golub", label_column="label", allowed_labels=["ALL", "AML"],
                  config={"probe_map": datasets.golub_probe_map()})
    c = res.cohort
    assert c.n_samples == 38 and res.quarantined and all(r.kind == "gene" for r in res.quarantined)
    assert 0.70 < res.mapping_rate < 0.76
    assert {"STAT1", "GAPDH", "ACTB", "MPO", "CD33"} <= set(c.genes)
    assert c.meta["lineage"]["duplicate_policy"] == "max-variance"
    assert c.meta["license"] == "LGPL"  # provenance of the shipped cohort is carried over
    # every input probe is either behind a validated gene or in the quarantine
    n_quarantined = reasons(res)["id"].nunique()
    merged_from = c.meta["lineage"]["gene_ids"]["n_features"] - n_quarantined
    assert merged_from >= c.n_genes and merged_from == 3051 - n_quarantined


def test_golub_probes_kept_without_map(tmp_path):
    res = _ingest(tmp_path, datasets.load_golub(), "golub", label_column="label")
    assert res.mapping_rate is None and res.cohort.n_genes == 3051 and not res.quarantined
    assert any("3051 array probe IDs kept as features" in w for w in res.warnings)


def test_geuvadis_sex_counts(tmp_path):
    res = _ingest(tmp_path, datasets.load_geuvadis_sex(), "geuvadis_sex", label_column="sex",
                  allowed_labels=["Female", "Male"])
    c = res.cohort
    assert c.n_samples == 85 and res.mapping_rate > 0.99
    assert {"RPS4Y1", "DDX3Y"} <= set(c.genes)  # chrY genes that carry the sex signal
    assert np.issubdtype(c.X.dtype, np.integer)
    assert {r.kind for r in res.quarantined} <= {"gene"}


def test_bladderbatch_with_batches(tmp_path):
    res = _ingest(tmp_path, datasets.load_bladderbatch(), "bladderbatch", label_column="cancer",
                  allowed_labels=["Normal", "Biopsy", "Cancer"], batch_column="batch")
    assert res.cohort.shape == (57, 2000) and not res.quarantined
    assert sorted(res.cohort.samples["batch"].unique()) == ["1", "2", "3", "4", "5"]
    assert not any("no batch column" in w for w in res.warnings)


def test_shared_data_files(tmp_path, shared_data):
    """The raw files of shared/data, as a user would pass them: bladderbatch (22283 probes), marioni counts."""
    d = shared_data
    res = ingest(d / "bladderbatch" / "expression.parquet", d / "bladderbatch" / "samples.csv",
                 value_type="log-expression", label_column="cancer", batch_column="batch",
                 out_dir=tmp_path / "v" / "bb", quarantine_root=tmp_path / "q",
                 config=IngestConfig(data_docs=False, dvc="off"))
    assert res.cohort.shape == (57, 22283) and res.run_id.startswith("bladderbatch-")
    res = ingest(d / "marioni_noiseq" / "counts.parquet", d / "marioni_noiseq" / "samples.csv",
                 value_type="counts", label_column="tissue", batch_column="run",
                 out_dir=tmp_path / "v" / "marioni", quarantine_root=tmp_path / "q",
                 config=IngestConfig(data_docs=False, dvc="off", min_samples=3))
    assert res.cohort.n_samples == 10 and res.mapping_rate > 0.9


def test_simulator_output(tmp_path):
    from genexflow.simulate import simulate_cohort

    sim, truth = simulate_cohort(n_samples=60, n_genes=600, n_batches=3, seed=3)
    res = _ingest(tmp_path, sim, "sim", label_column="label", allowed_labels=truth.class_names,
                  batch_column="batch", covariates=["age", "sex"])
    assert res.cohort.shape == sim.shape and res.mapping_rate == 1.0 and not res.quarantined
    np.testing.assert_array_equal(res.cohort.frame()[sim.genes].to_numpy(), sim.X)
    # and from the files the simulate command writes
    folder = sim.write(tmp_path / "simfiles")
    res2 = ingest(folder / "expression.parquet", folder / "samples.csv", value_type="counts", label_column="label",
                  batch_column="batch", covariates=["age", "sex"], out_dir=tmp_path / "v2",
                  quarantine_root=tmp_path / "q2", config=IngestConfig(data_docs=False, dvc="off"))
    assert res2.cohort.shape == sim.shape


# --------------------------------------------------------------------------- outputs
def test_written_cohort_report_and_data_docs(tmp_path):
    m = counts_frame()
    m.iloc[1, 1] = -3
    res = run(tmp_path, m, sheet_frame(m.index), data_docs=True)
    back = Cohort.read(res.out_dir)
    np.testing.assert_array_equal(back.X, res.cohort.X)
    assert list(back.genes) == list(res.cohort.genes) and list(back.sample_ids) == list(res.cohort.sample_ids)
    assert back.meta["lineage"]["run_id"] == res.run_id
    assert back.meta["lineage"]["quarantine"]["counts"] == {"sample": 1}
    report = json.loads(res.report_json.read_text())
    assert report["success"] and set(report["gx_results"]) == {"sample_sheet", "features", "samples", "cohort", "genes"}
    failed = {c["name"]: c for c in report["checks"] if not c["success"]}
    neg = failed["expect_column_values_to_be_between(n_negative, max_value=0)"]
    assert neg["unexpected"] == [["S02", 1]] and neg["severity"] == "warning" and neg["rows"] == "quarantine"
    assert report["validated"]["dvc_md5"] == res.dvc_md5 == dvc_md5(res.out_dir)
    html = res.report_html.read_text()
    assert "PASSED" in html and "n_negative" in html and "S02" in html
    assert res.data_docs is not None and res.data_docs.exists()
    assert (res.data_docs.parent / "validations" / "samples").is_dir()
    lineage = json.loads((res.report_json.parent / "lineage.json").read_text())
    assert lineage["validated"]["dvc_md5"] == res.dvc_md5


def test_failed_run_still_writes_report(tmp_path):
    m = counts_frame()
    with pytest.raises(ValidationError) as e:
        run(tmp_path, m, sheet_frame(m.index).drop(columns="label"))
    report = json.loads(open(e.value.details["report_json"]).read())
    assert not report["success"] and report["critical"][0].startswith("[sample_sheet] expect_column_to_exist(label)")
    assert "FAILED" in open(e.value.details["report_html"]).read()
    assert not (tmp_path / "data" / "validated" / "toy").exists()  # nothing validated was written


def test_rerun_is_idempotent(tmp_path):
    m = counts_frame()
    m.iloc[2, 2] = -1
    m.iloc[4] = 0
    expr, sheet = write_cohort(tmp_path / "in", m, sheet_frame(m.index), fmt="parquet")
    inputs = {p: file_md5(p) for p in (expr, sheet)}
    a = run(tmp_path, expr, sheet)
    first = (a.run_id, dvc_md5(a.quarantine_dir), a.dvc_md5, reasons(a))
    b = run(tmp_path, expr, sheet)
    assert (b.run_id, dvc_md5(b.quarantine_dir), b.dvc_md5) == first[:3]
    pd.testing.assert_frame_equal(reasons(b), first[3])
    assert sorted(p.name for p in (tmp_path / "data" / "quarantine").iterdir()) == [a.run_id]  # no duplicates
    assert len(reasons(b)) == 2
    assert {p: file_md5(p) for p in (expr, sheet)} == inputs
    # a different setting is a different run, in its own folder
    c = run(tmp_path, expr, sheet, mad_k=4.0)
    assert c.run_id != a.run_id and len(list((tmp_path / "data" / "quarantine").iterdir())) == 2


# --------------------------------------------------------------------------- DVC lineage
def _git_dvc_repo(path):
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    remote = path.parent / "remote"
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(remote)], cwd=path, check=True)
    (path / ".gitignore").write_text("/data\n")
    return path, remote


def test_dvc_lineage_in_a_repository(tmp_path):
    repo, remote = _git_dvc_repo(tmp_path / "repo")
    m = counts_frame()
    m.iloc[0, 0] = -2
    res = ingest(m, sheet_frame(m.index), value_type="counts", label_column="label", batch_column="batch",
                 out_dir=repo / "data" / "validated" / "toy", quarantine_root=repo / "data" / "quarantine",
                 config=IngestConfig(data_docs=False, dvc="auto", dvc_push=True))
    dvc_file = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]
    assert dvc_file["path"] == "data"
    assert res.lineage["dvc"]["md5"] == dvc_file["md5"]
    # our hashing equals DVC's own for the same folder (DVC wrote data.dvc, we hash data/)
    assert dvc_md5(repo / "data") == dvc_file["md5"]
    assert dvc_file["nfiles"] == sum(1 for p in (repo / "data").rglob("*") if p.is_file())
    assert res.lineage["dvc"]["pushed"] and any(remote.rglob("*"))
    assert res.dvc_md5 == dvc_md5(res.out_dir) and res.dvc_md5.endswith(".dir")


def test_dvc_outside_a_repository(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    rec = record_dvc(folder, mode="auto")
    assert rec["dvc"] == {"note": "not inside a DVC repository"} and rec["md5"].endswith(".dir")
    with pytest.raises(LineageError, match="not inside a DVC repository"):
        record_dvc(folder, mode="add")
    assert dvc_md5(folder / "a.txt") == file_md5(folder / "a.txt")


# --------------------------------------------------------------------------- CLI
def test_cli_ingest(tmp_path, capsys, monkeypatch):
    from genexflow.cli.main import main

    m = counts_frame()
    m.loc["S05"] = 0
    expr, sheet = write_cohort(tmp_path / "toy", m, sheet_frame(m.index), genes_as_rows=True, fmt="tsv")
    monkeypatch.chdir(tmp_path)
    main(["ingest", str(expr), "--samples", str(sheet), "--value-type", "counts", "--label-column", "label",
          "--allowed-labels", "A,B", "--batch-column", "batch", "--covariates", "age,sex", "--no-data-docs",
          "--dvc", "off", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["quarantined"] == {"sample": 1} and out["out_dir"] == "data/validated/toy"
    assert (tmp_path / "data" / "validated" / "toy" / "expression.parquet").exists()
    assert out["run_id"].startswith("toy-")
    with pytest.raises(SystemExit) as e:
        main(["ingest", str(expr), "--samples", str(sheet), "--value-type", "counts", "--batch-column", "plate",
              "--no-data-docs", "--dvc", "off"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: validation failed, 1 critical check(s): [sample_sheet] expect_column_to_exist(plate)" in err
