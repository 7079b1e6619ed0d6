"""Small real cohorts shipped with genexflow, loadable like ``sklearn.datasets``.

| loader | cohort | shape | labels | license |
|---|---|---|---|---|
| :func:`load_golub` | Golub 1999 ALL/AML (multtest), Hu6800 arrays, standardised log10 | 38 x 3051 | ALL 27 / AML 11 | LGPL |
| :func:`load_geuvadis_sex` | GEUVADIS RNA-seq counts (DEGreport humanGender), 3007 most-expressed genes + chrY genes | 85 x 3007 | F 41 / M 44 | MIT |
| :func:`load_bladderbatch` | bladderbatch HG-U133A RMA log2, the 2000 most variable probes | 57 x 2000 | cancer (Normal/Biopsy/Cancer), batch 1-5 | Artistic-2.0 |

Citations and licenses are in ``cohort.meta`` and ``genexflow/datasets/data/LICENSES.md``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from genexflow.cohort import Cohort, ValueType
from genexflow.errors import InputError
from genexflow.io import read_cohort, read_sample_sheet

_CITATIONS = {
    "golub": ("Golub TR et al. (1999) Science 286:531-537; multtest (Bioconductor) data(golub)", "LGPL"),
    "geuvadis_sex": ("Lappalainen T et al. (2013) Nature 501:506-511; DEGreport humanGender (Pantano L)", "MIT"),
    "bladderbatch": ("Dyrskjot L et al. (2004) Cancer Research 64:4040-4048; bladderbatch (Bioconductor)",
                     "Artistic-2.0"),
}


def data_dir() -> Path:
    """Folder of the shipped data files."""
    return Path(str(resources.files("genexflow.datasets").joinpath("data")))


def _load(name: str, matrix: str, sheet: str, value_type: ValueType, **meta) -> Cohort:
    d = data_dir()
    citation, license_ = _CITATIONS[name]
    return read_cohort(
        d / matrix, read_sample_sheet(d / sheet), value_type=value_type, orientation="genes", name=name,
        meta={"citation": citation, "license": license_, "source": f"genexflow.datasets.{name}", **meta},
    )


def load_golub() -> Cohort:
    """Golub ALL/AML: 38 samples x 3051 Hu6800 probes (already standardised; do not log again).

    ``samples["label"]`` is ALL or AML. ``genexflow.datasets.golub_probe_map()`` maps probes to symbols.
    """
    return _load("golub", "golub_expression.parquet", "golub_samples.csv", ValueType.LOG,
                 gene_id_type="probe")


def golub_probe_map() -> pd.DataFrame:
    """Probe -> GenBank accession, Entrez IDs and (unambiguous) HGNC symbol for the golub probes."""
    return pd.read_csv(data_dir() / "golub_genes.csv.gz")


def load_geuvadis_sex() -> Cohort:
    """GEUVADIS: 85 lymphoblastoid RNA-seq count profiles x 3007 Ensembl genes; ``samples["sex"]``.

    A smoke test and a negative control: sex lives in a handful of chrY/XIST genes.
    """
    return _load("geuvadis_sex", "geuvadis_sex_counts.parquet", "geuvadis_sex_samples.csv", ValueType.COUNTS,
                 gene_id_type="ensembl", subset="3000 most-expressed genes plus chrY genes")


def load_bladderbatch() -> Cohort:
    """bladderbatch: 57 bladder samples x 2000 most-variable HG-U133A probes (RMA log2), 5 batches.

    ``samples`` has ``batch`` (1-5), ``cancer`` (Normal/Biopsy/Cancer) and ``outcome``.
    """
    c = _load("bladderbatch", "bladderbatch_expression.parquet", "bladderbatch_samples.csv", ValueType.LOG,
              gene_id_type="probe", subset="2000 most variable probes")
    c.samples["batch"] = c.samples["batch"].astype(str)
    return c


LOADERS = {"golub": load_golub, "geuvadis_sex": load_geuvadis_sex, "bladderbatch": load_bladderbatch}


def load(name: str) -> Cohort:
    """Load a shipped cohort by name (``golub``, ``geuvadis_sex``, ``bladderbatch``)."""
    if name not in LOADERS:
        raise InputError(f"unknown dataset {name!r}; shipped: {', '.join(LOADERS)}")
    return LOADERS[name]()
