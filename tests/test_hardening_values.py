"""Hardening: value types read off the numbers by a written rule, implausible or negative cells named
(never trained on as another value type), missing values said, bad options refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _hardening import cli, counts, digest, sheet

from genexflow.cohort import ValueType
from genexflow.components import _steps
from genexflow.errors import InputError
from genexflow.ingest.values import MAX_MAGNITUDE, detect_value_type

sys.path.insert(0, str(Path(__file__).parent))
from _ingest_helpers import counts_frame, sheet_frame  # noqa: E402


def test_detection_rule_counts_survive_a_stray_negative():
    c = counts()
    X = c.to_numpy().copy()
    X[2, 3] = -5
    g = detect_value_type(X, c.index, c.columns)
    assert g.value_type == ValueType.COUNTS
    assert [str(x) for x in g.bad] == ["s2/G3=-5"]
    logx = np.log2(c.to_numpy() + 1) - 3  # negatives, non-integer
    assert detect_value_type(logx, c.index, c.columns).value_type == ValueType.LOG
    small = np.round(np.log2(c.to_numpy() + 1))  # whole numbers but a narrow range: log scale
    assert detect_value_type(small, c.index, c.columns).value_type == ValueType.LOG
    tpm = c.to_numpy() / c.to_numpy().sum(1, keepdims=True) * 1e6 + 0.5 / 30
    tpm = tpm / tpm.sum(1, keepdims=True) * 1e6
    assert detect_value_type(tpm, c.index, c.columns).value_type == ValueType.TPM
    with pytest.raises(InputError, match="cannot tell TPM from FPKM"):
        detect_value_type(tpm * 1.7, c.index, c.columns)


def test_pipeline_auto_value_type_keeps_counts_with_a_negative(tmp_path):
    """Before: one negative count made `run --value-type auto` train on raw counts as log data."""
    c = counts()
    c.iloc[2, 3] = -5
    c.to_csv(tmp_path / "c.csv")
    assert _steps.infer_value_type("auto", tmp_path / "c.csv") == "counts"


def test_ingest_auto_detects_and_quarantines_the_bad_cell(tmp_path, capsys):
    m = counts_frame(8, 40)
    gene = m.columns[3]
    m.iloc[2, 3] = -5
    m.to_csv(tmp_path / "c.csv")
    sheet_frame(m.index).to_csv(tmp_path / "s.csv")
    code, out = cli(["ingest", tmp_path / "c.csv", "-s", tmp_path / "s.csv", "--value-type", "auto",
                     "--no-data-docs", "--dvc", "off", "-o", tmp_path / "v", "--quarantine-root",
                     tmp_path / "q", "--report-dir", tmp_path / "r"], capsys)
    assert code == 0, out
    assert "value type" in out and "counts (detected: integer-valued" in out, out
    assert f"S03/{gene}=-5" in out.replace("\n", "")
    reasons = pd.read_csv(next((tmp_path / "q").iterdir()) / "reasons.csv")
    assert reasons["message"].str.contains(f"S03/{gene}=-5", regex=False).any()
    report = json.loads((tmp_path / "r" / "validation.json").read_text())
    assert report["value_type"] == "counts" and report["value_type_source"].startswith("detected:")
    validated = pd.read_parquet(tmp_path / "v" / "expression.parquet")
    assert "S03" not in set(validated["sample_id"])
    lineage = json.loads((tmp_path / "v" / "cohort.json").read_text())["meta"]["lineage"]
    assert lineage["value_type_source"].startswith("detected: integer-valued")  # travels to the run summary


@pytest.mark.parametrize("value_type", ["counts", "log-expression"])
def test_ingest_quarantines_implausible_magnitudes_naming_the_cell(tmp_path, capsys, value_type):
    m = counts_frame(8, 40).astype(float)
    if value_type == "log-expression":
        m = np.log2(m + 1)
    m.iloc[4, 7] = 1e308
    m.to_csv(tmp_path / "c.csv")
    sheet_frame(m.index).to_csv(tmp_path / "s.csv")
    code, out = cli(["ingest", tmp_path / "c.csv", "-s", tmp_path / "s.csv", "--value-type", value_type,
                     "--no-data-docs", "--dvc", "off", "-o", tmp_path / "v", "--quarantine-root",
                     tmp_path / "q", "--report-dir", tmp_path / "r"], capsys)
    assert code == 0, out
    flat = out.replace("\n", "")
    assert f"S05/{m.columns[7]}=1e+308" in flat and f"{MAX_MAGNITUDE[ValueType(value_type)]:g}" in flat, out


def test_ingest_names_missing_values(tmp_path, capsys):
    m = counts_frame(8, 40).astype(float)
    m.iloc[1, 2] = np.nan
    m.to_csv(tmp_path / "c.csv")
    sheet_frame(m.index).to_csv(tmp_path / "s.csv")
    code, out = cli(["ingest", tmp_path / "c.csv", "-s", tmp_path / "s.csv", "--value-type", "counts",
                     "--no-data-docs", "--dvc", "off", "-o", tmp_path / "v", "--quarantine-root",
                     tmp_path / "q", "--report-dir", tmp_path / "r", "--json"], capsys)
    assert code == 0, out
    summary = json.JSONDecoder().raw_decode(out[out.index("{"):])[0]
    assert summary["missing_values"] == 1
    report = json.loads((tmp_path / "r" / "validation.json").read_text())
    assert report["missing_values"] == {"n": 1, "cells": [f"S02/{m.columns[2]}=nan"]}


@pytest.mark.parametrize("cell,shown", [(-5, "s2/G3=-5"), (1e308, "s2/G3=1e+308"), (np.inf, "s2/G3=inf")])
def test_normalize_refuses_impossible_counts_naming_the_cell(tmp_path, capsys, cell, shown):
    """Before: 1e308 passed and shifted every sample's TMM factor."""
    c = counts().astype(float)
    c.iloc[2, 3] = cell
    c.to_csv(tmp_path / "c.csv")
    code, out = cli(["normalize", tmp_path / "c.csv", "-o", tmp_path / "n.parquet"], capsys)
    assert code == 2 and shown in out and "error:" in out, out
    assert not (tmp_path / "n.parquet").exists()


