"""``genexflow priors list | build | score``: shipped gene sets, priors (gene sets + graph) for a cohort, and
pathway scores.

Matrices are read in the ``shared/data`` layout (samples as rows, first column ``sample_id``; Parquet or
CSV/TSV; ``--orientation genes`` for genes-as-rows files) or as a cohort folder / ``.h5ad``.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from rich.table import Table

from genexflow.cli._common import console, step
from genexflow.cohort import Cohort
from genexflow.io import read_matrix, write_matrix

priors_app = typer.Typer(help="Biological priors: gene sets, gene graphs, pathway scores.", no_args_is_help=True)

_SETS = typer.Option("kegg", "--gene-sets", "-s", help="kegg, go_bp, progeny or a GMT file (.gmt / .gmt.gz; "
                     "Reactome's ReactomePathways.gmt is recognised and keyed by stable ID).")
_ID = typer.Option("symbol", "--id-type", help="Gene IDs of the shipped sets: symbol or entrez.")
_MIN = typer.Option(5, "--min-size", help="Drop sets with fewer member genes in the cohort.")
_MAX = typer.Option(None, "--max-size", help="Drop sets with more member genes in the cohort.")
_ORIENT = typer.Option("auto", "--orientation", help="Rows of a matrix file: samples, genes or auto.")


class GraphSource(StrEnum):
    pathways = "pathways"
    edge_list = "edge_list"
    knn = "knn"


def _read_frame(path: Path, orientation: str):
    """(samples x genes DataFrame) from a cohort folder / .h5ad or a matrix file."""
    with step(f"read {path.name}"):
        if path.is_dir() or path.suffix == ".h5ad":
            return Cohort.read(path).frame()
        return read_matrix(path, orientation=orientation)


@priors_app.command("list")
def priors_list() -> None:
    """Shipped gene-set collections with their set counts and sizes."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.priors import SHIPPED, load_gene_sets
    from genexflow.priors.genesets import PROVENANCE, gene_set_names

    table = Table("name", "sets", "median size", "genes", "named", "version", "id types")
    for name, files in SHIPPED.items():
        sets = load_gene_sets(name)
        sizes = [len(v) for v in sets.values()]
        genes = len({g for v in sets.values() for g in v})
        named = len(gene_set_names(name))
        table.add_row(name, str(len(sets)), f"{np.median(sizes):.0f}", str(genes), f"{named}/{len(sets)}",
                      PROVENANCE[name]["version"], ", ".join(files))
    console.print(table)
    console.print("KEGG names are not available offline (pass --pathway-names with KEGG's list/pathway/hsa "
                  "output to `priors build`). Reactome (CC BY 4.0) is not shipped: no offline package carries "
                  "it; pass --gene-sets ReactomePathways.gmt from https://reactome.org/download-data.",
                  markup=False)


@priors_app.command("build")
def priors_build(
    cohort: Path = typer.Argument(..., help="Training cohort (folder, .h5ad or matrix file): its genes, in order."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for priors.json + graph.npz."),
    gene_sets: str = _SETS, id_type: str = _ID, min_size: int = _MIN, max_size: int | None = _MAX,
    graph: GraphSource = typer.Option(GraphSource.pathways, "--graph", help="Gene graph source."),
    edge_list: Path | None = typer.Option(None, "--edge-list", help="STRING-format file (protein1 protein2 "
                                          "combined_score) for --graph edge_list."),
    id_map: Path | None = typer.Option(None, "--id-map", help="Two-column file mapping edge-list IDs to genes."),
    min_score: float = typer.Option(400, "--min-score", help="Keep edges with combined_score >= this."),
    k: int = typer.Option(10, "-k", help="Neighbours per gene for --graph knn (fitted on this cohort)."),
    pathway_names: Path | None = typer.Option(None, "--pathway-names", help="ID<TAB>name file (e.g. KEGG's "
                                              "list/pathway/hsa output, ReactomePathways.txt) to name pathways."),
    orientation: str = _ORIENT,
) -> None:
    """Restrict gene sets to the cohort's genes and build the gene graph; write them to --out."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.priors import build_priors

    X = _read_frame(cohort, orientation)
    with step("build priors"):
        pri = build_priors(list(map(str, X.columns)), gene_sets, id_type=id_type, min_size=min_size,
                           max_size=max_size, graph=graph.value, edge_list=edge_list, id_map=id_map,
                           min_score=min_score, X=X.to_numpy() if graph is GraphSource.knn else None, k=k,
                           pathway_names=pathway_names)
        pri.save(out)
    covered = int((pri.membership.sum(1) > 0).sum())
    console.print(f"{pri.n_pathways} gene sets, {covered}/{pri.n_genes} genes in a set, graph "
                  f"{pri.graph.kind} ({pri.graph.n_edges:,} directed edges) -> {out}", markup=False)
    largest = sorted(pri.pathways, key=lambda p: -len(pri.gene_sets[p]))[:5]
    console.print("largest sets: " + "; ".join(f"{pri.label(p)} ({len(pri.gene_sets[p])})" for p in largest),
                  markup=False)
    if len(pri.names) < pri.n_pathways:
        console.print(f"{pri.n_pathways - len(pri.names)} of {pri.n_pathways} pathways have no name (shown by ID); "
                      "pass --pathway-names ID<TAB>name to name them", markup=False)


@priors_app.command("score")
def priors_score(
    matrix: Path = typer.Argument(..., help="Preprocessed (log-scale) expression: folder, .h5ad or matrix file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output matrix (.parquet, .csv or .tsv): samples x pathways."),
    gene_sets: str = _SETS, id_type: str = _ID, min_size: int = _MIN, max_size: int | None = _MAX,
    orientation: str = _ORIENT,
) -> None:
    """Pathway scores: the mean expression of each set's member genes, per sample."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.priors import PathwayScorer
    from genexflow.priors.genesets import gene_set_names

    X = _read_frame(matrix, orientation)
    with step("score pathways"):
        sc = PathwayScorer(gene_sets, id_type=id_type, min_size=min_size, max_size=max_size).fit(X)
        S = pd.DataFrame(sc.transform(X), index=X.index, columns=sc.pathways_)
    names = gene_set_names(gene_sets, id_type=id_type)
    if names:  # a names table next to the score matrix (its columns are IDs)
        nfile = out.with_name(out.stem + ".pathway_names.tsv")
        pd.Series({p: names.get(p, "") for p in S.columns}, name="name").rename_axis("pathway").to_csv(nfile, sep="\t")
        console.print(f"pathway names -> {nfile}", markup=False)
    S.index.name = "sample_id"
    write_matrix(S, out, [matrix])
    console.print(f"{S.shape[0]} samples x {S.shape[1]} pathways -> {out}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(priors_app, name="priors")
