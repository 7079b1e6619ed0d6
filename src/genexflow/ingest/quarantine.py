"""The quarantine: rejected samples, genes and files, with the reason for each; nothing is lost.

Layout of ``<quarantine_root>/<run_id>/``::

    reasons.csv              one row per (item, failed check): kind, id, suite, check, column, value, message
    manifest.json            run id, counts per kind, the files below
    samples/expression.parquet   quarantined matrix rows, all input columns, input gene IDs (samples as rows)
    samples/samples.csv          their sample-sheet rows (also sheet rows with no expression data)
    genes/expression.parquet     quarantined input features over all matrix samples (genes as rows)
    files/<name>                 byte copies of input files that failed as a whole

Inputs are only read, never moved or modified. A run folder is written from scratch each time with
deterministic content (no timestamps), so rerunning the same run id gives the same files and no duplicates.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genexflow.errors import InputError

REASON_COLUMNS = ["kind", "id", "suite", "check", "column", "value", "message"]
KINDS = ("sample", "sheet_row", "gene", "file")


@dataclass(frozen=True)
class QuarantineRecord:
    """One quarantined item and one reason (an item failing two checks has two records)."""

    kind: str  # sample | sheet_row | gene | file
    id: str
    suite: str
    check: str
    column: str | None
    value: Any
    message: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["value"] = _scalar(self.value)
        return d


def _scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    return v


def _write_wide(path: Path, first: str, labels, columns, values: np.ndarray) -> None:
    """Parquet with repeated column names allowed (the input may repeat a gene ID)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [pa.array(np.asarray(labels, dtype=object).astype(str))]
    arrays += [pa.array(values[:, j]) for j in range(values.shape[1])]
    names = [first] + [str(c) for c in columns]
    pq.write_table(pa.Table.from_arrays(arrays, names=names), path, compression="zstd")


def _is_ours(folder: Path) -> bool:
    return not any(folder.iterdir()) or (folder / "manifest.json").exists()


def write_quarantine(
    folder: str | Path,
    run_id: str,
    records: list[QuarantineRecord],
    *,
    matrix: pd.DataFrame | None = None,
    sheet: pd.DataFrame | None = None,
    gene_positions=(),
    files: dict[str, Path | pd.DataFrame] | None = None,
) -> Path | None:
    """Write the quarantine folder for one run (replacing an earlier write of the same run).

    Parameters
    ----------
    folder : path ``<quarantine_root>/<run_id>``
    run_id : str
    records : reasons; their ``kind`` and ``id`` select what is copied
    matrix : DataFrame of shape (n_samples, n_features), optional
        The input matrix with input gene IDs (repeats allowed) and sample IDs; quarantined samples
        (rows, by ID) and genes (``gene_positions``) are copied from it.
    gene_positions : sequence of int
        Column positions of quarantined features in ``matrix`` (positions, because IDs may repeat).
    sheet : DataFrame indexed by sample_id, optional
        The input sample sheet; rows of quarantined samples and sheet rows are copied from it.
    files : dict name -> path or DataFrame, optional
        Input files that failed as a whole; paths are byte-copied, DataFrames written as CSV.

    Returns
    -------
    The folder, or None when there was nothing to quarantine (no folder is created).
    """
    folder = Path(folder)
    if folder.exists():
        if not _is_ours(folder):
            raise InputError(f"{folder}: exists and is not a genexflow quarantine folder; choose another run id")
        shutil.rmtree(folder)
    if not records and not files:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    reasons = pd.DataFrame([r.to_dict() for r in records], columns=REASON_COLUMNS)
    reasons = reasons.sort_values(["kind", "id", "suite", "check"], kind="stable").reset_index(drop=True)
    reasons.to_csv(folder / "reasons.csv", index=False)
    written: dict[str, str] = {"reasons": "reasons.csv"}

    sample_ids = set(reasons.loc[reasons["kind"] == "sample", "id"].astype(str))
    sheet_ids = sample_ids | set(reasons.loc[reasons["kind"] == "sheet_row", "id"].astype(str))
    if matrix is not None and sample_ids:
        rows = np.flatnonzero(matrix.index.astype(str).isin(sample_ids))
        if len(rows):
            _write_wide(folder / "samples" / "expression.parquet", "sample_id", matrix.index[rows],
                        matrix.columns, np.asarray(matrix.iloc[rows].to_numpy()))
            written["samples_expression"] = "samples/expression.parquet"
    if sheet is not None and sheet_ids:
        rows = sheet.index.astype(str).isin(sheet_ids)
        if rows.any():
            (folder / "samples").mkdir(exist_ok=True)
            sheet.loc[rows].to_csv(folder / "samples" / "samples.csv")
            written["samples_sheet"] = "samples/samples.csv"
    gene_pos = sorted({int(j) for j in gene_positions})
    if matrix is not None and gene_pos:
        block = np.asarray(matrix.iloc[:, gene_pos].to_numpy()).T
        _write_wide(folder / "genes" / "expression.parquet", "gene_id", matrix.columns[gene_pos],
                    matrix.index, block)
        written["genes_expression"] = "genes/expression.parquet"
    for name, src in (files or {}).items():
        dest = folder / "files" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, pd.DataFrame) and name.endswith(".parquet"):
            _write_wide(dest, src.index.name or "sample_id", src.index, src.columns, src.to_numpy())
        elif isinstance(src, pd.DataFrame):
            src.to_csv(dest)
        else:
            shutil.copyfile(src, dest)
        written[f"file:{name}"] = f"files/{name}"
    counts = {k: int(v) for k, v in reasons.drop_duplicates(["kind", "id"])["kind"].value_counts().items()}
    manifest = {"run_id": run_id, "counts": counts, "files": written, "n_reasons": len(reasons)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return folder


def read_reasons(folder: str | Path) -> pd.DataFrame:
    """The ``reasons.csv`` of a quarantine folder."""
    return pd.read_csv(Path(folder) / "reasons.csv", dtype={"id": str})
