"""``genexflow priors list | build | score`` on tiny files."""

from __future__ import annotations

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from genexflow.cli.main import app
from genexflow.errors import InputError
from genexflow.io import write_matrix
from genexflow.priors import GenePriors, load_gene_sets


def _matrix(tmp_path):
    kegg = load_gene_sets("kegg")
    genes = sorted({g for k in ("hsa04110", "hsa04115") for g in kegg[k]})
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(12, len(genes))), columns=genes,
                     index=pd.Index([f"s{i}" for i in range(12)], name="sample_id"))
    return write_matrix(X, tmp_path / "x.parquet"), X, kegg


def test_priors_cli_build_score_and_errors(tmp_path):
    path, X, kegg = _matrix(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["priors", "list"])
    assert r.exit_code == 0 and "go_bp" in r.output

    r = runner.invoke(app, ["priors", "build", str(path), "--out", str(tmp_path / "pri"), "--min-size", "20"])
    assert r.exit_code == 0, r.output
    pri = GenePriors.load(tmp_path / "pri")
    assert pri.genes == list(X.columns) and {"hsa04110", "hsa04115"} <= set(pri.pathways)

    edges = tmp_path / "string.txt"
    g = list(X.columns)
    edges.write_text("protein1 protein2 combined_score\n" + f"{g[0]} {g[1]} 900\n{g[1]} {g[2]} 500\n")
    r = runner.invoke(app, ["priors", "build", str(path), "--out", str(tmp_path / "pri_e"), "--graph",
                            "edge_list", "--edge-list", str(edges)])
    assert r.exit_code == 0, r.output
    assert GenePriors.load(tmp_path / "pri_e").graph.n_edges == 4

    r = runner.invoke(app, ["priors", "score", str(path), "--out", str(tmp_path / "s.csv"), "--min-size", "20"])
    assert r.exit_code == 0, r.output
    S = pd.read_csv(tmp_path / "s.csv", index_col=0)
    members = [x for x in kegg["hsa04110"] if x in X.columns]
    np.testing.assert_allclose(S["hsa04110"], X[members].mean(1), rtol=1e-6)

    r = runner.invoke(app, ["priors", "build", str(path), "--out", str(tmp_path / "bad"), "--gene-sets",
                            str(tmp_path / "missing.gmt")])
    assert isinstance(r.exception, InputError) and "not found" in str(r.exception)
