"""Batch-correction report on simulated data and on bladderbatch (PNG + JSON numbers)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genexflow.preprocessing import ComBat
from genexflow.preprocessing.report import batch_correction_report


def test_report_shows_batch_removed_and_biology_kept(tmp_path):
    rng = np.random.default_rng(0)
    n_per, G = 15, 200
    batch = np.repeat([0, 1, 2], n_per)
    bio = np.tile(["ctrl", "case", "case"], n_per)
    X = rng.normal(size=(len(batch), G)) + rng.normal(0, 2.0, (3, G))[batch] + 2.0 * (bio == "case")[:, None] * (
        np.arange(G) < 40)
    cov = pd.DataFrame({"bio": bio})
    Xc = ComBat().fit_transform(X, batch=batch, covariates=cov)
    res = batch_correction_report(X, Xc, batch, bio, tmp_path)
    assert res["after"]["batch_silhouette"] < res["before"]["batch_silhouette"] - 0.2
    assert res["after"]["biology_silhouette"] > res["before"]["biology_silhouette"]
    saved = json.loads((tmp_path / "batch_correction.json").read_text())
    assert saved["after"]["batch_silhouette"] == pytest.approx(res["after"]["batch_silhouette"])
    assert (tmp_path / "batch_correction.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.shared_data
def test_bladderbatch_report(shared_data, tmp_path):
    d = shared_data / "bladderbatch"
    X = pd.read_parquet(d / "expression.parquet").set_index("sample_id")
    s = pd.read_csv(d / "samples.csv").set_index("sample_id").loc[X.index]
    Xb = X.to_numpy(np.float64)
    Xc = ComBat().fit_transform(Xb, batch=s["batch"], covariates=s[["cancer"]])
    res = batch_correction_report(Xb, Xc, s["batch"], s["cancer"], tmp_path, title="bladderbatch ComBat")
    assert res["after"]["batch_silhouette"] < res["before"]["batch_silhouette"]
    assert res["after"]["biology_silhouette"] > 0
    assert (tmp_path / "batch_correction.png").stat().st_size > 10_000
