"""Gene sets: the shipped KEGG / GO-BP / PROGENy collections, user GMT files, and the gene x pathway
membership matrix that the pathway network and the pathway scores are built from.

A gene-set collection is a plain ``dict[str, list[str]]`` (set name -> member gene IDs, in file order,
without duplicates). Restrict it to a cohort's genes with :func:`restrict_gene_sets` before building the
:func:`membership_matrix`.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from genexflow.errors import InputError
from genexflow.priors.names import names_from_descriptions

#: Shipped collections: name -> {id_type: file name under ``genexflow/priors/data``}.
SHIPPED: dict[str, dict[str, str]] = {
    "kegg": {"symbol": "kegg_hsa_2011_symbols.gmt", "entrez": "kegg_hsa_2011_entrez.gmt.gz"},
    "go_bp": {"symbol": "go_bp_15_500_symbols.gmt.gz", "entrez": "go_bp_15_500_entrez.gmt.gz"},
    "progeny": {"symbol": "progeny_human_top100_matrix.csv.gz", "entrez": "progeny_human_top100_matrix.csv.gz"},
}
_ALIASES = {"kegg_2011": "kegg", "kegg_hsa_2011": "kegg", "go": "go_bp", "go_bp_15_500": "go_bp",
            "gobp": "go_bp", "progeny_top100": "progeny"}
ID_TYPES = ("symbol", "entrez")


def _data_path(name: str):
    return resources.files("genexflow.priors").joinpath("data", name)


def _open_text(path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


#: Provenance of the shipped collections (recorded with every training run, with the file's sha256).
PROVENANCE: dict[str, dict[str, str]] = {
    "kegg": {"version": "KEGG GENOME 2011-Mar15 (org.Hs.eg.db 3.16.0)",
             "license": "Artistic-2.0 package; KEGG content is KEGG's (2011 snapshot distributed freely)"},
    "go_bp": {"version": "GO 2022-07-01 (org.Hs.eg.db 3.16.0, GO.db 3.16.0), 15-500 genes",
              "license": "CC BY 4.0 (Gene Ontology Consortium)"},
    "progeny": {"version": "progeny 1.20.0, human top 100", "license": "Apache-2.0"},
}
_REACTOME_ID = re.compile(r"^R-[A-Z]{3}-\d+$")


def parse_gmt(text: str, source: str = "GMT") -> dict[str, list[str]]:
    """Parse GMT text: one set per line, ``name<TAB>description<TAB>gene<TAB>gene…``.

    Empty gene fields and duplicate members are dropped (first occurrence kept); a repeated set name is an
    error because it would silently merge two different sets. Reactome's ``ReactomePathways.gmt`` (pathway
    name first, stable ID ``R-HSA-…`` second) is recognised and keyed by the stable ID
    (:func:`parse_gmt_with_descriptions` returns the names too).
    """
    return parse_gmt_with_descriptions(text, source)[0]


def parse_gmt_with_descriptions(text: str, source: str = "GMT") -> tuple[dict[str, list[str]], dict[str, str]]:
    """:func:`parse_gmt` plus the description column (set ID -> description; for Reactome's GMT, the
    pathway name)."""
    sets: dict[str, list[str]] = {}
    desc: dict[str, str] = {}
    # One str object per gene: GO-BP repeats ~16k genes ~470k times; interning keeps the dict ~5x smaller.
    intern = sys.intern
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) < 2:
            raise InputError(f"{source} line {lineno}: expected 'name<TAB>description<TAB>genes…', got {line[:60]!r}")
        name = parts[0].strip()
        if name in sets:
            raise InputError(f"{source} line {lineno}: gene set {name!r} appears twice; give sets unique names")
        sets[name] = list(dict.fromkeys(intern(g.strip()) for g in parts[2:] if g.strip()))
        desc[name] = parts[1].strip()
    if not sets:
        raise InputError(f"{source} contains no gene sets; expected GMT lines 'name<TAB>description<TAB>genes…'")
    if all(_REACTOME_ID.match(d) for d in desc.values()) and not any(_REACTOME_ID.match(n) for n in sets):
        # ReactomePathways.gmt: "<pathway name><TAB><stable ID><TAB>genes": key by the stable ID
        if len(set(desc.values())) < len(desc):
            raise InputError(f"{source}: a Reactome stable ID appears on two lines")
        return {desc[n]: g for n, g in sets.items()}, {desc[n]: n for n in sets}
    return sets, desc


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Read a (optionally gzipped) GMT file into ``{set name: [genes]}``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"gene-set file not found: {p}; pass a GMT path or one of {sorted(SHIPPED)}")
    return parse_gmt(_open_text(p), source=str(p))


def write_gmt(sets: Mapping[str, Sequence[str]], path: str | Path, description: str = "genexflow") -> Path:
    """Write gene sets as GMT (gzipped when the name ends in ``.gz``)."""
    p = Path(path)
    text = "".join("\t".join([name, description, *genes]) + "\n" for name, genes in sets.items())
    if p.suffix == ".gz":
        p.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        p.write_text(text)
    return p


def load_progeny_weights(id_type: str = "symbol") -> pd.DataFrame:
    """The shipped PROGENy human top-100 model as a genes x 14 pathways weight matrix.

    Returns
    -------
    DataFrame of shape (n_genes, 14)
        Index: gene symbols (or Entrez IDs for ``id_type="entrez"``; genes without an ID are left out).
        A weight of 0 means the gene is not among that pathway's top 100.
    """
    w = pd.read_csv(_data_path(SHIPPED["progeny"]["symbol"]).open("rb"), index_col=0, compression="gzip")
    w.index.name = "gene"
    if id_type == "entrez":
        ids = pd.read_csv(_data_path("progeny_human_top100_entrez.csv.gz").open("rb"), dtype=str,
                          compression="gzip").set_index("symbol")["entrez_id"]
        w.index = w.index.map(ids)
        w = w[w.index.notna()]
        w.index.name = "entrez_id"
    return w.astype(np.float64)


def _source_bytes(name_or_path: str | Path, id_type: str = "symbol") -> tuple[str, bytes]:
    low = str(name_or_path).lower()
    key = _ALIASES.get(low, low)
    if key in SHIPPED:
        fname = SHIPPED[key]["symbol" if key == "progeny" else id_type]
        return key, _data_path(fname).read_bytes()
    p = Path(name_or_path)
    if not p.is_file():
        raise InputError(f"gene-set file not found: {p}; pass a GMT path or one of {sorted(SHIPPED)}")
    return "file", p.read_bytes()


def gene_set_provenance(name_or_path: str | Path, id_type: str = "symbol") -> dict[str, str]:
    """What a run's priors were: collection, version, license and the sha256 of the exact bytes loaded.

    Returns
    -------
    dict with ``collection`` (shipped name or ``file``), ``source`` (shipped file name or path),
    ``version``, ``license``, ``sha256`` and ``id_type``.
    """
    key, raw = _source_bytes(name_or_path, id_type)
    sha = hashlib.sha256(raw).hexdigest()
    if key == "file":
        text = raw[:4096].decode("utf-8", "replace")
        reactome = bool(re.search(r"^[^\t\n]*\tR-[A-Z]{3}-\d+\t", text, re.MULTILINE))
        return {"collection": "reactome" if reactome else "file", "source": str(name_or_path),
                "version": "user file (Reactome GMT)" if reactome else "user file",
                "license": "CC BY 4.0 (Reactome)" if reactome else "see the file's source",
                "sha256": sha, "id_type": "as in the file"}
    fname = SHIPPED[key]["symbol" if key == "progeny" else id_type]
    return {"collection": key, "source": fname, **PROVENANCE[key], "sha256": sha, "id_type": id_type}


def provenance_tags(name_or_path: str | Path, id_type: str = "symbol") -> dict[str, str]:
    """:func:`gene_set_provenance` as MLflow tags ``genexflow.priors.<field>`` (empty when the source
    cannot be read: the run then says which priors it fell back to elsewhere)."""
    try:
        prov = gene_set_provenance(name_or_path, id_type)
    except InputError:
        return {}
    return {f"genexflow.priors.{k}": v for k, v in prov.items()}


def gene_set_names(name_or_path: str | Path, id_type: str = "symbol") -> dict[str, str]:
    """Set ID -> human name for a shipped collection or a GMT (see :mod:`genexflow.priors.names`); sets
    without a known name (KEGG offline) are absent."""
    key, raw = _source_bytes(name_or_path, id_type)
    if key == "progeny":
        return {pw: pw for pw in load_progeny_weights("symbol").columns}
    text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode("utf-8")
    return names_from_descriptions(parse_gmt_with_descriptions(text, str(name_or_path))[1])


@lru_cache(maxsize=1)
def _shipped_names() -> dict[str, str]:
    out: dict[str, str] = {}
    for key in SHIPPED:
        out |= gene_set_names(key)
    return out


def pathway_names(ids: Iterable[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Names of pathway IDs from the shipped collections (GO terms, PROGENy) and ``extra`` (e.g. a run's
    ``GenePriors.names``, which also holds Reactome and user-supplied KEGG names); IDs without a known
    name are left out."""
    table = {**_shipped_names(), **(extra or {})}
    return {str(i): table[str(i)] for i in ids if table.get(str(i))}


