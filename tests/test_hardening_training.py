"""Hardening: training refuses what it cannot learn from (a one-sample class, an empty covariate, a
1-gene cohort, an unknown baseline) with a message, before any fold is fitted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _hardening import cli

from genexflow.cohort import Cohort

N = 24


def _cohort(folder, labels, n_genes: int = 40, age=None) -> None:
    rng = np.random.default_rng(0)
    sheet = pd.DataFrame({"label": labels, "age": age if age is not None else rng.uniform(20, 80, N),
                          "batch": ["a", "b"] * (N // 2)}, index=[f"s{i}" for i in range(N)])
    X = rng.normal(8, 1, (N, n_genes)).astype(np.float32)
    Cohort(X, [f"G{j}" for j in range(n_genes)], sheet, value_type="log-expression").write(folder)


TRAIN = ["--epochs", "1", "--preset", "tiny", "--no-tracking", "--baselines", "none", "--explain-samples", "0"]


@pytest.mark.parametrize("case", ["one-sample class", "all-missing covariate", "one gene"])
def test_untrainable_cohorts_are_refused_before_any_fold(tmp_path, capsys, case):
    labels = ["A", "B"] * (N // 2)
    kw = {}
    extra = ["--cv", "0"]
    if case == "one-sample class":
        labels = ["A"] * 11 + ["B"] * 12 + ["C"]
        expect = "class 'C' of 'label' has 1 labelled sample (s23)"
    elif case == "all-missing covariate":
        kw["age"] = [np.nan] * N
        extra += ["--covariates", "age"]
        expect = "covariate 'age' has no value in any of the 24 samples"
    else:
        kw["n_genes"] = 1
        expect = "has 1 gene(s); training needs at least 4"
    _cohort(tmp_path / "c", labels, **kw)
    code, out = cli(["train", tmp_path / "c", "-l", "label", *TRAIN, *extra, "-o", tmp_path / "b"], capsys)
    assert code == 2, out
    assert expect in out and "unexpected" not in out, out
    assert not (tmp_path / "b").exists()


def test_unknown_baseline_is_refused_before_the_pipeline_starts(tmp_path, capsys):
    _cohort(tmp_path / "c", ["A", "B"] * (N // 2))
    code, out = cli(["run", "--expression", tmp_path / "c" / "expression.parquet", "--samples",
                     tmp_path / "c" / "samples.csv", "--label", "label", "--baselines", "logistic",
                     "--workspace", tmp_path / "ws"], capsys)
    assert code == 2 and "unknown baseline(s) logistic" in out and "logreg_l2" in out, out
    assert not (tmp_path / "ws" / "kfp").exists()  # no pipeline step ran


def test_missing_values_are_named_before_they_are_imputed(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(8, 1, (N, 40)).astype(np.float32)
    X[3, 5] = np.nan
    sheet = pd.DataFrame({"label": ["A", "B"] * (N // 2)}, index=[f"s{i}" for i in range(N)])
    Cohort(X, [f"G{j}" for j in range(40)], sheet, value_type="log-expression").write(tmp_path / "c")
    code, out = cli(["train", tmp_path / "c", "-l", "label", *TRAIN, "--cv", "0", "-o", tmp_path / "b"], capsys)
    assert code == 0, out
    assert "1 missing value(s) will be imputed" in out and "s3/G5=nan" in " ".join(out.split()), out
