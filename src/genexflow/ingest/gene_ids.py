"""Gene-ID harmonization: detect the ID type, map every feature to one canonical ID, merge duplicates.

The canonical ID is the **HGNC symbol** (what the shipped gene sets, the priors and the simulator use).
Inputs may be Ensembl gene IDs (with or without a version or a ``_PAR_Y`` suffix), Entrez IDs, symbols
(current, lower-case, aliases and previous symbols, or mangled into dates by Excel) or array probe IDs.
The maps ship in ``genexflow/ingest/data`` (compacted from org.Hs.eg.db 3.16, see ``LICENSES.md``).

Mapping is vectorized over the ID list (dictionary look-ups through pandas), and merging duplicate
features is one sparse matrix product, so 20,000 genes take well under a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from genexflow.cohort import ValueType
from genexflow.errors import InputError

IdType = Literal["auto", "ensembl", "entrez", "symbol", "probe"]
ID_TYPES = ("auto", "ensembl", "entrez", "symbol", "probe")
DuplicatePolicy = Literal["sum", "mean", "max-variance"]
DUPLICATE_POLICIES = ("sum", "mean", "max-variance")

_ENSEMBL = re.compile(r"^(ENS[A-Z]{0,6}G)(\d{11})(\.\d+)?(_PAR_Y)?$")
_ENTREZ = r"^\d{1,9}$"
# Affymetrix (1007_s_at, AFFX-..., U22376_cds2_s_at), Illumina (ILMN_1234567), Agilent (A_23_P100001)
_PROBE = r"^(AFFX-.+|.+_(s_|x_|i_|f_|g_|r_|)at|.+_st|ILMN_\d+|A_\d+_P\d+)$"
_SYMBOL = r"^[A-Za-z0-9][A-Za-z0-9\-.@/]*$"

_MONTHS = {m: i + 1 for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])}
_MONTH_BY_NUMBER = {v: k for k, v in _MONTHS.items()}
# Symbols Excel turns into dates, per month, newest spelling first (HGNC renamed MARCH1 -> MARCHF1,
# SEPT2 -> SEPTIN2, DEC1 -> DELEC1 in 2020 because of exactly this).
_MONTH_PREFIXES = {"MAR": ("MARCHF", "MARCH", "MAR"), "SEP": ("SEPTIN", "SEPT", "SEP"), "DEC": ("DELEC", "DEC")}
_MON = r"(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*"
_EXCEL_FORMS = [
    re.compile(rf"^(?P<day>\d{{1,2}})-{_MON}(-(?P<year>\d{{2,4}}))?$", re.I),  # 1-Mar, 01-Mar-2023
    re.compile(rf"^{_MON}-(?P<day>\d{{1,2}})$", re.I),  # Mar-1, Mar-01
    re.compile(r"^(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})([ T]00:00(:00)?)?$"),  # 2023-03-01
    re.compile(r"^(?P<month>\d{1,2})/(?P<day>\d{1,2})/(?P<year>\d{2,4})$"),  # 3/1/2023 (US Excel)
]


# --------------------------------------------------------------------------- maps
@dataclass(frozen=True)
class GeneIdMaps:
    """Look-up tables from the shipped maps (built once per process, see :func:`load_maps`)."""

    symbols: frozenset
    upper: dict  # upper-case symbol -> official symbol
    alias: dict  # upper-case alias/previous symbol -> official symbol (unambiguous after tie-breaks)
    ambiguous: dict  # upper-case alias -> "A|B" when no tie-break decides
    entrez: dict  # Entrez ID (int) -> symbol
    ensembl: dict  # Ensembl gene number (int, ENSG prefix and version dropped) -> symbol


def data_path(name: str) -> Path:
    return Path(str(resources.files("genexflow.ingest").joinpath("data", name)))


def _trailing_number(s: str) -> str:
    m = re.search(r"(\d+)$", s)
    return m.group(1) if m else ""


@lru_cache(maxsize=1)
def load_maps() -> GeneIdMaps:
    """Load ``gene_ids.parquet`` and ``gene_aliases.parquet`` into dictionaries (cached)."""
    ids = pd.read_parquet(data_path("gene_ids.parquet"))
    aliases = pd.read_parquet(data_path("gene_aliases.parquet"))
    ids["symbol"] = ids["symbol"].astype(str)
    coding = ids.groupby("symbol")["protein_coding"].any()
    symbols = frozenset(ids["symbol"])
    upper = {s.upper(): s for s in sorted(symbols)}

    entrez = dict(zip(ids["entrez"].astype(int), ids["symbol"], strict=True))
    # An Ensembl gene linked to several Entrez genes: prefer the protein-coding one, then the lowest
    # Entrez ID (the oldest record), so the choice is deterministic.
    ens = ids.dropna(subset=["ensembl"]).assign(nc=lambda d: ~d["protein_coding"])
    ens = ens.sort_values(["ensembl", "nc", "entrez"]).drop_duplicates("ensembl")
    ensembl = dict(zip(ens["ensembl"].astype(np.int64), ens["symbol"], strict=True))

    al = aliases.assign(key=aliases["alias"].astype(str).str.upper(), symbol=aliases["symbol"].astype(str))
    al = al[~al["key"].isin(upper)]  # a current symbol is never re-read as someone else's alias
    al = al.drop_duplicates(["key", "symbol"])
    n_cand = al.groupby("key")["symbol"].transform("size")
    one = al[n_cand == 1]
    alias = dict(zip(one["key"], one["symbol"], strict=True))
    ambiguous = {}
    # Ambiguous aliases (SEPT2 -> SEPTIN2 or SEPTIN6; DEC1 -> DELEC1 or BHLHE40): keep the candidate
    # with the alias's first letter and trailing number (renames keep both: SEPT2 -> SEPTIN2), then
    # the only protein-coding one (OCT4 -> POU5F1, not the pseudogene POU5F1P4); otherwise leave it
    # unmapped and say why.
    multi = al[n_cand > 1].copy()
    multi["num_ok"] = [k[0] == s[0] and _trailing_number(k) == _trailing_number(s) != ""
                       for k, s in zip(multi["key"], multi["symbol"], strict=True)]
    multi["coding"] = multi["symbol"].map(coding).fillna(False).astype(bool)
    n_num = multi.groupby("key")["num_ok"].transform("sum")
    pool = multi[(n_num == 0) | multi["num_ok"]]  # number-matching candidates when there are any
    n_pool = pool.groupby("key")["symbol"].transform("size")
    n_coding = pool.groupby("key")["coding"].transform("sum")
    chosen = pool[(n_pool == 1) | ((n_coding == 1) & pool["coding"])]
    alias.update(zip(chosen["key"], chosen["symbol"], strict=True))
    rest = multi[~multi["key"].isin(chosen["key"])]
    ambiguous = rest.groupby("key")["symbol"].agg(lambda v: "|".join(sorted(v))).to_dict()
    return GeneIdMaps(symbols=symbols, upper=upper, alias=alias, ambiguous=ambiguous, entrez=entrez,
                      ensembl=ensembl)


# --------------------------------------------------------------------------- detection
def classify_ids(ids) -> np.ndarray:
    """ID type of every feature: ``ensembl``, ``entrez``, ``probe``, ``excel`` (a symbol Excel turned
    into a date), ``symbol`` or ``other``.

    Parameters
    ----------
    ids : sequence of str, length n_features

    Returns
    -------
    ndarray of str, shape (n_features,)
    """
    s = pd.Series(pd.Index(ids).astype(str), dtype=object)
    out = np.full(len(s), "other", dtype=object)
    out[s.str.match(_SYMBOL).to_numpy(bool)] = "symbol"
    out[s.str.match(_ENTREZ).to_numpy(bool)] = "entrez"
    out[s.str.match(_PROBE).to_numpy(bool)] = "probe"
    out[s.str.match(_ENSEMBL.pattern).to_numpy(bool)] = "ensembl"
    out[excel_candidates(s).notna().to_numpy()] = "excel"
    return out.astype(str)


def excel_candidates(ids) -> pd.Series:
    """For IDs that look like Excel dates (``1-Mar``, ``2-Sep``, ``2023-03-01``, ``1-Mar-2023``,
    ``Mar-01``, ``3/1/2023``), the symbols they may have been, ``|``-joined; NaN elsewhere."""
    s = ids.astype(str) if isinstance(ids, pd.Series) else pd.Series(pd.Index(ids).astype(str), dtype=object)
    out = pd.Series(np.nan, index=s.index, dtype=object)
    for rx in _EXCEL_FORMS:
        parts = s.str.extract(rx)
        hit = parts["day"].notna() & out.isna()
        if not hit.any():
            continue
        if "mon" in parts:
            mon = parts.loc[hit, "mon"].str.upper().str.slice(0, 3)
        else:
            month = parts.loc[hit, "month"].astype(int)
            mon = month.map(_MONTH_BY_NUMBER)
        day = parts.loc[hit, "day"].astype(int)
        ok = mon.notna() & day.between(1, 31)
        cands = [
            "|".join(f"{p}{d}" for p in _MONTH_PREFIXES.get(m, (m,)))
            for m, d in zip(mon[ok], day[ok], strict=True)
        ]
        out.loc[ok[ok].index] = cands
    return out


# --------------------------------------------------------------------------- mapping
@dataclass
class GeneMapping:
    """How each input feature maps to a canonical ID.

    Attributes
    ----------
    table : DataFrame with one row per input feature (input order)
        ``input_id``, ``id_type`` (per-ID detected type), ``canonical`` (symbol, or the input ID when
        kept, or None when unmapped), ``method`` (exact, case, alias, excel, version, ensembl, entrez,
        probe-map, kept-probe, kept-unmapped, unmapped) and ``note``.
    id_type : str
        The declared type, or the dominant detected type.
    type_counts : dict
        Detected types and their counts.
    mixed : bool
        True when no type covers 95% of the features (auto mode).
    mapping_rate : float or None
        Fraction of features mapped to a known gene; None when probes are kept without a probe map.
    """

    table: pd.DataFrame
    id_type: str
    type_counts: dict
    mixed: bool
    mapping_rate: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def canonical(self) -> pd.Series:
        return self.table["canonical"]

    def summary(self) -> dict:
        t = self.table
        return {
            "id_type": self.id_type,
            "type_counts": self.type_counts,
            "mixed": self.mixed,
            "mapping_rate": self.mapping_rate,
            "n_features": len(t),
            "n_mapped": int(t["method"].isin(_MAPPED_METHODS).sum()),
            "methods": {k: int(v) for k, v in t["method"].value_counts().items()},
            "excel_repaired": {a: b for a, b in zip(t.loc[t["method"] == "excel", "input_id"],
                                                    t.loc[t["method"] == "excel", "canonical"], strict=True)},
            "n_canonical": int(t["canonical"].nunique()),
            "notes": list(self.notes),
        }


_MAPPED_METHODS = ("exact", "case", "alias", "excel", "ensembl", "entrez", "probe-map")


def resolve_symbols(symbols, maps: GeneIdMaps | None = None) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Official symbol for each symbol-like ID: exact, case-insensitive, then alias/previous symbol.

    Returns ``(canonical, method, note)`` Series aligned with the input (canonical NaN when unknown).
    """
    maps = maps or load_maps()
    s = pd.Series(pd.Index(symbols).astype(str), dtype=object)
    up = s.str.upper()
    canon = pd.Series(np.where(s.isin(maps.symbols), s, None), dtype=object)
    method = pd.Series(np.where(canon.notna(), "exact", "unmapped"), dtype=object)
    note = pd.Series("", index=s.index, dtype=object)
    for how, table in (("case", maps.upper), ("alias", maps.alias)):
        todo = canon.isna()
        hit = up[todo].map(table)
        hit = hit[hit.notna()]
        canon.loc[hit.index] = hit
        method.loc[hit.index] = how
    amb = up[canon.isna()].map(maps.ambiguous)
    amb = amb[amb.notna()]
    note.loc[amb.index] = "ambiguous alias: " + amb
    note.loc[canon.isna() & (note == "")] = "unknown symbol"
    return canon, method, note


