"""Cohort I/O: round trips, orientation, Salmon aggregation vs tximport, and clear errors on bad files."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from genexflow import Cohort, InputError
from genexflow.io import read_cohort, read_matrix, read_salmon, read_sample_sheet, write_matrix
from genexflow.simulate import simulate_cohort


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    c, _ = simulate_cohort(n_samples=24, n_genes=120, n_pathways=5, n_batches=2, seed=3)
    return c


def test_parquet_folder_round_trip(cohort, tmp_path):
    cohort.write(tmp_path / "c")
    back = Cohort.read(tmp_path / "c")
    np.testing.assert_array_equal(back.X, cohort.X)
    assert back.X.dtype == cohort.X.dtype == np.int32
    assert list(back.genes) == list(cohort.genes)
    pd.testing.assert_frame_equal(back.samples, cohort.samples, check_dtype=False)
    assert back.value_type == cohort.value_type
    assert back.name == cohort.name


def test_h5ad_round_trip(cohort, tmp_path):
    path = cohort.write_h5ad(tmp_path / "c.h5ad")
    back = Cohort.read(path)
    np.testing.assert_array_equal(back.X, cohort.X)
    assert list(back.sample_ids) == list(cohort.sample_ids)
    assert list(back.samples["label"]) == list(cohort.samples["label"])
    assert back.value_type.value == "counts"
    assert back.meta["seed"] == 3


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".csv.gz", ".parquet"])
@pytest.mark.parametrize("orientation", ["samples", "genes"])
def test_matrix_formats_and_orientation(cohort, tmp_path, suffix, orientation):
    df = cohort.frame().astype(np.float32)
    path = tmp_path / f"m{suffix}"
    out = df if orientation == "samples" else df.T.rename_axis("gene_id")
    if suffix == ".parquet":
        write_matrix(out, path) if orientation == "samples" else out.reset_index().to_parquet(path)
    else:
        out.to_csv(path, sep="\t" if suffix == ".tsv" else ",")
    got = read_matrix(path, orientation=orientation)
    np.testing.assert_allclose(got.to_numpy(), df.to_numpy())
    assert list(got.index) == list(df.index)
    # auto-detection uses the first column's name (sample_id / gene_id)
    assert read_matrix(path).shape == df.shape


def test_auto_orientation_from_sample_sheet(cohort, tmp_path):
    df = cohort.frame().T
    df.index.name = "feature"  # an uninformative first column
    df.to_csv(tmp_path / "m.csv")
    cohort.samples.to_csv(tmp_path / "s.csv")
    c = read_cohort(tmp_path / "m.csv", tmp_path / "s.csv", value_type="counts")
    np.testing.assert_array_equal(c.X, cohort.X)


def test_ambiguous_orientation_is_an_error(tmp_path):
    pd.DataFrame(np.ones((3, 3)), index=["x1", "x2", "x3"], columns=["y1", "y2", "y3"]).rename_axis("id_").to_csv(
        tmp_path / "m.csv")
    with pytest.raises(InputError, match="cannot tell whether rows are samples or genes"):
        read_matrix(tmp_path / "m.csv")


def test_sheet_order_follows_matrix(cohort, tmp_path):
    cohort.write(tmp_path / "c")
    sheet = cohort.samples.iloc[::-1]
    c = read_cohort(tmp_path / "c" / "expression.parquet", sheet, value_type="counts")
    assert list(c.sample_ids) == list(cohort.sample_ids)
    assert list(c.samples["label"]) == list(cohort.samples["label"])


# ----------------------------------------------------------------------------- errors
def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(InputError, match="file is empty"):
        read_matrix(tmp_path / "e.csv")


def test_truncated_parquet(cohort, tmp_path):
    p = write_matrix(cohort.frame(), tmp_path / "m.parquet")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_matrix(p)


def test_truncated_gzip_csv(cohort, tmp_path):
    raw = gzip.compress(cohort.frame().to_csv().encode())
    (tmp_path / "m.csv.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_matrix(tmp_path / "m.csv.gz")


def test_non_numeric_cell(cohort, tmp_path):
    df = cohort.frame().astype(object)
    df.iloc[2, 5] = "n/a?"
    df.to_csv(tmp_path / "m.csv")
    with pytest.raises(InputError, match=r"non-numeric values.*n/a\?"):
        read_matrix(tmp_path / "m.csv")


def test_non_utf8_sheet(tmp_path):
    (tmp_path / "s.csv").write_bytes("sample_id,site\nS1,Malm\xf6\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_sample_sheet(tmp_path / "s.csv")


def test_duplicate_sample_ids_in_sheet(tmp_path):
    (tmp_path / "s.csv").write_text("sample_id,batch\nS1,1\nS1,2\n")
    with pytest.raises(InputError, match="duplicate sample IDs"):
        read_sample_sheet(tmp_path / "s.csv")


def test_mismatched_sample_ids(cohort, tmp_path):
    cohort.write(tmp_path / "c")
    sheet = cohort.samples.rename(index={cohort.sample_ids[0]: "GHOST"})
    with pytest.raises(InputError, match="sample IDs of matrix and sheet differ: 1 only in the matrix"):
        read_cohort(tmp_path / "c" / "expression.parquet", sheet)


def test_duplicate_genes_rejected():
    with pytest.raises(InputError, match="duplicate gene IDs"):
        Cohort(np.zeros((2, 2)), ["A", "A"], pd.DataFrame(index=["s1", "s2"]))


def test_missing_file():
    with pytest.raises(InputError, match="file not found"):
        read_matrix("/nonexistent/m.parquet")


# ----------------------------------------------------------------------------- Salmon vs tximport
def test_salmon_matches_tximport(shared_data):
    d = shared_data / "geuvadis_tximport"
    got = read_salmon(d / "salmon", d / "tx2gene_gencode_v27.csv.gz")
    for key, ref_file in [("counts", "gene_counts"), ("abundance", "gene_tpm"), ("length", "gene_length")]:
        ref = pd.read_parquet(d / f"{ref_file}.parquet").set_index("gene_id").T.astype(np.float64)
        mine = got[key].reindex(index=ref.index, columns=ref.columns)
        assert not mine.isna().any().any(), key
        # references are float32-rounded: relative agreement at float32 precision
        np.testing.assert_allclose(mine.to_numpy(), ref.to_numpy(), rtol=2e-7, atol=1e-3, err_msg=key)