def load_gene_sets(name_or_path: str | Path, id_type: str = "symbol") -> dict[str, list[str]]:
    """Load a shipped gene-set collection or a user GMT file.

    Parameters
    ----------
    name_or_path : str or Path
        ``"kegg"`` (KEGG 2011, 229 sets), ``"go_bp"`` (GO Biological Process, 5233 sets of 15-500 genes),
        ``"progeny"`` (PROGENy top-100 genes of 14 signalling pathways), or a path to a GMT file
        (``.gmt`` or ``.gmt.gz``).
    id_type : {"symbol", "entrez"}
        Gene identifiers of the shipped collections (ignored for a user file, which keeps its own IDs).

    Returns
    -------
    dict of str to list of str
        Set name -> member gene IDs (unique, file order).

    Examples
    --------
    >>> sets = load_gene_sets("kegg")
    >>> len(sets), "TP53" in sets["hsa04115"]
    (229, True)
    """
    low = str(name_or_path).lower()
    key = _ALIASES.get(low, low)
    if key not in SHIPPED:
        return read_gmt(name_or_path)
    if id_type not in ID_TYPES:
        raise InputError(f"unknown id_type {id_type!r}; use one of {', '.join(ID_TYPES)}")
    if key == "progeny":
        w = load_progeny_weights(id_type)
        return {pw: w.index[w[pw].to_numpy() != 0].tolist() for pw in w.columns}
    fname = SHIPPED[key][id_type]
    return parse_gmt(_open_text(_data_path(fname)), source=fname)