def _map_ensembl(ids: pd.Series, maps: GeneIdMaps):
    parts = ids.str.extract(_ENSEMBL)
    human = parts[0] == "ENSG"
    num = pd.to_numeric(parts[1], errors="coerce")
    canon = num.where(human).map(lambda v: maps.ensembl.get(int(v)) if pd.notna(v) else None)
    canon = canon.astype(object).where(canon.notna(), None)
    method = pd.Series(np.where(canon.notna(), "ensembl", "unmapped"), index=ids.index, dtype=object)
    note = pd.Series(np.where(
        parts[0].isna(), "not an Ensembl gene ID",
        np.where(~human, "non-human Ensembl ID", np.where(canon.isna(), "Ensembl ID not in the map", ""))),
        index=ids.index, dtype=object)
    return canon, method, note


def _map_entrez(ids: pd.Series, maps: GeneIdMaps):
    num = pd.to_numeric(ids.where(ids.str.match(_ENTREZ)), errors="coerce")
    canon = num.map(lambda v: maps.entrez.get(int(v)) if pd.notna(v) else None).astype(object)
    canon = canon.where(canon.notna(), None)
    method = pd.Series(np.where(canon.notna(), "entrez", "unmapped"), index=ids.index, dtype=object)
    note = pd.Series(np.where(num.isna(), "not an Entrez ID", np.where(canon.isna(), "Entrez ID not in the map", "")),
                     index=ids.index, dtype=object)
    return canon, method, note