def test_normalize_and_impute_say_which_values_are_missing(tmp_path, capsys):
    c = np.log2(counts().astype(float) + 1)
    c.iloc[2, 3] = np.nan
    c.to_csv(tmp_path / "c.csv")
    code, out = cli(["normalize", tmp_path / "c.csv", "--method", "log2p1", "-o", tmp_path / "n.csv"], capsys)
    assert code == 0 and "1 missing value(s) left missing" in out and "s2/G3=nan" in out, out
    code, out = cli(["impute", tmp_path / "c.csv", "--k", "3", "-o", tmp_path / "i.csv"], capsys)
    assert code == 0 and "1 missing value(s) imputed: s2/G3=nan" in out, out


@pytest.mark.parametrize("prior", ["-1", "0"])
def test_prior_count_must_be_positive(tmp_path, capsys, prior):
    counts().to_csv(tmp_path / "c.csv")
    code, out = cli(["normalize", tmp_path / "c.csv", "--prior-count", prior, "-o", tmp_path / "n.csv"], capsys)
    assert code == 2 and "--prior-count must be positive" in out, out
    assert not (tmp_path / "n.csv").exists()


def test_combat_on_raw_counts_is_refused_with_the_alternatives(tmp_path, capsys):
    c = counts()
    c.to_csv(tmp_path / "c.csv")
    sheet(c.index).to_csv(tmp_path / "s.csv")
    before = digest(tmp_path / "c.csv")
    code, out = cli(["combat", tmp_path / "c.csv", "--samples", tmp_path / "s.csv", "--batch-column", "batch",
                     "-o", tmp_path / "o.csv"], capsys)
    assert code == 2 and "looks like raw counts" in out and "combat-seq" in out and "normalize" in out, out
    assert not (tmp_path / "o.csv").exists() and digest(tmp_path / "c.csv") == before
