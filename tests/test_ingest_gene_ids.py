"""Gene-ID detection, mapping to HGNC symbols and duplicate collapsing (genexflow.ingest.gene_ids)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from genexflow.errors import InputError
from genexflow.ingest.gene_ids import (
    classify_ids,
    collapse_duplicates,
    default_duplicate_policy,
    excel_candidates,
    load_maps,
    map_gene_ids,
    read_probe_map,
)


def canon(ids, **kw):
    return map_gene_ids(ids, **kw).table["canonical"].tolist()


def test_classify_every_id_type():
    ids = ["ENSG00000141510", "ENSG00000141510.17", "7157", "TP53", "1007_s_at", "AFFX-BioB-5_at",
           "ILMN_1343291", "1-Mar", "__no_feature"]
    assert classify_ids(ids).tolist() == ["ensembl", "ensembl", "entrez", "symbol", "probe", "probe", "probe",
                                          "excel", "other"]


@pytest.mark.parametrize("mangled, symbol", [
    ("1-Mar", "MARCHF1"), ("2-Sep", "SEPTIN2"), ("1-Dec", "DELEC1"),  # Excel's day-month display
    ("2023-03-01", "MARCHF1"), ("1-Mar-2023", "MARCHF1"), ("Mar-01", "MARCHF1"),  # date exports
    ("01-Mar", "MARCHF1"), ("10-Mar", "MARCHF10"), ("2-sep", "SEPTIN2"), ("3/1/2023", "MARCHF1"),
    ("15-Sep", "SELENOF"),  # SEP15, the old symbol of SELENOF, mangled the same way
])
def test_excel_dates_are_repaired(mangled, symbol):
    m = map_gene_ids([mangled, "TP53"])
    assert m.table["canonical"].iloc[0] == symbol
    assert m.table["method"].iloc[0] == "excel"
    assert m.summary()["excel_repaired"] == {mangled: symbol}


def test_excel_candidates_leave_real_ids_alone():
    out = excel_candidates(["TP53", "MARCHF1", "7157", "ENSG00000141510", "32-Mar", "2023-13-01"])
    assert out.isna().all()


def test_aliases_previous_symbols_and_case():
    assert canon(["p53", "tp53", "MARCH1", "SEPT2", "DEC1", "OCT4", "C1orf112"]) == [
        "TP53", "TP53", "MARCHF1", "SEPTIN2", "DELEC1", "POU5F1", "C1orf112"]


def test_current_symbol_is_never_read_as_an_alias():
    maps = load_maps()
    # every key of the alias table is an upper-case ID that is not itself a current symbol
    assert not set(maps.alias) & set(maps.upper)
    assert canon(["CD4"]) == ["CD4"]


def test_ensembl_versions_par_and_species():
    t = map_gene_ids(["ENSG00000141510.17", "ENSG00000141510", "ENSG00000002586.18_PAR_Y",
                      "ENSMUSG00000059552", "ENSG99999999999"]).table
    assert t["canonical"].tolist()[:3] == ["TP53", "TP53", "CD99"]
    assert t["canonical"].iloc[3] is None and t["note"].iloc[3] == "non-human Ensembl ID"
    assert t["note"].iloc[4] == "Ensembl ID not in the map"


def test_entrez_and_declared_type():
    assert canon(["7157", "1956"]) == ["TP53", "EGFR"]
    # declared entrez: a symbol is not an Entrez ID and stays unmapped, with the reason
    t = map_gene_ids(["7157", "TP53"], id_type="entrez").table
    assert t["canonical"].tolist() == ["TP53", None]
    assert t["note"].iloc[1] == "not an Entrez ID"
    with pytest.raises(InputError, match="gene ID type must be one of"):
        map_gene_ids(["TP53"], id_type="refseq")


def test_mapping_rate_and_mixed_types():
    m = map_gene_ids(["TP53", "EGFR", "NOTAGENE1", "NOTAGENE2"])
    assert m.mapping_rate == pytest.approx(0.5)
    assert not m.mixed
    mixed = map_gene_ids(["TP53", "EGFR", "ENSG00000146648", "7157"])
    assert mixed.mixed and mixed.type_counts == {"symbol": 2, "ensembl": 1, "entrez": 1}
    assert mixed.table["canonical"].tolist() == ["TP53", "EGFR", "EGFR", "TP53"]


def test_probes_kept_without_map_and_mapped_with_one():
    m = map_gene_ids(["1007_s_at", "1053_at"])
    assert m.mapping_rate is None
    assert m.table["canonical"].tolist() == ["1007_s_at", "1053_at"]
    assert "kept as features" in m.notes[0]
    pmap = pd.DataFrame({"probe_id": ["1007_s_at", "1053_at"], "symbol": ["DDR1", "p53"]})
    m = map_gene_ids(["1007_s_at", "1053_at", "117_at"], probe_map=pmap)
    assert m.table["canonical"].tolist() == ["DDR1", "TP53", None]  # the map's alias is resolved too
    assert m.table["note"].iloc[2] == "probe not in the probe map"
    assert m.mapping_rate == pytest.approx(2 / 3)


def test_probe_map_file_picks_the_overlapping_column(tmp_path):
    p = tmp_path / "genes.csv"
    pd.DataFrame({"row_index": [1, 2], "gene_id": ["A_at", "B_at"], "symbol": ["TP53", None]}).to_csv(p, index=False)
    s = read_probe_map(p, ["A_at", "B_at"])
    assert s.to_dict() == {"A_at": "TP53"}
    bad = tmp_path / "nosym.csv"
    pd.DataFrame({"probe": ["A_at"], "gene": ["TP53"]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match="probe map needs a 'symbol' column"):
        read_probe_map(bad)


def test_keep_unmapped():
    m = map_gene_ids(["TP53", "SIMG00001"], keep_unmapped=True)
    assert m.table["canonical"].tolist() == ["TP53", "SIMG00001"]
    assert m.table["method"].tolist() == ["exact", "kept-unmapped"]
    assert m.mapping_rate == pytest.approx(0.5)


def test_golub_probe_map_rate(shared_data):
    """The shipped golub probe table maps about 73 % of the Hu6800 probes (2242 unambiguous symbols)."""
    genes = pd.read_csv(shared_data / "golub" / "genes.csv")
    m = map_gene_ids(genes["gene_id"], probe_map=shared_data / "golub" / "genes.csv")
    assert 0.70 < m.mapping_rate < 0.76
    assert m.id_type == "probe"


# --------------------------------------------------------------------------- collapsing
def test_collapse_sum_keeps_integer_counts():
    X = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int32)
    out, genes, merged = collapse_duplicates(X, ["A", "B", "A", "C"], "sum")
    assert genes.tolist() == ["A", "B", "C"]
    np.testing.assert_array_equal(out, [[4, 2, 4], [12, 6, 8]])
    assert out.dtype == np.int32 and merged == {"A": [0, 2]}


def test_collapse_mean_ignores_nan():
    X = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, 5.0]], dtype=np.float32)
    out, genes, _ = collapse_duplicates(X, ["A", "A", "B"], "mean")
    np.testing.assert_allclose(out, [[1.0, 3.0], [np.nan, 5.0]])
    out, _, _ = collapse_duplicates(X, ["A", "A", "B"], "sum")
    np.testing.assert_allclose(out, [[1.0, 3.0], [np.nan, 5.0]])


def test_collapse_max_variance_picks_the_most_variable_feature():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 6))
    X[:, 3] *= 5  # the most variable member of gene G
    ids = ["G", "H", "G", "G", "H", "K"]
    out, genes, _ = collapse_duplicates(X, ids, "max-variance")
    assert genes.tolist() == ["G", "H", "K"]
    np.testing.assert_array_equal(out[:, 0], X[:, 3])
    h = 1 if X[:, 1].var() >= X[:, 4].var() else 4
    np.testing.assert_array_equal(out[:, 1], X[:, h])
    np.testing.assert_array_equal(out[:, 2], X[:, 5])


def test_collapse_matches_pandas_groupby():
    rng = np.random.default_rng(1)
    X = rng.poisson(5, size=(20, 500)).astype(np.float64)
    ids = rng.choice([f"g{i}" for i in range(300)], size=500)
    out, genes, _ = collapse_duplicates(X, ids, "sum")
    ref = pd.DataFrame(X, columns=ids).T.groupby(level=0, sort=False).sum().T
    np.testing.assert_allclose(out, ref[genes].to_numpy())
    with pytest.raises(InputError, match="duplicate policy"):
        collapse_duplicates(X, ids, "median")


def test_default_policy():
    assert default_duplicate_policy("counts") == "sum"
    assert default_duplicate_policy("tpm") == "sum"
    assert default_duplicate_policy("log-expression") == "max-variance"