def _map_excel(ids: pd.Series, maps: GeneIdMaps):
    cands = excel_candidates(ids)
    canon = pd.Series(None, index=ids.index, dtype=object)
    note = pd.Series("", index=ids.index, dtype=object)
    todo = cands.dropna()
    if len(todo):
        split = todo.str.split("|", expand=True)
        for j in range(split.shape[1]):
            col = split[j].dropna()
            col = col[canon.loc[col.index].isna()]
            if col.empty:
                continue
            c, _, _ = resolve_symbols(col.to_numpy(), maps)
            c.index = col.index
            c = c[c.notna()]
            canon.loc[c.index] = c
    method = pd.Series(np.where(canon.notna(), "excel", "unmapped"), index=ids.index, dtype=object)
    note.loc[canon.isna()] = "date-like ID with no gene behind it"
    return canon, method, note


def read_probe_map(probe_map, features=None) -> pd.Series:
    """A probe -> symbol Series from a table (path or DataFrame).

    The symbol column is ``symbol`` (or ``gene_symbol``, ``hgnc_symbol``); the probe column is the one
    whose values overlap ``features`` most (else the first column). Rows with no symbol are dropped.
    """
    if isinstance(probe_map, pd.Series):
        return probe_map.dropna().astype(str)
    if isinstance(probe_map, pd.DataFrame):
        df = probe_map
    else:
        path = Path(probe_map)
        if not path.exists():
            raise InputError(f"{path}: probe map not found")
        sep = "\t" if path.name.lower().removesuffix(".gz").endswith((".tsv", ".txt")) else ","
        try:
            df = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path, sep=sep, dtype=str)
        except Exception as exc:  # any reader failure is a bad file from the user's point of view
            raise InputError(f"{path}: probe map is not a readable table ({type(exc).__name__}: {exc})") from exc
    lower = {str(c).lower(): c for c in df.columns}
    sym_col = next((lower[c] for c in ("symbol", "gene_symbol", "hgnc_symbol", "gene_name") if c in lower), None)
    if sym_col is None:
        raise InputError(f"probe map needs a 'symbol' column; it has: {', '.join(map(str, df.columns))}")
    others = [c for c in df.columns if c != sym_col]
    if not others:
        raise InputError("probe map needs a probe-ID column besides 'symbol'")
    probe_col = others[0]
    if features is not None:
        feats = set(map(str, features))
        overlap = {c: df[c].astype(str).isin(feats).sum() for c in others}
        probe_col = max(others, key=lambda c: overlap[c])
    out = pd.Series(df[sym_col].to_numpy(), index=df[probe_col].astype(str).to_numpy(), dtype=object)
    out = out[out.notna() & (out.astype(str).str.len() > 0)].astype(str)
    return out[~out.index.duplicated()]


