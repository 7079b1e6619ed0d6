"""Hardening: a new cohort missing many of the model's genes is schema drift (exit 3, named), not
"drift: false" on the genes that happen to be there."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _hardening import cli

from genexflow.cohort import Cohort

GENES = [f"G{i}" for i in range(120)]


def _cohort(n: int, seed: int, genes: list[str]) -> Cohort:
    rng = np.random.default_rng(seed)
    X = rng.normal(8, 1, (n, len(genes))).astype(np.float32)
    sheet = pd.DataFrame({"batch": ["a", "b"] * (n // 2)}, index=[f"s{seed}_{i}" for i in range(n)])
    return Cohort(X, genes, sheet, value_type="log-expression", name=f"c{seed}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("drift")
    _cohort(60, 1, GENES).write(d / "ref_cohort")
    code = None
    try:
        from genexflow.cli.main import main

        main(["drift", "profile", str(d / "ref_cohort"), "--out", str(d / "ref")])
    except SystemExit as exc:
        code = exc.code
    assert code in (None, 0)
    return d


@pytest.mark.parametrize("n_missing,drift", [(60, True), (6, False)])
def test_missing_model_genes_are_schema_drift(reference, tmp_path, capsys, n_missing, drift):
    _cohort(40, 2, GENES[:len(GENES) - n_missing]).write(tmp_path / "new")
    code, out = cli(["drift", "check", tmp_path / "new", "--model", reference / "ref", "--tracking-uri", "none",
                     "--no-evidently", "-o", tmp_path / "rep"], capsys)
    decision = json.loads((tmp_path / "rep" / "decision.json").read_text())
    absent = f"{n_missing} of {len(GENES)} model genes"
    if drift:
        assert code == 3, out
        schema = [r for r in decision["reasons"] if r["kind"] == "schema"]
        assert len(schema) == 1 and absent in schema[0]["message"] and "G60" in schema[0]["message"], schema
        assert "schema drift" in out
    else:
        assert code == 0, out
        assert not [r for r in decision["reasons"] if r["kind"] == "schema"]
        assert any(absent in n for n in decision["notes"]), decision["notes"]
