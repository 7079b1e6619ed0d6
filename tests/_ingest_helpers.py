"""Small cohorts on disk for the ingestion tests (real HGNC symbols, counts or log data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from genexflow.ingest import IngestConfig, ingest
from genexflow.ingest.gene_ids import data_path

_SYMBOLS: list[str] = []


def symbols(n: int) -> list[str]:
    """The first ``n`` protein-coding symbols of the shipped map (by Entrez ID): stable real genes."""
    if len(_SYMBOLS) < n:
        ids = pd.read_parquet(data_path("gene_ids.parquet"))
        pc = ids[ids["protein_coding"]].drop_duplicates("symbol")
        _SYMBOLS[:] = pc["symbol"].astype(str).tolist()[:500]
    return _SYMBOLS[:n]


def counts_frame(n_samples: int = 8, n_genes: int = 60, seed: int = 0, genes=None) -> pd.DataFrame:
    """Negative-binomial-ish counts, samples x genes, index ``S01``..; int64."""
    rng = np.random.default_rng(seed)
    genes = list(genes) if genes is not None else symbols(n_genes)
    mu = rng.lognormal(4, 1, size=len(genes))
    lib = rng.lognormal(0, 0.2, size=n_samples)
    X = rng.poisson(rng.gamma(5, (mu[None, :] * lib[:, None]) / 5))
    idx = pd.Index([f"S{i + 1:02d}" for i in range(n_samples)], name="sample_id")
    return pd.DataFrame(X.astype(np.int64), index=idx, columns=pd.Index(genes, name="gene_id"))


def sheet_frame(ids, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(ids)
    return pd.DataFrame({
        "label": ["A" if i % 2 == 0 else "B" for i in range(n)],
        "batch": [f"b{1 + i % 2}" for i in range(n)],
        "age": np.round(rng.uniform(20, 80, n), 1),
        "sex": ["F" if i % 3 else "M" for i in range(n)],
    }, index=pd.Index(list(ids), name="sample_id"))


def write_cohort(folder: Path, matrix: pd.DataFrame, sheet: pd.DataFrame, fmt: str = "csv",
                 genes_as_rows: bool = False) -> tuple[Path, Path]:
    """Write ``expression.<fmt>`` and ``samples.csv`` into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    expr = folder / f"expression.{fmt}"
    m = matrix.T if genes_as_rows else matrix
    m.index.name = "gene_id" if genes_as_rows else "sample_id"
    if fmt == "parquet":
        m.reset_index().to_parquet(expr, index=False)
    else:
        m.to_csv(expr, sep="\t" if fmt == "tsv" else ",")
    sheet_path = folder / "samples.csv"
    sheet.to_csv(sheet_path)
    return expr, sheet_path


def run(tmp_path: Path, expression, samples=None, *, value_type="counts", label_column="label",
        batch_column="batch", covariates=("age", "sex"), name="toy", run_id=None, **cfg):
    """``ingest`` into ``tmp_path/data`` (no data docs, no DVC unless asked)."""
    cfg.setdefault("data_docs", False)
    cfg.setdefault("dvc", "off")
    return ingest(
        expression, samples, value_type=value_type, label_column=label_column, batch_column=batch_column,
        covariates=covariates, out_dir=tmp_path / "data" / "validated" / name,
        quarantine_root=tmp_path / "data" / "quarantine", run_id=run_id, config=IngestConfig(**cfg),
    )


def reasons(result) -> pd.DataFrame:
    return pd.read_csv(result.quarantine_dir / "reasons.csv", dtype={"id": str})