def map_gene_ids(
    ids,
    id_type: IdType = "auto",
    probe_map=None,
    keep_unmapped: bool = False,
    maps: GeneIdMaps | None = None,
) -> GeneMapping:
    """Map feature IDs to HGNC symbols.

    Parameters
    ----------
    ids : sequence of str, length n_features
    id_type : {"auto", "ensembl", "entrez", "symbol", "probe"}
        ``auto`` maps each ID by its own detected type (and flags a mix); a declared type maps every ID
        as that type, so IDs of another type end up unmapped.
    probe_map : path, DataFrame or Series, optional
        Probe -> symbol table for array probe IDs. Without it, probe IDs are kept as features.
    keep_unmapped : bool
        Keep IDs that map to no gene under their input ID instead of leaving them unmapped.

    Returns
    -------
    GeneMapping

    Examples
    --------
    >>> m = map_gene_ids(["TP53", "1-Mar", "ENSG00000141510.17", "7157"])
    >>> m.table["canonical"].tolist()
    ['TP53', 'MARCHF1', 'TP53', 'TP53']
    """
    if id_type not in ID_TYPES:
        raise InputError(f"gene ID type must be one of {', '.join(ID_TYPES)}, got {id_type!r}")
    maps = maps or load_maps()
    s = pd.Series(pd.Index(ids).astype(str), dtype=object)
    detected = pd.Series(classify_ids(s), dtype=object)
    counts = detected.replace({"excel": "symbol"}).value_counts()
    type_counts = {str(k): int(v) for k, v in counts.items()}
    dominant = str(counts.index[0]) if len(counts) else "symbol"
    mixed = id_type == "auto" and len(s) > 0 and counts.iloc[0] / len(s) < 0.95
    route = detected if id_type == "auto" else pd.Series(id_type, index=s.index, dtype=object)
    if id_type == "symbol":  # a declared symbol list may still hold Excel dates
        route = route.where(detected != "excel", "excel")
    if id_type == "auto":
        route = route.replace({"other": "symbol"})

    canon = pd.Series(None, index=s.index, dtype=object)
    method = pd.Series("unmapped", index=s.index, dtype=object)
    note = pd.Series("", index=s.index, dtype=object)
    notes: list[str] = []
    pmap = read_probe_map(probe_map, s) if probe_map is not None else None
    for kind, idx in route.groupby(route).groups.items():
        sub = s.loc[idx]
        if kind == "ensembl":
            c, m, n = _map_ensembl(sub, maps)
        elif kind == "entrez":
            c, m, n = _map_entrez(sub, maps)
        elif kind == "excel":
            c, m, n = _map_excel(sub, maps)
        elif kind == "probe":
            if pmap is None:
                c = sub.copy()
                m = pd.Series("kept-probe", index=sub.index, dtype=object)
                n = pd.Series("no probe map given", index=sub.index, dtype=object)
            else:
                sym = sub.map(pmap)
                c, m, n = resolve_symbols(sym.fillna("").to_numpy(), maps)
                c.index = m.index = n.index = sub.index
                m = m.where(c.isna(), "probe-map")
                n = n.where(sym.notna(), "probe not in the probe map")
        else:  # symbol
            c, m, n = resolve_symbols(sub.to_numpy(), maps)
            c.index = m.index = n.index = sub.index
        canon.loc[idx], method.loc[idx], note.loc[idx] = c.to_numpy(), m.to_numpy(), n.to_numpy()

    kept_probes = int((method == "kept-probe").sum())
    if kept_probes:
        notes.append(f"{kept_probes} array probe IDs kept as features (no probe map given; pass "
                     "--probe-map to map them to gene symbols)")
    denominator = len(s) - kept_probes
    mapping_rate = None if denominator == 0 else float(method.isin(_MAPPED_METHODS).sum() / denominator)
    if keep_unmapped:
        lost = canon.isna()
        canon.loc[lost] = s.loc[lost]
        method.loc[lost] = "kept-unmapped"
    table = pd.DataFrame({"input_id": s, "id_type": detected, "canonical": canon, "method": method,
                          "note": note})
    return GeneMapping(table=table, id_type=id_type if id_type != "auto" else dominant,
                       type_counts=type_counts, mixed=bool(mixed), mapping_rate=mapping_rate, notes=notes)


