"""The :class:`Cohort`: one expression matrix (samples x genes) with its sample sheet and value type.

A cohort is the unit every step passes along. It round-trips to AnnData ``.h5ad`` and to a Parquet
folder (``expression.parquet`` + ``samples.csv`` + ``cohort.json``) in the layout of ``shared/data``:
samples as rows, first column ``sample_id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genexflow.errors import InputError


class ValueType(StrEnum):
    """What the numbers in the matrix are. Decides which normalization and checks apply."""

    COUNTS = "counts"
    TPM = "tpm"
    FPKM = "fpkm"
    LOG = "log-expression"

    @classmethod
    def parse(cls, value: str | ValueType) -> ValueType:
        try:
            return cls(str(value).lower())
        except ValueError:
            allowed = ", ".join(v.value for v in cls)
            raise InputError(f"unknown value type {value!r}; use one of: {allowed}") from None


@dataclass
class Cohort:
    """Expression matrix with gene IDs, a sample table and the value type.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_genes)
        Expression values, float32 (or an integer dtype for raw counts). NaN marks a missing value.
    genes : sequence of str, length n_genes
        Gene (or probe) IDs, unique.
    samples : DataFrame with n_samples rows
        Sample sheet indexed by ``sample_id`` (batch, labels, covariates as columns), in matrix row order.
    value_type : ValueType
        counts, tpm, fpkm or log-expression.
    name : str
        Human-readable cohort name (used in run names and reports).
    meta : dict
        Provenance: source, license, citation, lineage hashes.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> c = Cohort(np.ones((2, 3), np.float32), ["A", "B", "C"],
    ...            pd.DataFrame({"batch": [1, 2]}, index=pd.Index(["s1", "s2"], name="sample_id")))
    >>> c.shape
    (2, 3)
    """

    X: np.ndarray
    genes: pd.Index
    samples: pd.DataFrame
    value_type: ValueType = ValueType.LOG
    name: str = "cohort"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.X = np.asarray(self.X)
        if self.X.ndim != 2:
            raise InputError(f"expression matrix must be 2-D (samples x genes), got shape {self.X.shape}")
        if not (np.issubdtype(self.X.dtype, np.floating) or np.issubdtype(self.X.dtype, np.integer)):
            raise InputError(f"expression matrix must be numeric, got dtype {self.X.dtype}")
        self.genes = pd.Index(self.genes, dtype=object).astype(str)
        self.genes.name = "gene_id"
        if not isinstance(self.samples, pd.DataFrame):
            raise InputError("samples must be a DataFrame indexed by sample_id")
        self.samples = self.samples.copy()
        self.samples.index = pd.Index(self.samples.index.astype(str), name="sample_id")
        self.value_type = ValueType.parse(self.value_type)
        n, g = self.X.shape
        if len(self.genes) != g:
            raise InputError(f"{g} matrix columns but {len(self.genes)} gene IDs")
        if len(self.samples) != n:
            raise InputError(f"{n} matrix rows but {len(self.samples)} rows in the sample table")
        dup = self.genes[self.genes.duplicated()].unique()
        if len(dup):
            raise InputError(f"duplicate gene IDs ({len(dup)}): {', '.join(map(str, dup[:5]))}")
        dups = self.samples.index[self.samples.index.duplicated()].unique()
        if len(dups):
            raise InputError(f"duplicate sample IDs ({len(dups)}): {', '.join(map(str, dups[:5]))}")

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, int]:
        return self.X.shape  # type: ignore[return-value]

    @property
    def sample_ids(self) -> pd.Index:
        return self.samples.index

    @property
    def n_samples(self) -> int:
        return self.X.shape[0]

    @property
    def n_genes(self) -> int:
        return self.X.shape[1]

    def frame(self) -> pd.DataFrame:
        """The matrix as a DataFrame (samples x genes); shares memory where pandas allows."""
        return pd.DataFrame(self.X, index=self.sample_ids, columns=self.genes, copy=False)

    def column(self, name: str) -> pd.Series:
        """A sample-sheet column, with a clear error naming the available ones when absent."""
        if name not in self.samples.columns:
            raise InputError(
                f"sample sheet has no column {name!r}; available: {', '.join(map(str, self.samples.columns))}"
            )
        return self.samples[name]

    def subset(self, samples: Any = None, genes: Any = None) -> Cohort:
        """Rows/columns by boolean mask, integer positions or IDs (order as given)."""
        rows = self._positions(samples, self.sample_ids, "sample")
        cols = self._positions(genes, self.genes, "gene")
        X = self.X if rows is None else self.X[rows]
        X = X if cols is None else X[:, cols]
        return Cohort(
            X=np.ascontiguousarray(X),
            genes=self.genes if cols is None else self.genes[cols],
            samples=self.samples if rows is None else self.samples.iloc[rows],
            value_type=self.value_type,
            name=self.name,
            meta=dict(self.meta),
        )

    @staticmethod
    def _positions(sel: Any, index: pd.Index, what: str) -> np.ndarray | None:
        if sel is None:
            return None
        arr = np.asarray(sel)
        if arr.dtype == bool:
            if arr.shape != (len(index),):
                raise InputError(f"{what} mask has length {arr.shape}, expected {len(index)}")
            return np.flatnonzero(arr)
        if np.issubdtype(arr.dtype, np.integer):
            return arr
        pos = index.get_indexer(pd.Index(arr.astype(str)))
        if (pos < 0).any():
            missing = arr[pos < 0]
            raise InputError(f"{len(missing)} unknown {what} IDs, e.g. {', '.join(map(str, missing[:5]))}")
        return pos

    # ------------------------------------------------------------------ AnnData
    def to_anndata(self):  # -> anndata.AnnData
        # lazy: anndata is only needed for .h5ad files
        import anndata as ad

        obs = self.samples.copy()
        for col in obs.columns:  # h5ad needs homogeneous column types
            if obs[col].dtype == object:
                obs[col] = obs[col].astype(str)
        return ad.AnnData(
            X=self.X,
            obs=obs,
            var=pd.DataFrame(index=self.genes),
            uns={"genexflow": {"value_type": self.value_type.value, "name": self.name,
                               "meta": json.dumps(self.meta, default=str)}},
        )

    @classmethod
    def from_anndata(cls, adata, value_type: str | None = None) -> Cohort:
        info = dict(adata.uns.get("genexflow", {}))
        X = adata.X
        if hasattr(X, "toarray"):
            X = X.toarray()
        return cls(
            X=np.asarray(X),
            genes=adata.var_names,
            samples=adata.obs.copy(),
            value_type=value_type or info.get("value_type", ValueType.LOG),
            name=str(info.get("name", "cohort")),
            meta=json.loads(info["meta"]) if "meta" in info else {},
        )

    def write_h5ad(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_anndata().write_h5ad(path)
        return path

    @classmethod
    def read_h5ad(cls, path: str | Path) -> Cohort:
        # lazy: anndata is only needed for .h5ad files; genexflow.io imports this module (it builds Cohorts)
        import anndata as ad

        from genexflow.io import _check_file

        _check_file(Path(path))
        try:
            adata = ad.read_h5ad(path)
        except Exception as exc:  # h5py raises OSError on truncation, KeyError on a foreign layout
            raise InputError(f"{path}: not a readable .h5ad file ({type(exc).__name__}: {exc})") from exc
        return cls.from_anndata(adata)

    # ------------------------------------------------------------------ Parquet folder
    def write(self, folder: str | Path) -> Path:
        """Write ``expression.parquet`` (samples as rows), ``samples.csv`` and ``cohort.json``."""
        from genexflow.io import (
            write_matrix,  # lazy: genexflow.io imports this module
            write_text_atomic,
        )

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_matrix(self.frame(), folder / "expression.parquet")  # each file atomically
        write_text_atomic(folder / "samples.csv", self.samples.to_csv())
        write_text_atomic(folder / "cohort.json", json.dumps(
            {"name": self.name, "value_type": self.value_type.value, "meta": self.meta,
             "n_samples": self.n_samples, "n_genes": self.n_genes}, indent=2, default=str))
        return folder

    @classmethod
    def read(cls, path: str | Path) -> Cohort:
        """Read a cohort from a folder written by :meth:`write`, or an ``.h5ad`` file."""
        from genexflow.io import read_cohort  # lazy: genexflow.io imports this module

        path = Path(path)
        if path.suffix == ".h5ad":
            return cls.read_h5ad(path)
        if not path.is_dir():
            raise InputError(f"{path}: expected a cohort folder (expression.parquet + samples.csv) or .h5ad")
        info = {}
        if (path / "cohort.json").exists():
            info = json.loads((path / "cohort.json").read_text())
        expr = path / "expression.parquet"
        return read_cohort(
            expr, path / "samples.csv",
            value_type=info.get("value_type", ValueType.LOG),
            name=info.get("name", path.name), meta=info.get("meta", {}),
        )

    def __repr__(self) -> str:
        cols = ", ".join(map(str, self.samples.columns[:6]))
        return (f"Cohort(name={self.name!r}, {self.n_samples} samples x {self.n_genes} genes, "
                f"value_type={self.value_type.value}, dtype={self.X.dtype}, sample columns=[{cols}])")
