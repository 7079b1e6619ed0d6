"""Biological priors: gene sets (KEGG, GO-BP, PROGENy shipped offline, Reactome's download files, or any
GMT) with pathway names and provenance, gene graphs (pathway co-membership, STRING networks and other
edge lists, co-expression kNN), the normalized adjacency and pathway scores."""

from genexflow.priors.bundle import GenePriors, build_priors
from genexflow.priors.genesets import (
    SHIPPED,
    gene_set_names,
    gene_set_provenance,
    load_gene_sets,
    load_progeny_weights,
    membership_matrix,
    parse_gmt,
    pathway_names,
    read_gmt,
    restrict_gene_sets,
    write_gmt,
)
from genexflow.priors.graph import (
    CoexpressionKNNGraph,
    GeneGraph,
    comembership_graph,
    edge_list_graph,
    knn_coexpression_graph,
    normalized_adjacency,
    read_edge_list,
)
from genexflow.priors.names import pathway_label, read_pathway_names
from genexflow.priors.scores import PathwayScorer

__all__ = [
    "SHIPPED", "CoexpressionKNNGraph", "GeneGraph", "GenePriors", "PathwayScorer", "build_priors",
    "gene_set_names", "gene_set_provenance", "pathway_label", "pathway_names", "read_pathway_names",
    "comembership_graph", "edge_list_graph", "knn_coexpression_graph", "load_gene_sets", "load_progeny_weights",
    "membership_matrix", "normalized_adjacency", "parse_gmt", "read_edge_list", "read_gmt",
    "restrict_gene_sets", "write_gmt",
]