# --------------------------------------------------------------------------- duplicates
def default_duplicate_policy(value_type: str | ValueType) -> str:
    """``sum`` for counts, TPM and FPKM (parts of one gene add up); ``max-variance`` for log data
    (averaging logs of different probes mixes their quality; the most variable probe is kept)."""
    return "max-variance" if ValueType.parse(value_type) == ValueType.LOG else "sum"


def collapse_duplicates(
    X: np.ndarray, canonical, policy: DuplicatePolicy = "sum"
) -> tuple[np.ndarray, pd.Index, dict[str, list[int]]]:
    """Merge features that map to the same canonical ID.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    canonical : sequence of str, length n_features
    policy : {"sum", "mean", "max-variance"}
        ``sum`` / ``mean`` ignore NaN (all-NaN stays NaN); ``max-variance`` keeps the feature with the
        largest variance across samples (ties: the first).

    Returns
    -------
    X_new : ndarray of shape (n_samples, n_genes), genes in order of first appearance
    genes : Index of length n_genes
    merged : dict canonical -> input column positions, for the genes that merged more than one feature
    """
    if policy not in DUPLICATE_POLICIES:
        raise InputError(f"duplicate policy must be one of {', '.join(DUPLICATE_POLICIES)}, got {policy!r}")
    codes, uniques = pd.factorize(pd.Index(canonical).astype(str))
    n_groups = len(uniques)
    sizes = np.bincount(codes, minlength=n_groups)
    first = np.full(n_groups, -1)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    genes = pd.Index(uniques, name="gene_id")
    if (sizes == 1).all():
        return X, genes, {}
    multi = np.flatnonzero(sizes > 1)
    in_multi = sizes[codes] > 1
    merged = {str(uniques[g]): np.flatnonzero(codes == g).tolist() for g in multi} if len(multi) <= 10_000 else {}
    out_dtype = X.dtype
    cols = np.flatnonzero(in_multi)
    sub = np.asarray(X[:, cols], dtype=np.float64)
    grp = codes[cols]
    if policy == "max-variance":
        var = np.nan_to_num(np.nanvar(sub, axis=0) if sub.size else np.zeros(0), nan=-np.inf)
        order = np.lexsort((np.arange(len(cols)), -var, grp))  # per group: largest variance, then first
        _, first_in_sorted = np.unique(grp[order], return_index=True)
        pick = cols[order[first_in_sorted]]
        block = X[:, pick]
        out_dtype = X.dtype
    else:
        # lazy: scipy is only needed for many-to-one ID maps, and the CLI imports this module at start
        import scipy.sparse as sp

        gidx = np.searchsorted(multi, grp)
        G = sp.csr_matrix((np.ones(len(cols)), (np.arange(len(cols)), gidx)), shape=(len(cols), len(multi)))
        missing = np.isnan(sub)
        total = np.asarray(np.where(missing, 0.0, sub) @ G)
        present = np.asarray((~missing).astype(np.float64) @ G)
        with np.errstate(invalid="ignore", divide="ignore"):
            block = np.where(present > 0, total / present if policy == "mean" else total, np.nan)
        if policy == "mean" or np.isnan(block).any():
            out_dtype = np.result_type(X.dtype, np.float32) if np.issubdtype(X.dtype, np.integer) else X.dtype
    out = np.empty((X.shape[0], n_groups), dtype=out_dtype)
    single = np.flatnonzero(sizes == 1)
    out[:, single] = X[:, first[single]]
    out[:, multi] = block.astype(out_dtype) if block.dtype != out_dtype else block
    return out, genes, merged
