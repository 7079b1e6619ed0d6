"""One object with everything the pathway network needs from the priors: gene order, restricted gene sets,
membership matrix and gene graph (:class:`GenePriors`, built by :func:`build_priors`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genexflow.errors import InputError
from genexflow.priors.genesets import gene_set_names, load_gene_sets, membership_matrix, restrict_gene_sets
from genexflow.priors.graph import GeneGraph, comembership_graph, edge_list_graph, knn_coexpression_graph
from genexflow.priors.names import pathway_label, read_pathway_names

GRAPH_SOURCES = ("pathways", "edge_list", "knn")


@dataclass
class GenePriors:
    """Gene order, gene sets restricted to it, their membership matrix and the gene graph.

    Attributes
    ----------
    genes : list of str, length G
        The model's input gene order.
    gene_sets : dict of str to list of str, P sets
    membership : ndarray of shape (G, P), float32 0/1
    graph : GeneGraph over ``genes``
    names : dict of str to str
        Pathway ID -> human name where one is known (see :mod:`genexflow.priors.names`).
    """

    genes: list[str]
    gene_sets: dict[str, list[str]]
    membership: np.ndarray
    graph: GeneGraph
    names: dict[str, str] = field(default_factory=dict)

    def label(self, pathway: str) -> str:
        """``"GO:0000002 mitochondrial genome maintenance"``: the ID and its name when known."""
        return pathway_label(pathway, self.names)

    @property
    def pathways(self) -> list[str]:
        return list(self.gene_sets)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_pathways(self) -> int:
        return self.membership.shape[1]

    def save(self, folder: str | Path) -> Path:
        """Write ``priors.json`` (genes, sets, graph metadata) and ``graph.npz`` (arrays) to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        g = self.graph
        meta = {"genes": self.genes, "gene_sets": self.gene_sets, "graph_kind": g.kind,
                "graph_meta": g.meta, "graph_pathways": g.pathways,
                "names": {p: n for p, n in self.names.items() if p in self.gene_sets}}
        (folder / "priors.json").write_text(json.dumps(meta))
        arrays = {"set_weights": g.set_weights} if g.kind == "membership" else {
            "edge_index": g.edge_index, "edge_weight": g.edge_weight}
        np.savez_compressed(folder / "graph.npz", **arrays)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> GenePriors:
        folder = Path(folder)
        if not (folder / "priors.json").is_file():
            raise InputError(f"no priors.json in {folder}; write it with GenePriors.save")
        meta = json.loads((folder / "priors.json").read_text())
        arrays = dict(np.load(folder / "graph.npz"))
        M = membership_matrix(meta["gene_sets"], meta["genes"])
        if meta["graph_kind"] == "membership":
            graph = GeneGraph(meta["genes"], "membership", membership=M, set_weights=arrays["set_weights"],
                              pathways=meta["graph_pathways"], meta=meta["graph_meta"])
        else:
            graph = GeneGraph(meta["genes"], "edges", edge_index=arrays["edge_index"],
                              edge_weight=arrays["edge_weight"], meta=meta["graph_meta"])
        return cls(meta["genes"], meta["gene_sets"], M, graph, meta.get("names", {}))


def build_priors(
    genes: Sequence[str],
    gene_sets: str | Path | Mapping[str, Sequence[str]] = "kegg",
    id_type: str = "symbol",
    min_size: int = 5,
    max_size: int | None = None,
    graph: str | GeneGraph = "pathways",
    edge_list: str | Path | None = None,
    id_map: Any = None,
    min_score: float = 400,
    X: np.ndarray | None = None,
    k: int = 10,
    weighting: str = "inverse_size",
    pathway_names: str | Path | Mapping[str, str] | None = None,
) -> GenePriors:
    """Build the priors for a cohort's genes.

    Parameters
    ----------
    genes : sequence of str
        The cohort's genes, in model input order.
    gene_sets : name, GMT path or mapping
        See :func:`~genexflow.priors.load_gene_sets`.
    min_size, max_size : int
        Bounds on set sizes after restriction to ``genes``.
    graph : {"pathways", "edge_list", "knn"} or GeneGraph
        ``"pathways"``: weighted co-membership of the restricted sets (``weighting``).
        ``"edge_list"``: a STRING-format file ``edge_list`` (``min_score``, ``id_map``).
        ``"knn"``: co-expression kNN on the *training* matrix ``X`` (n_samples, G) with ``k`` neighbours.
    pathway_names : path or mapping, optional
        Pathway ID -> name, added to (and overriding) the names the gene-set source carries, e.g. KEGG's
        ``list/pathway/hsa`` output (:func:`~genexflow.priors.names.read_pathway_names`).

    Examples
    --------
    >>> pri = build_priors(["TP53", "MDM2", "CDKN1A", "ATM", "CHEK2", "BAX"], min_size=3)
    >>> pri.membership.shape[0]
    6
    """
    genes = [str(g) for g in genes]
    sets = gene_sets if isinstance(gene_sets, Mapping) else load_gene_sets(gene_sets, id_type=id_type)
    kept = restrict_gene_sets(sets, genes, min_size=min_size, max_size=max_size)
    if not kept:
        raise InputError(
            f"no gene set keeps >= {min_size} of the {len(genes)} genes; check the gene ID type "
            f"(id_type={id_type!r}) or lower min_size"
        )
    M = membership_matrix(kept, genes)
    if isinstance(graph, GeneGraph):
        g = graph if graph.genes == genes else graph.subgraph(genes)
    elif graph == "pathways":
        g = comembership_graph(M, genes, weighting=weighting, pathways=list(kept))
    elif graph == "edge_list":
        if edge_list is None:
            raise InputError("graph='edge_list' needs edge_list=<STRING-format file>")
        g = edge_list_graph(edge_list, genes, min_score=min_score, id_map=id_map)
    elif graph == "knn":
        if X is None:
            raise InputError("graph='knn' needs the training matrix X (n_samples, n_genes)")
        g = knn_coexpression_graph(X, genes, k=k)
    else:
        raise InputError(f"unknown graph source {graph!r}; use one of {', '.join(GRAPH_SOURCES)}")
    names = {} if isinstance(gene_sets, Mapping) else gene_set_names(gene_sets, id_type=id_type)
    if pathway_names is not None:
        names |= dict(pathway_names) if isinstance(pathway_names, Mapping) else read_pathway_names(pathway_names)
    return GenePriors(genes, kept, M, g, {p: names[p] for p in kept if names.get(p)})
