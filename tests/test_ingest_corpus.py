"""The bad-input corpus: every broken input gets a precise error or a quarantine entry with its reason,
never a crash and never a silent drop. Inputs are never modified."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from _ingest_helpers import counts_frame, reasons, run, sheet_frame, symbols, write_cohort

from genexflow.errors import InputError, ValidationError
from genexflow.ingest.lineage import file_md5


def _quarantined_files(exc_info) -> list[str]:
    qdir = re.search(r"quarantined: ([^\]]+)\]", str(exc_info.value)).group(1)
    return sorted(p.name for p in (__import__("pathlib").Path(qdir) / "files").iterdir())


def _reason(result, kind, sample_or_gene):
    r = reasons(result)
    return r[(r["kind"] == kind) & (r["id"] == sample_or_gene)]


@pytest.fixture
def toy(tmp_path):
    m = counts_frame()
    return m, sheet_frame(m.index)


# --------------------------------------------------------------------------- unreadable files
def test_empty_file(tmp_path, toy):
    _, sheet = toy
    expr = tmp_path / "in" / "expression.csv"
    expr.parent.mkdir()
    expr.write_text("")
    sheet.to_csv(tmp_path / "in" / "samples.csv")
    with pytest.raises(InputError, match=r"expression\.csv: file is empty") as e:
        run(tmp_path, expr, tmp_path / "in" / "samples.csv")
    assert _quarantined_files(e) == ["expression__expression.csv"]


def test_truncated_parquet(tmp_path, toy):
    expr, sheet = write_cohort(tmp_path / "in", *toy, fmt="parquet")
    data = expr.read_bytes()
    expr.write_bytes(data[: len(data) // 2])
    before = file_md5(expr)
    with pytest.raises(InputError, match=r"not a readable Parquet file \(truncated or corrupt\?\)") as e:
        run(tmp_path, expr, sheet)
    assert _quarantined_files(e) == ["expression__expression.parquet"]
    assert file_md5(expr) == before  # the input is copied, not moved or changed


def test_truncated_csv(tmp_path, toy):
    expr, sheet = write_cohort(tmp_path / "in", *toy)
    text = expr.read_text()
    expr.write_text(text[: int(len(text) * 0.9)].rstrip("\n"))
    with pytest.raises(InputError, match=r"file looks truncated: the last row 'S08' has \d+ of 60 values"):
        run(tmp_path, expr, sheet)


def test_non_numeric_cells(tmp_path, toy):
    m, sheet = toy
    m = m.astype(object)
    m.iloc[2, 5] = "12;3"
    expr, sheet_p = write_cohort(tmp_path / "in", m, sheet)
    gene = m.columns[5]
    with pytest.raises(InputError, match=rf"1 column\(s\) hold non-numeric values, e\.g\. column '{gene}' at 'S03'='12;3'"):
        run(tmp_path, expr, sheet_p)


def test_non_utf8_sample_sheet(tmp_path, toy):
    m, sheet = toy
    expr, sheet_p = write_cohort(tmp_path / "in", m, sheet)
    sheet_p.write_bytes(sheet_p.read_text().replace("b1", "b\xe9").encode("latin-1"))
    with pytest.raises(InputError, match=r"sample sheet is not UTF-8 \(invalid continuation byte at byte \d+\)") as e:
        run(tmp_path, expr, sheet_p)
    assert _quarantined_files(e) == ["samples__samples.csv"]


# --------------------------------------------------------------------------- matrix values
def test_negative_counts_quarantine_the_sample(tmp_path, toy):
    m, sheet = toy
    m.iloc[2, 7] = -5
    expr, sheet_p = write_cohort(tmp_path / "in", m, sheet)
    res = run(tmp_path, expr, sheet_p)
    r = _reason(res, "sample", "S03")
    assert r["check"].tolist() == ["expect_column_values_to_be_between(n_negative, max_value=0)"]
    assert r["value"].tolist() == ["1"] or r["value"].astype(int).tolist() == [1]
    assert "S03" not in res.cohort.sample_ids and res.cohort.n_samples == 7
    # nothing lost: the rejected row sits in the quarantine with its original values
    q = pd.read_parquet(res.quarantine_dir / "samples" / "expression.parquet").set_index("sample_id")
    assert q.loc["S03", m.columns[7]] == -5
    assert pd.read_csv(res.quarantine_dir / "samples" / "samples.csv")["sample_id"].tolist() == ["S03"]


def test_nan_is_missing_inf_is_quarantined(tmp_path, toy):
    m, sheet = toy
    m = m.astype(np.float64)
    m.iloc[0, 3] = np.nan  # one missing value: kept, stays NaN for imputation
    m.iloc[1, 4] = np.inf
    m.iloc[4, :50] = np.nan  # 50 of 60 missing: beyond max_missing_fraction
    expr, sheet_p = write_cohort(tmp_path / "in", m, sheet, fmt="parquet")
    res = run(tmp_path, expr, sheet_p)
    assert _reason(res, "sample", "S02")["check"].tolist() == ["expect_column_values_to_be_between(n_inf, max_value=0)"]
    r5 = _reason(res, "sample", "S05")
    assert "expect_column_values_to_be_between(missing_fraction, max_value=0.5)" in r5["check"].tolist()
    assert float(r5.loc[r5["column"] == "missing_fraction", "value"].iloc[0]) == pytest.approx(50 / 60)
    assert np.isnan(res.cohort.frame().loc["S01", m.columns[3]])
    assert set(res.cohort.sample_ids) == set(m.index) - {"S02", "S05"}


def test_all_zero_sample(tmp_path, toy):
    m, sheet = toy
    m.iloc[5] = 0
    res = run(tmp_path, m, sheet)
    r = _reason(res, "sample", "S06")
    assert r["check"].tolist() == ["expect_column_values_to_be_between(zero_fraction, max_value=1)"]
    assert r["message"].iloc[0].startswith("sample is not all zeros: zero_fraction=")


def test_non_integer_counts_are_flagged_not_dropped(tmp_path, toy):
    m, sheet = toy
    m = m.astype(float)
    m.iloc[0, 0] += 0.5
    res = run(tmp_path, m, sheet)
    assert res.cohort.n_samples == 8
    assert any("n_non_integer" in w and "S01=1" in w for w in res.warnings)


# --------------------------------------------------------------------------- IDs and shapes
def test_duplicate_sample_ids_in_sheet(tmp_path, toy):
    m, sheet = toy
    sheet = pd.concat([sheet, sheet.iloc[[1]]])
    expr, sheet_p = write_cohort(tmp_path / "in", m, sheet)
    with pytest.raises(ValidationError, match=r"\[sample_sheet\] expect_column_values_to_be_unique\(sample_id\): "
                       r"sample IDs in the sheet are unique \(repeated sample IDs: S02\): 2 of 9 failing") as e:
        run(tmp_path, expr, sheet_p)
    assert e.value.details["checks"][0]["severity"] == "critical"
    files = sorted(p.name for p in (tmp_path / "data" / "quarantine" / e.value.details["run_id"] / "files").iterdir())
    assert files == ["expression__expression.csv", "samples__samples.csv"]


def test_duplicate_sample_ids_in_matrix(tmp_path, toy):
    m, sheet = toy
    m = pd.concat([m, m.iloc[[3]]])
    expr, sheet_p = write_cohort(tmp_path / "in", m, sheet)
    with pytest.raises(ValidationError, match=r"\[samples\] expect_column_values_to_be_unique\(sample_id\).*S04"):
        run(tmp_path, expr, sheet_p)


def test_duplicate_gene_ids_are_quarantined(tmp_path, toy):
    m, sheet = toy
    cols = list(m.columns)
    cols[10] = cols[3]  # the same gene ID twice, different values
    m.columns = cols
    expr, sheet_p = write_cohort(tmp_path / "in", m, sheet)
    res = run(tmp_path, expr, sheet_p)
    r = _reason(res, "gene", cols[3])
    assert r["check"].tolist() == ["expect_column_values_to_be_unique(feature_id)"] * 2
    assert cols[3] not in res.cohort.genes and res.cohort.n_genes == 58
    q = pd.read_parquet(res.quarantine_dir / "genes" / "expression.parquet")
    assert q["gene_id"].tolist() == [cols[3], cols[3]]
    np.testing.assert_array_equal(q.iloc[1, 1:].to_numpy(dtype=float), m.iloc[:, 10].to_numpy(dtype=float))


def test_sheet_and_matrix_samples_differ(tmp_path, toy):
    m, sheet = toy
    sheet = sheet.rename(index={"S08": "S99"})  # S08 has data but no sheet row; S99 a row but no data
    res = run(tmp_path, m, sheet)
    assert _reason(res, "sample", "S08")["check"].tolist() == ["expect_column_values_to_be_in_set(in_sheet, value_set=[True])"]
    assert _reason(res, "sheet_row", "S99")["check"].tolist() == [
        "expect_column_values_to_be_in_set(in_matrix, value_set=[True])"]
    assert res.cohort.n_samples == 7


def test_mostly_mismatched_samples_is_critical(tmp_path, toy):
    m, sheet = toy
    sheet.index = [f"S0{i}" if i < 5 else f"X{i}" for i in range(1, 9)]
    sheet.index.name = "sample_id"
    with pytest.raises(ValidationError, match=r"expect_column_mean_to_be_between\(kept, min_value=0.75\): "
                                              r"at most 25% of the samples are quarantined: observed 0.3333.*"
                                              r"samples rejected by: expect_column_values_to_be_in_set"
                                              r"\(in_sheet, value_set=\[True\]\) \(4\)"):
        run(tmp_path, m, sheet)


def test_transposed_matrix(tmp_path, toy):
    m, sheet = toy
    expr, sheet_p = write_cohort(tmp_path / "in", m, sheet, genes_as_rows=True)
    expr.write_text(expr.read_text().replace("gene_id", "id", 1))  # a header that suggests samples as rows
    res = run(tmp_path, expr, sheet_p)
    assert res.cohort.shape == (8, 60)
    assert any(w.startswith("matrix read transposed") for w in res.warnings)
    with pytest.raises(ValidationError, match=r"matrix looks transposed: 8 of its columns and none of its rows "
                                              r"are sample IDs of the sheet; pass --orientation genes"):
        run(tmp_path, expr, sheet_p, orientation="samples")


def test_two_sample_cohort(tmp_path, toy):
    m, sheet = toy
    with pytest.raises(ValidationError, match=r"\[cohort\] expect_column_sum_to_be_between\(kept, min_value=3\): "
                                              r"at least 3 samples pass validation: observed 2"):
        run(tmp_path, m.iloc[:2], sheet.iloc[:2])


def test_missing_batch_column(tmp_path, toy):
    m, sheet = toy
    with pytest.raises(ValidationError, match=r"expect_column_to_exist\(batch\): sample sheet has the column "
                                              r"'batch' \(sheet columns: label, age, sex\)"):
        run(tmp_path, m, sheet.drop(columns="batch"))


def test_label_outside_allowed_set(tmp_path, toy):
    m, sheet = toy
    sheet.loc["S04", "label"] = "Unknown"
    res = ingest_allowed(tmp_path, m, sheet)
    r = _reason(res, "sample", "S04")
    assert r["check"].tolist() == ["expect_column_values_to_be_in_set(label, value_set=['A', 'B'])"]
    assert r["value"].tolist() == ["Unknown"]
    assert set(res.cohort.samples["label"]) == {"A", "B"}


def ingest_allowed(tmp_path, m, sheet):
    from genexflow.ingest import IngestConfig, ingest

    return ingest(m, sheet, value_type="counts", label_column="label", allowed_labels=["A", "B"],
                  batch_column="batch", out_dir=tmp_path / "v", quarantine_root=tmp_path / "q",
                  config=IngestConfig(data_docs=False, dvc="off"))


def test_bad_covariates(tmp_path, toy):
    m, sheet = toy
    sheet = sheet.astype({"age": object})
    sheet.loc["S02", "age"] = "unknown"
    sheet.loc["S03", "age"] = 240
    sheet.loc["S05", "batch"] = None
    res = run(tmp_path, m, sheet, max_quarantine_fraction=0.5)
    assert _reason(res, "sample", "S02")["check"].tolist() == [
        "expect_column_values_to_match_regex(age__text, regex=^\\s*[-+]?(?:\\d+\\.?\\d*|\\.\\d+)(?:[eE][-+]?\\d+)?\\s*$)"]
    r3 = _reason(res, "sample", "S03")
    assert r3["check"].tolist() == ["expect_column_values_to_be_between(age__num, min_value=0, max_value=130)"]
    assert _reason(res, "sample", "S05")["check"].tolist() == ["expect_column_values_to_not_be_null(batch)"]
    assert res.cohort.n_samples == 5
    # with the default limit, quarantining 3 of 8 samples is itself a critical failure
    with pytest.raises(ValidationError, match=r"at most 25% of the samples are quarantined: observed 0.625"):
        run(tmp_path, m, sheet)


# --------------------------------------------------------------------------- gene IDs
def test_excel_mangled_symbols(tmp_path):
    genes = symbols(57) + ["1-Mar", "2-Sep", "1-Dec"]
    m = counts_frame(genes=genes)
    res = run(tmp_path, m, sheet_frame(m.index))
    assert {"MARCHF1", "SEPTIN2", "DELEC1"} <= set(res.cohort.genes)
    assert not {"1-Mar", "2-Sep", "1-Dec"} & set(res.cohort.genes)
    report = json.loads(res.report_json.read_text())
    assert report["mapping"]["excel_repaired"] == {"1-Mar": "MARCHF1", "2-Sep": "SEPTIN2", "1-Dec": "DELEC1"}
    excel = [c for c in report["checks"] if c["column"] == "method"][0]
    assert not excel["success"] and excel["severity"] == "info" and excel["unexpected_count"] == 3


def test_mixed_id_types(tmp_path):
    genes = symbols(40) + ["ENSG00000141510", "ENSG00000146648.18", "7157", "1956"] + symbols(56)[40:56]
    m = counts_frame(genes=genes)
    res = run(tmp_path, m, sheet_frame(m.index))
    assert any(w.startswith("gene IDs mix types: symbol 56, ensembl 2, entrez 2") for w in res.warnings)
    # ENSG00000141510 and 7157 are both TP53, ENSG00000146648 and 1956 both EGFR: merged by summing
    assert {"TP53", "EGFR"} <= set(res.cohort.genes) and res.cohort.n_genes == 58
    np.testing.assert_array_equal(res.cohort.frame()["TP53"], m["ENSG00000141510"] + m["7157"])


def test_low_mapping_rate_is_critical(tmp_path):
    genes = symbols(20) + [f"NOTAGENE{i}" for i in range(40)]
    m = counts_frame(genes=genes)
    with pytest.raises(ValidationError, match=r"\[features\] expect_column_values_to_not_be_null\(canonical, mostly=0.5\)"
                                              r".*40 of 60 failing \(NOTAGENE0=None"):
        run(tmp_path, m, sheet_frame(m.index))


def test_unmapped_genes_are_quarantined_with_the_reason(tmp_path):
    genes = symbols(58) + ["NOTAGENE1", "ENSMUSG00000059552"]
    m = counts_frame(genes=genes)
    res = run(tmp_path, m, sheet_frame(m.index))
    assert res.mapping_rate == pytest.approx(58 / 60)
    r = reasons(res)
    msgs = dict(zip(r["id"], r["message"], strict=True))
    assert msgs["NOTAGENE1"].endswith("(unknown symbol)")
    assert msgs["ENSMUSG00000059552"].endswith("(non-human Ensembl ID)")


def test_inputs_are_never_modified(tmp_path, toy):
    m, sheet = toy
    m.iloc[0, 0] = -1
    expr, sheet_p = write_cohort(tmp_path / "in", m, sheet, fmt="parquet")
    before = {p: file_md5(p) for p in (expr, sheet_p)}
    run(tmp_path, expr, sheet_p)
    assert {p: file_md5(p) for p in (expr, sheet_p)} == before


def test_library_size_outlier_flagged_or_quarantined(tmp_path, toy):
    m, sheet = toy
    m.iloc[6] *= 200  # a sample sequenced 200x deeper: far outside median +- 5 MAD of log10 library size
    res = run(tmp_path, m, sheet)
    assert res.cohort.n_samples == 8  # default: flagged only
    assert any("log10_library_size" in w and "S07=" in w for w in res.warnings)
    res = run(tmp_path, m, sheet, outliers="quarantine")
    r = _reason(res, "sample", "S07")
    assert r["check"].str.startswith("expect_column_values_to_be_between(log10_library_size, min_value=").all()
    assert "S07" not in res.cohort.sample_ids
