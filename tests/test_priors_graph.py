"""Gene graphs: normalization, co-membership factorization, STRING-format edge lists, co-expression kNN."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from genexflow.errors import InputError
from genexflow.priors import (
    CoexpressionKNNGraph,
    build_priors,
    comembership_graph,
    edge_list_graph,
    knn_coexpression_graph,
    load_gene_sets,
    normalized_adjacency,
    read_edge_list,
    restrict_gene_sets,
)


def _dense_comembership(sets, genes, w):
    G = len(genes)
    A = np.zeros((G, G))
    for k, members in enumerate(sets.values()):
        idx = [genes.index(g) for g in members]
        for i in idx:
            for j in idx:
                if i != j:
                    A[i, j] += w[k]
    return A


def test_normalized_adjacency_all_input_kinds_agree():
    rng = np.random.default_rng(0)
    A = rng.random((7, 7)) * (rng.random((7, 7)) < 0.4)
    A = np.triu(A, 1) + np.triu(A, 1).T
    A[3] = A[:, 3] = 0  # an isolated node keeps only its self loop
    ref = normalized_adjacency(A)
    Ai = A + np.eye(7)
    d = Ai.sum(1)
    np.testing.assert_allclose(ref, Ai / np.sqrt(np.outer(d, d)))
    assert ref[3, 3] == pytest.approx(1.0)
    np.testing.assert_allclose(normalized_adjacency(sp.csr_matrix(A)).toarray(), ref, rtol=1e-6)
    np.testing.assert_allclose(normalized_adjacency(torch.tensor(A)).numpy(), ref)
    # Without self loops an isolated row stays zero instead of dividing by zero.
    no_loops = normalized_adjacency(A, add_self_loops=False)
    assert np.isfinite(no_loops).all() and not no_loops[3].any()


@pytest.mark.parametrize("weighting", ["inverse_size", "count"])
def test_comembership_factorization_matches_dense(weighting):
    genes = [f"g{i}" for i in range(12)]
    sets = {"a": genes[:5], "b": genes[3:9], "c": [genes[i] for i in (0, 4, 8, 10)]}
    g = comembership_graph(sets, genes, weighting=weighting)
    sizes = np.array([5, 6, 4.0])
    w = 1 / sizes if weighting == "inverse_size" else np.ones(3)
    A = _dense_comembership(sets, genes, w)
    np.testing.assert_allclose(g.adjacency().toarray(), A, rtol=1e-6)
    np.testing.assert_allclose(g.degree(), A.sum(1) + 1)
    H = np.random.default_rng(1).normal(size=(12, 3))
    ref = normalized_adjacency(A) @ H
    np.testing.assert_allclose(g.propagate(H), ref, rtol=1e-5, atol=1e-7)
    f = g.factors()
    s, M = f["scale"], f["membership"]
    fact = s[:, None] * (M @ (f["set_weights"][:, None] * (M.T @ (s[:, None] * H)))) + f["self_weight"][:, None] * H
    np.testing.assert_allclose(fact, ref, rtol=1e-5, atol=1e-6)
    assert f["self_weight"][11] == pytest.approx(1.0)  # gene in no set: Â H = H there


def _write_string(path, rows, gz=False):
    text = "protein1 protein2 combined_score\n" + "".join(f"{a} {b} {s}\n" for a, b, s in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_string_edge_list_graph(tmp_path):
    rows = [
        ("9606.ENSP1", "9606.ENSP2", 900), ("9606.ENSP2", "9606.ENSP1", 900),  # both directions, as STRING
        ("9606.ENSP2", "9606.ENSP3", 450), ("9606.ENSP3", "9606.ENSP4", 150),  # below min_score
        ("9606.ENSP1", "9606.ENSP9", 999),  # ENSP9 is not a cohort gene
    ]
    p = _write_string(tmp_path / "string.txt.gz", rows, gz=True)
    id_map = tmp_path / "map.tsv"
    id_map.write_text("ensp\tsymbol\nENSP1\tTP53\nENSP2\tMDM2\nENSP3\tCDKN1A\nENSP4\tATM\nENSP9\tXYZ\n")
    edges = read_edge_list(p, min_score=400, id_map=id_map)
    assert len(edges) == 4 and edges["weight"].max() == pytest.approx(0.999)
    genes = ["ATM", "CDKN1A", "MDM2", "TP53"]
    g = edge_list_graph(edges, genes)
    A = g.adjacency().toarray()
    expected = np.zeros((4, 4))
    expected[3, 2] = expected[2, 3] = 0.9
    expected[2, 1] = expected[1, 2] = 0.45
    np.testing.assert_allclose(A, expected, rtol=1e-6)
    assert g.n_edges == 4
    H = np.random.default_rng(0).normal(size=(4, 2))
    np.testing.assert_allclose(g.propagate(H), normalized_adjacency(expected) @ H, rtol=1e-6)
    # The same through build_priors, straight from the file.
    sets = {"p53": genes}
    pri = build_priors(genes, sets, min_size=2, graph="edge_list", edge_list=p, id_map=id_map)
    np.testing.assert_allclose(pri.graph.adjacency().toarray(), expected, rtol=1e-6)
    with pytest.raises(InputError, match="id_map"):
        edge_list_graph(p, genes)  # ENSP IDs without a map match no cohort gene
    bad = tmp_path / "bad.txt"
    bad.write_text("protein1 protein2 combined_score\nA B high\n")
    with pytest.raises(InputError, match="non-numeric"):
        read_edge_list(bad)


def test_edge_list_of_symbols_with_real_kegg_genes(tmp_path):
    kegg = load_gene_sets("kegg")
    genes = kegg["hsa04115"][:40]
    rng = np.random.default_rng(3)
    pairs = rng.choice(40, size=(120, 2))
    rows = [(genes[a], genes[b], int(s)) for (a, b), s in zip(pairs, rng.integers(150, 1000, 120), strict=True)]
    p = _write_string(tmp_path / "sym.txt", rows)
    g = edge_list_graph(p, genes, min_score=400)
    A = g.adjacency().toarray()
    assert np.allclose(A, A.T) and not np.diag(A).any()
    # Reference: max score per unordered pair at or above 400.
    ref = np.zeros((40, 40))
    for a, b, s in rows:
        if s >= 400 and a != b:
            i, j = genes.index(a), genes.index(b)
            ref[i, j] = ref[j, i] = max(ref[i, j], s / 1000)
    np.testing.assert_allclose(A, ref, rtol=1e-6)


def test_knn_coexpression_graph_finds_correlated_genes():
    rng = np.random.default_rng(0)
    n, G = 60, 30
    base = rng.normal(size=(n, 3))
    X = rng.normal(scale=0.3, size=(n, G))
    X[:, :10] += base[:, [0]]  # three co-expressed modules of 10 genes
    X[:, 10:20] += base[:, [1]]
    X[:, 20:] += base[:, [2]]
    genes = [f"g{i}" for i in range(G)]
    g = knn_coexpression_graph(X, genes, k=4, block_size=7)  # blocks smaller than G on purpose
    A = g.adjacency().toarray()
    module = np.repeat(np.arange(3), 10)
    src, dst = np.nonzero(A)
    assert (module[src] == module[dst]).all()
    assert np.allclose(A, A.T) and (A.astype(bool).sum(1) >= 4).all()
    est = CoexpressionKNNGraph(k=4).fit(pd.DataFrame(X, columns=genes))
    np.testing.assert_allclose(est.graph_.adjacency().toarray(), A, rtol=1e-6)
    pri = build_priors(genes, {"m1": genes[:10], "m2": genes[10:20]}, min_size=5, graph="knn", X=X, k=4)
    assert pri.graph.kind == "edges" and pri.graph.n_edges == g.n_edges
    with pytest.raises(InputError, match="needs the training matrix"):
        build_priors(genes, {"m1": genes[:10]}, graph="knn")


def test_shipped_go_bp_comembership_degree_without_materializing():
    go = load_gene_sets("go_bp")
    genes = sorted({g for v in list(go.values())[:40] for g in v})[:400]
    sets = restrict_gene_sets(go, genes, min_size=5, max_size=200)
    g = comembership_graph(sets, genes)
    A = g.adjacency()
    np.testing.assert_allclose(g.degree(), np.asarray(A.sum(1)).ravel() + 1, rtol=1e-5)
