"""STRING protein-protein networks (https://string-db.org, CC BY 4.0) as the model's gene graph.

STRING's per-organism download files, human = taxon 9606 (v11.5/v12 layouts):

* ``9606.protein.links.v12.0.txt.gz``: space-separated, header ``protein1 protein2 combined_score``,
  IDs ``9606.ENSP…``, scores 0-1000 (150 low, 400 medium, 700 high, 900 highest confidence); every
  interaction is listed in both directions.
* ``9606.protein.info.v12.0.txt.gz``: tab-separated, header ``#string_protein_id preferred_name
  protein_size annotation``; ``preferred_name`` is the gene symbol STRING uses (sometimes an older one).
* ``9606.protein.aliases.v12.0.txt.gz`` (optional): ``#string_protein_id alias source``.

:func:`read_string_network` keeps edges with ``combined_score >= min_score``, maps each ``ENSP`` to
STRING's preferred name (or, without an info file, to an alias from an HGNC/gene-name source), then to
the **official symbol through the shipped ID and alias maps** (``genexflow/ingest/data``: NCBI Gene via
org.Hs.eg.db 3.16, the same tables ``genexflow ingest`` uses; previous symbols and unambiguous aliases
resolve), and optionally to Entrez IDs. Proteins that do not resolve are dropped and counted; several
proteins of one gene keep the pair's highest score. The result feeds
:func:`genexflow.priors.graph.edge_list_graph` (``build_priors(graph="edge_list", edge_list=frame)``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from genexflow.errors import InputError
from genexflow.ingest.gene_ids import load_maps, resolve_symbols
from genexflow.priors.graph import _TAXON, read_edge_list

STRING_LICENSE = "CC BY 4.0 (STRING, https://string-db.org/cgi/access)"
# alias sources that carry gene symbols (STRING v11.5 / v12 naming)
_SYMBOL_SOURCES = ("Ensembl_HGNC_symbol", "BioMart_HUGO", "Ensembl_EntrezGene", "Ensembl_gene_name",
                   "Ensembl_HGNC", "HGNC")


def _read_table(path: str | Path, what: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"STRING {what} file not found: {p}")
    df = pd.read_csv(p, sep="\t", dtype=str, quoting=3, compression="infer")
    df.columns = [c.lstrip("#").strip() for c in df.columns]
    if "string_protein_id" not in df.columns:
        raise InputError(f"{p}: expected STRING's {what} header starting with '#string_protein_id'")
    df["string_protein_id"] = df["string_protein_id"].str.replace(_TAXON, "", regex=True)
    return df


def string_protein_names(info: str | Path | None = None, aliases: str | Path | None = None) -> pd.Series:
    """STRING protein ID (taxon prefix removed) -> the gene name STRING gives it.

    From ``protein.info`` (``preferred_name``) when given, else from ``protein.aliases`` (the first alias
    whose source carries gene symbols).
    """
    if info is not None:
        df = _read_table(info, "protein.info")
        if "preferred_name" not in df.columns:
            raise InputError(f"{info}: no preferred_name column")
        return df.set_index("string_protein_id")["preferred_name"]
    if aliases is None:
        raise InputError("map STRING proteins to genes with its protein.info (or protein.aliases) file")
    df = _read_table(aliases, "protein.aliases")
    if not {"alias", "source"} <= set(df.columns):
        raise InputError(f"{aliases}: expected columns '#string_protein_id alias source'")
    rank = {s: i for i, s in enumerate(_SYMBOL_SOURCES)}
    df["rank"] = df["source"].map(lambda s: min((rank[t] for t in str(s).split() if t in rank), default=None))
    df = df.dropna(subset=["rank"]).sort_values(["string_protein_id", "rank"], kind="stable")
    return df.drop_duplicates("string_protein_id").set_index("string_protein_id")["alias"]


def string_gene_map(info: str | Path | None = None, aliases: str | Path | None = None,
                    id_type: str = "symbol") -> pd.Series:
    """STRING protein ID -> official gene symbol (or Entrez ID), resolved through the shipped maps;
    proteins whose name does not resolve are absent. ``attrs["unresolved"]`` lists their names."""
    names = string_protein_names(info, aliases)
    canon, _, _ = resolve_symbols(names.to_numpy())
    out = pd.Series(canon.to_numpy(), index=names.index, dtype=object)
    unresolved = sorted(set(names[out.isna().to_numpy()]))
    if id_type == "entrez":
        to_entrez = {s: str(e) for e, s in load_maps().entrez.items()}
        out = out.map(to_entrez)
    elif id_type != "symbol":
        raise InputError(f"unknown id_type {id_type!r}; use symbol or entrez")
    out = out.dropna()
    out.attrs["unresolved"] = unresolved
    return out


def read_string_network(links: str | Path, info: str | Path | None = None, aliases: str | Path | None = None,
                        min_score: float = 700, id_type: str = "symbol") -> pd.DataFrame:
    """STRING ``protein.links`` as a gene edge list.

    Parameters
    ----------
    links : path
        ``protein.links`` (or ``protein.links.detailed``: the first three columns are used), gzip allowed.
    info, aliases : path, optional
        ``protein.info`` (preferred) or ``protein.aliases`` of the same STRING version.
    min_score : float
        Keep ``combined_score >= min_score`` (0-1000; default 700 = high confidence).
    id_type : {"symbol", "entrez"}

    Returns
    -------
    DataFrame with ``gene1``, ``gene2`` (``gene1 < gene2``), ``weight`` (combined score / 1000, float32),
    one row per gene pair (highest score over the pair's proteins, self pairs dropped).
    ``attrs``: ``n_links`` (rows at or above the threshold), ``n_unmapped_links`` (a protein without a
    gene), ``unresolved`` (STRING names the shipped maps do not know).
    """
    gene = string_gene_map(info, aliases, id_type)
    raw = read_edge_list(links, min_score=min_score)  # IDs with the taxon prefix stripped
    g1, g2 = raw["gene1"].map(gene), raw["gene2"].map(gene)
    ok = g1.notna() & g2.notna() & (g1 != g2)
    a = np.where(g1[ok] < g2[ok], g1[ok], g2[ok])
    b = np.where(g1[ok] < g2[ok], g2[ok], g1[ok])
    df = pd.DataFrame({"gene1": a, "gene2": b, "weight": raw["weight"][ok].to_numpy(np.float32)})
    df = df.sort_values("weight", ascending=False, kind="stable").drop_duplicates(["gene1", "gene2"])
    df = df.sort_values(["gene1", "gene2"]).reset_index(drop=True)
    df.attrs.update(n_links=int(len(raw)), n_unmapped_links=int((g1.isna() | g2.isna()).sum()),
                    unresolved=gene.attrs.get("unresolved", []))
    return df
