"""Gene sets: shipped collections, GMT IO, restriction, membership, pathway scores."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from genexflow.errors import InputError, NotFittedError
from genexflow.priors import (
    PathwayScorer,
    build_priors,
    load_gene_sets,
    load_progeny_weights,
    membership_matrix,
    read_gmt,
    restrict_gene_sets,
    write_gmt,
)


@pytest.mark.parametrize(
    ("name", "n_sets", "probe_set", "probe_symbol", "probe_entrez"),
    [
        ("kegg", 229, "hsa04115", "TP53", "7157"),  # p53 signaling contains TP53
        ("go_bp", 5233, "GO:0051402", "CASP3", "836"),  # neuron apoptotic process contains CASP3
        ("progeny", 14, "p53", "CDKN1A", "1026"),  # PROGENy p53 footprint contains CDKN1A
    ],
)
def test_shipped_collections_load_with_both_id_types(name, n_sets, probe_set, probe_symbol, probe_entrez):
    sym = load_gene_sets(name)
    ent = load_gene_sets(name, id_type="entrez")
    assert len(sym) == n_sets and list(sym) == list(ent)
    assert probe_symbol in sym[probe_set]
    assert probe_entrez in ent[probe_set]
    assert all(len(set(v)) == len(v) for v in sym.values())


def test_shipped_files_match_shared_data(shared_data):
    src = shared_data / "genesets"
    for name, fname in [("kegg", "kegg_hsa_2011_symbols.gmt"), ("go_bp", "go_bp_15_500_entrez.gmt")]:
        ref = read_gmt(src / fname)
        got = load_gene_sets(name, id_type="entrez" if "entrez" in fname else "symbol")
        assert got == ref
    ref = pd.read_csv(src / "progeny_human_top100_matrix.csv", index_col=0)
    pd.testing.assert_frame_equal(load_progeny_weights(), ref, check_names=False)


def test_user_gmt_roundtrip_gz_and_errors(tmp_path):
    sets = {"A": ["g1", "g2", "g3"], "B": ["g3", "g4"]}
    for fname in ("s.gmt", "s.gmt.gz"):
        p = write_gmt(sets, tmp_path / fname)
        assert load_gene_sets(p) == sets
    assert gzip.decompress((tmp_path / "s.gmt.gz").read_bytes()).startswith(b"A\t")
    (tmp_path / "dup.gmt").write_text("A\td\tg1\nA\td\tg2\n")
    with pytest.raises(InputError, match="appears twice"):
        load_gene_sets(tmp_path / "dup.gmt")
    with pytest.raises(InputError, match="not found"):
        load_gene_sets(tmp_path / "missing.gmt")
    with pytest.raises(InputError, match="id_type"):
        load_gene_sets("kegg", id_type="ensembl")


def test_restrict_and_membership():
    sets = {"A": ["g1", "g2", "x", "g3"], "B": ["g3", "y"], "C": ["g1", "g2", "g3", "g4", "g5"]}
    kept = restrict_gene_sets(sets, ["g1", "g2", "g3", "g4"], min_size=2)
    assert kept == {"A": ["g1", "g2", "g3"], "C": ["g1", "g2", "g3", "g4"]}
    assert restrict_gene_sets(sets, ["g1", "g2", "g3", "g4"], min_size=2, max_size=3) == {"A": ["g1", "g2", "g3"]}
    genes = ["g4", "g3", "g2", "g1"]
    M = membership_matrix(kept, genes)
    assert M.shape == (4, 2) and M.dtype == np.float32
    np.testing.assert_array_equal(M, [[0, 1], [1, 1], [1, 1], [1, 1]])
    with pytest.raises(InputError):
        restrict_gene_sets(sets, genes, min_size=3, max_size=2)


def test_pathway_scorer_means_missing_and_contract():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(30)]
    sets = {"s1": genes[:5], "s2": genes[3:12], "tiny": genes[:2]}
    X = pd.DataFrame(rng.normal(size=(8, 30)), columns=genes)
    sc = PathwayScorer(sets, min_size=3).fit(X)
    assert sc.pathways_ == ["s1", "s2"]
    S = sc.transform(X)
    np.testing.assert_allclose(S[:, 0], X[genes[:5]].mean(1))
    np.testing.assert_allclose(S[:, 1], X[genes[3:12]].mean(1))
    # Missing values and absent genes are left out of the mean; reordered columns are matched by name.
    X2 = X.copy()
    X2.iloc[0, 0] = np.nan
    X2 = X2.drop(columns=["g1"])[list(reversed(X2.columns.drop("g1")))]
    S2 = PathwayScorer(sets, min_size=3).fit(X).transform(X2)
    np.testing.assert_allclose(S2[0, 0], X.iloc[0, 2:5].mean())
    np.testing.assert_allclose(S2[1, 0], X.iloc[1, [0, 2, 3, 4]].mean())
    # sklearn contract: clone, pickle, plain arrays with genes=, fitted checks.
    c = clone(sc)
    assert not hasattr(c, "pathways_")
    with pytest.raises(NotFittedError):
        c.transform(X)
    again = pickle.loads(pickle.dumps(sc))
    np.testing.assert_allclose(again.transform(X.to_numpy()), S)
    arr = PathwayScorer(sets, min_size=3, genes=genes).fit(X.to_numpy())
    np.testing.assert_allclose(arr.transform(X.to_numpy()), S)
    assert list(sc.get_feature_names_out()) == ["s1", "s2"]
    with pytest.raises(InputError, match="genes="):
        PathwayScorer(sets).fit(X.to_numpy())
    with pytest.raises(InputError, match="no gene set"):
        PathwayScorer(sets, min_size=50).fit(X)


def test_pathway_scorer_on_shipped_kegg_and_cohort():
    from genexflow.cohort import Cohort

    kegg = load_gene_sets("kegg")
    genes = sorted({g for v in list(kegg.values())[:10] for g in v})
    rng = np.random.default_rng(1)
    co = Cohort(rng.normal(size=(5, len(genes))).astype(np.float32), genes,
                pd.DataFrame(index=pd.Index([f"s{i}" for i in range(5)], name="sample_id")))
    sc = PathwayScorer("kegg", min_size=10).fit(co)
    S = sc.transform(co)
    k = sc.pathways_.index("hsa00010")
    idx = [genes.index(g) for g in kegg["hsa00010"] if g in genes]
    np.testing.assert_allclose(S[:, k], co.X[:, idx].mean(1), rtol=1e-6)


def test_build_priors_from_shipped_sets_and_save_load(tmp_path):
    kegg = load_gene_sets("kegg")
    genes = sorted({g for k in ("hsa04110", "hsa04115", "hsa04210") for g in kegg[k]})
    pri = build_priors(genes, "kegg", min_size=15)
    assert {"hsa04110", "hsa04115", "hsa04210"} <= set(pri.pathways)
    assert pri.membership.shape == (len(genes), pri.n_pathways)
    assert pri.graph.kind == "membership" and pri.graph.n_genes == len(genes)
    back = type(pri).load(pri.save(tmp_path / "pri"))
    assert back.genes == pri.genes and back.gene_sets == pri.gene_sets
    np.testing.assert_array_equal(back.graph.factors()["self_weight"], pri.graph.factors()["self_weight"])
    with pytest.raises(InputError, match="ID type"):
        build_priors([str(i) for i in range(50)], "kegg")
