"""STRING ``protein.links`` -> gene graph, on a committed excerpt in STRING v12's layouts (real Ensembl
protein IDs, synthetic scores: see tests/data/string/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genexflow.errors import InputError
from genexflow.ingest.gene_ids import load_maps
from genexflow.priors import build_priors
from genexflow.priors.string_db import read_string_network, string_gene_map

D = Path(__file__).parent / "data" / "string"
LINKS, INFO, ALIASES = (D / f"9606.protein.{k}.excerpt.txt" for k in ("links", "info", "aliases"))


def test_threshold_mapping_and_duplicates():
    df = read_string_network(LINKS, INFO, min_score=700)
    pairs = {(a, b): w for a, b, w in df.itertuples(index=False)}
    # SERPINE1 arrives as STRING's "PAI1" and resolves through the shipped alias map
    assert set(pairs) == {("CCND1", "CCND2"), ("CCNB2", "CCND1"), ("PTEN", "SESN2"), ("SERPINE1", "SESN2")}
    # CCND1's two proteins: the pair keeps the higher score (950, not 610); the CCND1-CCND1 pair is dropped
    assert pairs[("CCND1", "CCND2")] == pytest.approx(0.95)
    assert df.attrs["n_links"] == 2 * 6  # both directions of the 6 links >= 700 in the file
    assert df.attrs["unresolved"] == ["NOTAGENE1"] and df.attrs["n_unmapped_links"] == 2
    low = read_string_network(LINKS, INFO, min_score=400)
    assert ("CYCS", "GADD45B") in set(zip(low.gene1, low.gene2, strict=True)) and len(low) == len(df) + 1
    # aliases instead of info give the same network
    assert read_string_network(LINKS, aliases=ALIASES, min_score=700).equals(df)


def test_entrez_ids_and_graph_for_the_model():
    ent = string_gene_map(INFO, id_type="entrez")
    sym = string_gene_map(INFO)
    to_symbol = load_maps().entrez
    assert all(to_symbol[int(e)] == sym[p] for p, e in ent.items())
    edges = read_string_network(LINKS, INFO, min_score=400)
    genes = ["CCND1", "CCND2", "CCNB2", "PTEN", "SESN2", "SERPINE1", "CYCS", "GADD45B", "TP53"]
    sets = {"cycle": ["CCND1", "CCND2", "CCNB2"], "stress": ["PTEN", "SESN2", "SERPINE1", "GADD45B", "CYCS"]}
    pri = build_priors(genes, sets, min_size=2, graph="edge_list", edge_list=edges)
    A = np.zeros((len(genes), len(genes)))
    A[pri.graph.edge_index[0], pri.graph.edge_index[1]] = pri.graph.edge_weight
    assert np.allclose(A, A.T) and A[genes.index("CCND1"), genes.index("CCND2")] == pytest.approx(0.95)
    assert A[genes.index("TP53")].sum() == 0 and pri.graph.n_edges == 2 * len(edges)


def test_clear_errors(tmp_path):
    with pytest.raises(InputError, match="protein.info"):
        read_string_network(LINKS)
    bad = tmp_path / "info.txt"
    bad.write_text("id\tname\nx\ty\n")
    with pytest.raises(InputError, match="#string_protein_id"):
        read_string_network(LINKS, bad)
    with pytest.raises(InputError, match="not found"):
        read_string_network(tmp_path / "none.txt", INFO)
