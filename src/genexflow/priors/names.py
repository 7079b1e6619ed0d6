"""Human-readable pathway names next to pathway IDs (``hsa04110``, ``GO:0007049``, ``R-HSA-1640170``).

Where the names come from, offline:

* **GO-BP** (shipped): the GMT description column, ``GO:xxxxxxx <term name>`` (GO.db 3.16, GO 2022-07-01).
* **PROGENy** (shipped): the pathway IDs are the names (``EGFR``, ``TNFa``, …).
* **Reactome**: the first column of Reactome's ``ReactomePathways.gmt`` (:func:`genexflow.priors.reactome`)
  or its ``ReactomePathways.txt`` names file.
* **KEGG** (shipped 2011 snapshot): no offline source carries KEGG pathway names (no Debian package,
  ``KEGGREST`` needs the network), so KEGG IDs stay bare unless a names file is given: KEGG's own
  ``list/pathway/hsa`` output (``path:hsa04110<TAB>Cell cycle - Homo sapiens (human)``) or any
  ``ID<TAB>name`` table, read by :func:`read_pathway_names`.
* **A user GMT**: its description column when that is a name (not a URL, ``na`` or the ID again).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from genexflow.errors import InputError

_NOT_A_NAME = re.compile(r"^(https?://|na$|n/a$|none$|-$|> ?)", re.IGNORECASE)
_KEGG_SPECIES = re.compile(r"\s+-\s+[A-Z][a-z]+ [a-z]+ \([^)]*\)$")  # " - Homo sapiens (human)"


def names_from_descriptions(descriptions: Mapping[str, str]) -> dict[str, str]:
    """Names from a GMT's description column: ``GO:0000002 mitochondrial genome maintenance`` ->
    ``mitochondrial genome maintenance``; URLs, ``na`` and descriptions equal to the ID give no name;
    descriptions that say the name is not available give none either."""
    out = {}
    for pid, desc in descriptions.items():
        d = (desc or "").strip()
        if d.startswith(pid):
            d = d[len(pid):].strip()
        if not d or _NOT_A_NAME.match(d) or "not available" in d:
            continue
        out[pid] = d
    return out


def read_pathway_names(path: str | Path) -> dict[str, str]:
    """Read an ``ID<TAB>name`` table of pathway names.

    Accepted layouts (tab-separated, no header or any header whose first field is not an ID):
    KEGG's ``list/pathway/<org>`` (``path:hsa04110<TAB>Cell cycle - Homo sapiens (human)``: the ``path:``
    prefix and the species suffix are removed), Reactome's ``ReactomePathways.txt``
    (``R-HSA-109581<TAB>Apoptosis<TAB>Homo sapiens``), or plain two-column tables.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"pathway-names file not found: {p}")
    out: dict[str, str] = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.rstrip("\r\n").split("\t")
        if not line.strip() or line.startswith("#"):
            continue
        if len(parts) < 2:
            raise InputError(f"{p} line {lineno}: expected 'ID<TAB>name', got {line[:60]!r}")
        pid = parts[0].strip().removeprefix("path:")
        name = _KEGG_SPECIES.sub("", parts[1].strip())
        if lineno == 1 and pid.lower() in ("id", "pathway", "pathway_id", "stable_id"):
            continue  # a header
        out[pid] = name
    if not out:
        raise InputError(f"{p} has no 'ID<TAB>name' lines")
    return out


def pathway_label(pid: str, names: Mapping[str, str] | None, width: int = 48) -> str:
    """``"hsa04110 Cell cycle"``: the ID, then its name (cut to ``width`` characters) when known; the ID
    alone otherwise, or when the name is the ID (PROGENy)."""
    name = (names or {}).get(pid, "")
    if not name or name == pid:
        return pid
    if len(name) > width:
        name = name[: width - 1].rstrip() + "…"
    return f"{pid} {name}"


def missing_names(pathways: Iterable[str], names: Mapping[str, str]) -> list[str]:
    """The pathway IDs without a name (to say so in summaries rather than hide it)."""
    return [p for p in pathways if not names.get(p)]
