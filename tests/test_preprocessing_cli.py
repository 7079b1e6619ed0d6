"""CLI: genexflow normalize / filter / impute / combat / combat-seq / combat-report on shared-data-layout files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genexflow.cli.main import main
from genexflow.io import read_matrix
from genexflow.preprocessing import CPMNormalizer, KNNImputer


def _run(args, capsys):
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    n, G = 12, 60
    ids = [f"S{i:02d}" for i in range(n)]
    genes = [f"G{j}" for j in range(G)]
    batch = np.repeat(["A", "B", "C"], 4)
    mu = rng.gamma(1.0, 50, G)
    counts = rng.negative_binomial(5, 5 / (5 + mu * rng.uniform(0.5, 2, (n, 1)))).astype(np.int64)
    counts[:, :3] = rng.integers(0, 3, (n, 3))  # low-count genes
    cdf = pd.DataFrame(counts, index=pd.Index(ids, name="sample_id"), columns=genes)
    cdf.to_csv(tmp_path / "counts.csv")
    sheet = pd.DataFrame({"sample_id": ids, "batch": batch, "group": np.tile(["x", "y"], n // 2),
                          "site": np.repeat(["s1", "s2", "s3"], 4)})
    sheet.to_csv(tmp_path / "samples.csv", index=False)
    logx = np.log2(counts + 1.0) + rng.normal(0, 0.5, (3, G))[np.repeat([0, 1, 2], 4)] + rng.normal(0, 0.1, (n, G))
    ldf = pd.DataFrame(logx, index=cdf.index, columns=genes)
    ldf.to_parquet(tmp_path / "log.parquet")
    return tmp_path, cdf, ldf


def test_normalize_filter_impute(files, capsys):
    d, cdf, ldf = files
    code, out = _run(["normalize", str(d / "counts.csv"), "--method", "tmm-logcpm", "-o", str(d / "n.parquet")], capsys)
    assert code == 0, out
    got = read_matrix(d / "n.parquet")
    assert list(got.index) == list(cdf.index) and list(got.columns) == list(cdf.columns)
    np.testing.assert_allclose(got.to_numpy(), CPMNormalizer().fit_transform(cdf), rtol=1e-12)

    code, out = _run(["filter", str(d / "counts.csv"), "-o", str(d / "f.csv")], capsys)
    assert code == 0, out
    kept = read_matrix(d / "f.csv")
    assert "G0" not in kept.columns and list(kept.columns) == [g for g in cdf.columns if g in kept.columns]
    code, out = _run(["filter", str(d / "counts.csv"), "--filter-by-expr", "--samples", str(d / "samples.csv"),
                      "--group-column", "group", "-o", str(d / "fe.csv")], capsys)
    assert code == 0, out

    holes = ldf.copy()
    holes.iloc[2, 5] = np.nan
    holes.iloc[7, 11] = np.nan
    holes.to_csv(d / "holes.csv")
    code, out = _run(["impute", str(d / "holes.csv"), "--k", "5", "-o", str(d / "imp.csv")], capsys)
    assert code == 0, out
    np.testing.assert_allclose(read_matrix(d / "imp.csv").to_numpy(), KNNImputer(k=5).fit_transform(holes), rtol=1e-12)


def test_combat_combat_seq_and_report(files, capsys):
    d, cdf, ldf = files
    code, out = _run(["combat", str(d / "log.parquet"), "--samples", str(d / "samples.csv"), "--batch-column",
                      "batch", "--covariates", "group", "-o", str(d / "cb.parquet"), "--report", str(d / "rep"),
                      "--biology-column", "group"], capsys)
    assert code == 0, out
    cb = read_matrix(d / "cb.parquet")
    assert cb.index.equals(ldf.index) and cb.columns.equals(ldf.columns)
    rep = json.loads((d / "rep" / "batch_correction.json").read_text())
    assert rep["after"]["batch_silhouette"] < rep["before"]["batch_silhouette"]
    code, out = _run(["combat-report", str(d / "log.parquet"), str(d / "cb.parquet"), "--samples",
                      str(d / "samples.csv"), "--batch-column", "batch", "--biology-column", "group",
                      "-o", str(d / "rep2")], capsys)
    assert code == 0 and (d / "rep2" / "batch_correction.png").exists(), out
    code, out = _run(["combat-seq", str(d / "counts.csv"), "--samples", str(d / "samples.csv"), "--batch-column",
                      "batch", "--group-column", "group", "-o", str(d / "cs.csv")], capsys)
    assert code == 0, out
    cs = read_matrix(d / "cs.csv")
    assert cs.index.equals(cdf.index) and (cs.to_numpy() == np.round(cs.to_numpy())).all()


def test_bad_input_exits_nonzero_with_a_clear_message(files, capsys):
    d, cdf, ldf = files
    sheet = pd.read_csv(d / "samples.csv")
    sheet.loc[0, "batch"] = "lonely"
    sheet.to_csv(d / "one.csv", index=False)
    cases = [
        (["combat", str(d / "log.parquet"), "--samples", str(d / "one.csv"), "--batch-column", "batch"],
         "only one sample"),
        (["combat", str(d / "log.parquet"), "--samples", str(d / "samples.csv"), "--batch-column", "batch",
          "--covariates", "site"], "confounded with batch"),
        (["combat", str(d / "log.parquet"), "--samples", str(d / "samples.csv"), "--batch-column", "nope"],
         "no column nope"),
        (["normalize", str(d / "counts.csv"), "--method", "tpm"], "gene-lengths"),
    ]
    frac = cdf.astype(float)
    frac.iloc[0, 4] = 2.5
    frac.to_csv(d / "frac.csv")
    cases.append((["combat-seq", str(d / "frac.csv"), "--samples", str(d / "samples.csv"), "--batch-column",
                   "batch"], "integer counts"))
    nan = ldf.copy()
    nan.iloc[1, 1] = np.inf  # NaN is fine (sva's missing-value path), infinity is not
    nan.to_csv(d / "nan.csv")
    cases.append((["combat", str(d / "nan.csv"), "--samples", str(d / "samples.csv"), "--batch-column", "batch"],
                  "infinite"))
    const = ldf.copy()
    const.iloc[:4, 2] = 1.0
    const.to_csv(d / "const.csv")
    cases.append((["combat", str(d / "const.csv"), "--samples", str(d / "samples.csv"), "--batch-column", "batch"],
                  "constant within a batch"))
    for args, message in cases:
        if "-o" not in args:
            args = [*args, "-o", str(d / "x.csv")]
        code, out = _run(args, capsys)
        assert code == 2, (args, out)
        assert message in out and "Traceback" not in out, (args, out)


@pytest.mark.shared_data
def test_combat_cli_on_bladderbatch_matches_sva(shared_data, tmp_path, capsys):
    d = shared_data / "bladderbatch"
    code, out = _run(["combat", str(d / "expression.parquet"), "--samples", str(d / "samples.csv"),
                      "--batch-column", "batch", "--covariates", "cancer", "-o", str(tmp_path / "c.parquet")], capsys)
    assert code == 0, out
    got = read_matrix(tmp_path / "c.parquet")
    ref = pd.read_parquet(d / "reference_combat.parquet").set_index("sample_id")
    assert list(got.index) == list(ref.index) and list(got.columns) == list(ref.columns)
    assert np.abs(got.to_numpy() - ref.to_numpy()).max() <= 1e-6
