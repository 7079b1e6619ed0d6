"""Summary tables, robust bounds and the GX runner of genexflow.ingest.expectations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from genexflow.cohort import ValueType
from genexflow.ingest import expectations as ex


def test_sample_qc_matches_a_naive_pandas_computation():
    rng = np.random.default_rng(0)
    X = rng.poisson(3, size=(12, 40)).astype(np.float32)
    X[0, :3] = np.nan
    X[1, 5] = np.inf
    X[2, 7] = -2
    X[3, 9] = 1.5
    X[4] = 0
    qc = ex.sample_qc_table(X, [f"s{i}" for i in range(12)], ValueType.COUNTS).set_index("sample_id")
    df = pd.DataFrame(X.astype(np.float64))
    finite = df.where(np.isfinite(df))
    assert qc["n_missing"].tolist() == df.isna().sum(1).tolist()
    assert qc["n_inf"].tolist() == np.isinf(df).sum(1).tolist()
    assert qc["n_negative"].tolist() == (finite < 0).sum(1).tolist()
    assert qc["n_non_integer"].tolist() == ((finite % 1 != 0) & finite.notna()).sum(1).tolist()
    np.testing.assert_allclose(qc["library_size"], finite.sum(1))
    assert qc["detected"].tolist() == (finite > 0).sum(1).tolist()
    np.testing.assert_allclose(qc["zero_fraction"], (finite == 0).sum(1) / finite.notna().sum(1))
    np.testing.assert_allclose(qc["mean"], finite.mean(1), rtol=1e-6)
    np.testing.assert_allclose(qc["sd"], finite.std(1, ddof=0), rtol=1e-5)
    assert qc.loc["s4", "zero_fraction"] == 1.0 and np.isnan(qc.loc["s4", "log10_library_size"])


def test_integer_matrix_path():
    X = np.array([[0, 5, 3], [0, 0, 0]], dtype=np.int32)
    qc = ex.sample_qc_table(X, ["a", "b"], ValueType.COUNTS)
    assert qc["library_size"].tolist() == [8.0, 0.0] and qc["zero_fraction"].tolist() == [1 / 3, 1.0]
    g = ex.gene_qc_table(X, ["g1", "g2", "g3"])
    assert g["all_zero"].tolist() == [True, False, False]
    np.testing.assert_allclose(g["variance"], X.var(0))


def test_gene_qc_missing_and_variance():
    X = np.array([[1.0, np.nan], [3.0, np.nan], [5.0, 2.0]])
    g = ex.gene_qc_table(X, ["a", "b"])
    np.testing.assert_allclose(g["missing_fraction"], [0, 2 / 3])
    np.testing.assert_allclose(g["variance"], [np.var([1, 3, 5]), 0.0])


def test_robust_bounds():
    v = np.array([10.0, 11, 9, 10, 12, 8, 10, 100, np.nan])
    lo, hi = ex.robust_bounds(v, 3)
    med = np.median(v[:-1])
    mad = 1.4826 * np.median(np.abs(v[:-1] - med))
    assert (lo, hi) == pytest.approx((med - 3 * mad, med + 3 * mad))
    assert lo < 8 and 12 < hi < 100  # the outlier is out, the bulk is in
    # identical values: the floor keeps a 1 % band instead of a zero-width interval
    assert ex.robust_bounds([3007.0] * 10, 5) == pytest.approx((3007 - 5 * 30.07, 3007 + 5 * 30.07))
    assert all(np.isnan(ex.robust_bounds([np.nan], 5)))


def test_validator_reports_failing_rows_by_key_and_label():
    table = pd.DataFrame({"row": [0, 1, 2], "sample_id": ["a", "b", "b"], "n_inf": [0, 2, 0]})
    E = ex._E()
    v = ex.Validator()
    try:
        checks = v.run("t", table, [
            E.ExpectColumnValuesToBeBetween(column="n_inf", max_value=0, severity="warning",
                                            meta={"rows": "quarantine"}, description="finite"),
            E.ExpectColumnValuesToBeUnique(column="sample_id", severity="critical", description="unique"),
        ], id_column="row", label_column="sample_id")
    finally:
        v.close()
    inf, uniq = checks
    assert not inf.success and inf.keys == ["1"] and inf.unexpected == [("b", 2)] and inf.rows == "quarantine"
    assert inf.message() == "[t] expect_column_values_to_be_between(n_inf, max_value=0): finite: 1 of 3 failing (b=2)"
    assert not uniq.success and uniq.severity == "critical" and uniq.unexpected_count == 2
    assert set(v.results) == {"t"}