def restrict_gene_sets(
    sets: Mapping[str, Sequence[str]],
    genes: Iterable[str],
    min_size: int = 5,
    max_size: int | None = None,
) -> dict[str, list[str]]:
    """Keep only the cohort's genes in each set and drop sets that end up too small (or too large).

    Parameters
    ----------
    sets : mapping of str to sequence of str
        Gene sets, e.g. from :func:`load_gene_sets`.
    genes : iterable of str
        The cohort's gene IDs (same ID type as the sets).
    min_size, max_size : int
        Inclusive bounds on the number of members *present in the cohort*.

    Returns
    -------
    dict of str to list of str
        Surviving sets in input order; members keep the set's order.
    """
    if min_size < 1:
        raise InputError(f"min_size must be >= 1, got {min_size}")
    if max_size is not None and max_size < min_size:
        raise InputError(f"max_size ({max_size}) is smaller than min_size ({min_size})")
    present = set(map(str, genes))
    out: dict[str, list[str]] = {}
    for name, members in sets.items():
        kept = [g for g in dict.fromkeys(members) if g in present]
        if len(kept) >= min_size and (max_size is None or len(kept) <= max_size):
            out[name] = kept
    return out


def membership_matrix(
    sets: Mapping[str, Sequence[str]], genes: Sequence[str], dtype: type = np.float32
) -> np.ndarray:
    """Binary gene x pathway membership matrix ``M`` with ``M[g, k] = 1`` if gene g is in set k.

    Parameters
    ----------
    sets : mapping of str to sequence of str
        P gene sets; columns follow the mapping's order. Members absent from ``genes`` are ignored.
    genes : sequence of str
        The G genes; rows follow this order.

    Returns
    -------
    ndarray of shape (G, P)

    Examples
    --------
    >>> membership_matrix({"a": ["x", "y"], "b": ["y", "z"]}, ["x", "y", "z"]).astype(int).tolist()
    [[1, 0], [1, 1], [0, 1]]
    """
    index = pd.Index(list(map(str, genes)))
    if index.has_duplicates:
        raise InputError("membership_matrix needs unique gene IDs")
    names = list(sets)
    sizes = np.fromiter((len(sets[n]) for n in names), dtype=np.int64, count=len(names))
    flat = np.fromiter((str(g) for n in names for g in sets[n]), dtype=object, count=int(sizes.sum()))
    col = np.repeat(np.arange(len(names)), sizes)
    row = index.get_indexer(flat)
    ok = row >= 0
    M = np.zeros((len(index), len(names)), dtype=dtype)
    M[row[ok], col[ok]] = 1
    return M
