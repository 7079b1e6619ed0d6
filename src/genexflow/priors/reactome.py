"""Reactome pathways from Reactome's official download files (https://reactome.org/download-data).

Reactome data are CC BY 4.0 (cite: Milacic M, et al. (2024) The Reactome Pathway Knowledgebase 2024.
*Nucleic Acids Res* 52:D672). No Debian, PyPI or npm package available offline carries Reactome's gene
sets, so none is shipped: download the files once and pass them.

* ``ReactomePathways.gmt`` (gene symbols): ``<pathway name><TAB><stable ID><TAB>gene<TAB>…``, one pathway
  per line, all species' human-inferred pathways are human (``R-HSA-``). Read by :func:`read_reactome_gmt`
  (and by :func:`genexflow.priors.load_gene_sets` / ``--gene-sets path/ReactomePathways.gmt``, which
  recognise the layout and key the sets by stable ID).
* ``NCBI2Reactome_All_Levels.txt`` (Entrez Gene IDs): ``<Entrez ID><TAB><stable ID><TAB><URL><TAB>
  <pathway name><TAB><evidence code><TAB><species>``, one gene-pathway pair per line, every level of the
  hierarchy. Read by :func:`read_reactome_ncbi`, which writes nothing: pass the result to
  :func:`genexflow.priors.write_gmt` to get an Entrez GMT.
* ``ReactomePathways.txt`` (names): ``<stable ID><TAB><name><TAB><species>``, read by
  :func:`genexflow.priors.names.read_pathway_names`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from genexflow.errors import InputError
from genexflow.priors.genesets import _open_text, parse_gmt_with_descriptions

REACTOME_LICENSE = "CC BY 4.0 (Reactome, https://reactome.org/license)"


def read_reactome_gmt(path: str | Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``ReactomePathways.gmt`` -> (stable ID -> gene symbols, stable ID -> pathway name)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"Reactome GMT not found: {p} (download ReactomePathways.gmt.zip from "
                         "https://reactome.org/download-data and unzip it)")
    sets, names = parse_gmt_with_descriptions(_open_text(p), str(p))
    if not all(k.startswith("R-") for k in sets):
        raise InputError(f"{p} is not in Reactome's GMT layout '<name><TAB>R-HSA-…<TAB>genes'")
    return sets, names


def read_reactome_ncbi(path: str | Path, species: str = "Homo sapiens") -> tuple[dict[str, list[str]],
                                                                                dict[str, str]]:
    """``NCBI2Reactome_All_Levels.txt`` (or ``NCBI2Reactome.txt``) -> (stable ID -> Entrez IDs, names) for
    one species, sets in file order, members unique."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"Reactome NCBI mapping not found: {p}")
    cols = ["entrez_id", "stable_id", "url", "name", "evidence", "species"]
    df = pd.read_csv(p, sep="\t", header=None, names=cols, dtype=str, quoting=3, compression="infer")
    if df["stable_id"].isna().any() or not df["stable_id"].str.startswith("R-").all():
        raise InputError(f"{p}: expected '<Entrez ID><TAB>R-…<TAB>URL<TAB>name<TAB>evidence<TAB>species' lines")
    df = df[df["species"] == species]
    if df.empty:
        raise InputError(f"{p} has no pathways for species {species!r}")
    df = df.drop_duplicates(["stable_id", "entrez_id"])
    sets = {sid: g["entrez_id"].tolist() for sid, g in df.groupby("stable_id", sort=False)}
    names = dict(zip(df["stable_id"], df["name"], strict=True))
    return sets, names
