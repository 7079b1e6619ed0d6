"""Where a pathway or gene ID is described on the web (KEGG, Reactome, Gene Ontology, NCBI Gene), and its
human-readable name when the shipped priors know it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from genexflow.priors import pathway_names as shipped_names

_KEGG = re.compile(r"^(hsa|mmu|map|ko)\d{5}$")
_REACTOME = re.compile(r"^R-[A-Z]{3}-\d+(\.\d+)?$")
_GO = re.compile(r"^GO:\d{7}$")


def pathway_url(pathway_id: str) -> str | None:
    """The public page of a KEGG, Reactome or GO identifier; None for other IDs (modules, custom sets).

    Examples
    --------
    >>> pathway_url("hsa05340")
    'https://www.kegg.jp/pathway/hsa05340'
    >>> pathway_url("GO:0006915")
    'https://amigo.geneontology.org/amigo/term/GO:0006915'
    """
    pid = str(pathway_id).strip()
    if _KEGG.match(pid):
        return f"https://www.kegg.jp/pathway/{pid}"
    if _REACTOME.match(pid):
        return f"https://reactome.org/content/detail/{pid.split('.')[0]}"
    if _GO.match(pid):
        return f"https://amigo.geneontology.org/amigo/term/{pid}"
    return None


def pathway_source(pathway_id: str) -> str:
    pid = str(pathway_id)
    if _KEGG.match(pid):
        return "KEGG"
    if _REACTOME.match(pid):
        return "Reactome"
    if _GO.match(pid):
        return "GO"
    return "custom"


def gene_url(gene: str) -> str | None:
    """NCBI Gene search for a human gene symbol or Entrez ID (probe IDs and Ensembl IDs included)."""
    g = str(gene).strip()
    if not g or g.startswith("g") and g[1:].isdigit():
        return None  # positional placeholder names (g0, g1 ...): nothing to look up
    if g.startswith("ENSG"):
        return f"https://www.ensembl.org/Homo_sapiens/Gene/Summary?g={quote(g.split('.')[0])}"
    return f"https://www.ncbi.nlm.nih.gov/gene/?term={quote(g)}%5Bsym%5D+AND+human%5Borgn%5D"


def pathway_names(ids: Iterable[str], known: Mapping[str, str] | None = None) -> dict[str, str]:
    """Names for pathway IDs: ``known`` first (the run's own names, e.g. the explanation's ``name`` columns or
    ``GenePriors.names``), then the shipped collections (:func:`genexflow.priors.pathway_names`). IDs without a
    name are left out."""
    ids = [str(i) for i in ids]
    extra = {str(k): str(v) for k, v in (known or {}).items() if v and str(v) != str(k)}
    return {k: v for k, v in shipped_names(ids, extra).items() if v and v != k}
