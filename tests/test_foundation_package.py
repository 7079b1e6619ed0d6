"""Package, datasets and CLI: wheel contents, shipped cohorts, --help everywhere, one-line errors."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from genexflow import datasets

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "genexflow"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("name,shape,label", [("golub", (38, 3051), "label"),
                                               ("geuvadis_sex", (85, 3007), "sex"),
                                               ("bladderbatch", (57, 2000), "cancer")])
def test_shipped_cohorts(name, shape, label):
    c = datasets.load(name)
    assert c.shape == shape
    assert c.samples[label].notna().all()
    assert c.meta["license"] and c.meta["citation"]
    assert np.isfinite(c.X).all()


def test_bladderbatch_subset_equals_shared(shared_data):
    import pandas as pd

    c = datasets.load_bladderbatch()
    full = pd.read_parquet(shared_data / "bladderbatch" / "expression.parquet").set_index("sample_id")
    np.testing.assert_array_equal(c.X, full.loc[c.sample_ids, list(c.genes)].to_numpy())
    assert c.samples["batch"].nunique() == 5


def test_wheel_ships_layout_folders(tmp_path):
    """components/, pipelines/, serving/, monitoring/ must import from an installed wheel, not a checkout."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("genexflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for sub in ("components", "pipelines", "serving", "monitoring"):
        assert f"genexflow/{sub}/__init__.py" in names, sub
    assert "genexflow/datasets/data/golub_expression.parquet" in names
    # import from the unpacked wheel alone (site dir first, repo not on the path)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (f"import sys; sys.path.insert(0, {str(site)!r}); import genexflow, genexflow.components, "
            "genexflow.pipelines, genexflow.serving, genexflow.monitoring; from genexflow import datasets; "
            f"assert genexflow.__file__.startswith({str(site)!r}), genexflow.__file__; "
            "print(datasets.load_golub().shape)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "(38, 3051)" in res.stdout


def test_every_command_has_help():
    from typer.main import get_command

    from genexflow.cli.main import app

    root = get_command(app)
    paths = []

    def walk(cmd, prefix):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*prefix, name])
        else:
            paths.append(prefix)

    walk(root, [])
    assert ["simulate"] in paths and ["datasets", "export"] in paths
    from typer.testing import CliRunner

    runner = CliRunner()
    for path in paths:  # in-process: one interpreter, not one per command
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output[-500:])
        assert "Usage" in res.output and len(res.output.splitlines()) > 3


def test_bad_input_is_one_line_error(tmp_path):
    (tmp_path / "empty.parquet").write_bytes(b"")
    res = run("datasets", "export", "nope", "-o", str(tmp_path / "x"))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines == ["error: unknown dataset 'nope'; shipped: golub, geuvadis_sex, bladderbatch"]
    res = run("--debug", "datasets", "export", "nope", "-o", str(tmp_path / "x"))
    assert "Traceback" in res.stderr


def test_simulate_cli_writes_cohort_and_truth(tmp_path):
    res = run("simulate", "-o", str(tmp_path / "sim"), "--n-samples", "30", "--n-genes", "200", "--seed", "4")
    assert res.returncode == 0, res.stderr
    from genexflow import Cohort
    from genexflow.simulate import simulate_cohort

    got = Cohort.read(tmp_path / "sim")
    ref, truth = simulate_cohort(n_samples=30, n_genes=200, seed=4)
    np.testing.assert_array_equal(got.X, ref.X)
    assert (tmp_path / "sim" / "truth.json").exists() and (tmp_path / "sim" / "pathways.gmt").exists()
    assert truth.informative_pathways[0] in (tmp_path / "sim" / "pathways.gmt").read_text()
