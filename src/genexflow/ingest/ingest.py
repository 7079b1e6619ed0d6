"""The ingestion step: read, harmonize gene IDs, validate with Great Expectations, quarantine, version.

:func:`ingest` is the library function behind ``genexflow ingest`` and the KFP ingest component::

    result = ingest("counts.csv", "samples.csv", value_type="counts", label_column="label",
                    batch_column="batch", out_dir="data/validated/mycohort")
    result.cohort          # the validated, harmonized Cohort (HGNC symbols, sample sheet in matrix order)
    result.report_html     # human-readable report; result.report_json holds the GX results
    result.quarantined     # one record per rejected sample / gene / file and failed check
    result.dvc_md5         # DVC md5 of the validated cohort folder (lineage)

Severity: a failed ``critical`` expectation raises :class:`~genexflow.errors.ValidationError` naming the
expectation, the offending samples or genes and their count (after writing the report and copying the
inputs to the quarantine); ``warning`` expectations are recorded and, where they judge single rows
(a sample with Inf values, a label outside the allowed set, an unmapped gene), those rows go to the
quarantine while the run continues.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genexflow import __version__
from genexflow.cohort import Cohort, ValueType
from genexflow.errors import InputError, ValidationError
from genexflow.ingest import expectations as ex
from genexflow.ingest.gene_ids import (
    DUPLICATE_POLICIES,
    collapse_duplicates,
    default_duplicate_policy,
    map_gene_ids,
)
from genexflow.ingest.lineage import dvc_md5, file_md5, record_dvc
from genexflow.ingest.quarantine import QuarantineRecord, write_quarantine
from genexflow.ingest.report import render_html
from genexflow.ingest.values import bad_cells, describe, detect_value_type, missing_cells
from genexflow.io import check_output, json_default, read_matrix, read_sample_sheet

COHORT_FILES = ("expression.parquet", "samples.csv", "cohort.json")


@dataclass
class IngestConfig:
    """Settings of the ingestion step (all have defaults that suit bulk RNA-seq and arrays).

    Parameters
    ----------
    orientation : {"auto", "samples", "genes"}
        Matrix orientation; ``auto`` also flips a matrix whose columns, not rows, are the sheet's samples.
    gene_id_type : {"auto", "ensembl", "entrez", "symbol", "probe"}
    probe_map : path or DataFrame, optional
        Probe -> symbol table for array probe IDs (e.g. ``shared/data/golub/genes.csv``).
    duplicates : {"sum", "mean", "max-variance"}, optional
        How features that map to one gene merge; default ``sum`` for counts/TPM/FPKM, ``max-variance``
        for log-expression.
    min_mapping_rate : float
        Fewer mapped gene IDs than this fraction is a critical failure.
    keep_unmapped : bool
        Keep unmapped gene IDs as features (under their input ID) instead of quarantining them.
    mad_k : float
        Robust bounds ``median -+ k * MAD`` for library size and detected genes (mean/SD for log data).
    outliers : {"flag", "quarantine"}
        What happens to samples outside the robust bounds.
    max_missing_fraction : float
        Samples with a larger fraction of NaN go to the quarantine.
    max_gene_missing_fraction, max_all_zero_gene_fraction : float
        Warning limits for mostly-missing genes and for the fraction of all-zero genes.
    min_samples : int
        Fewer samples left after quarantine is a critical failure.
    max_quarantine_fraction : float
        Quarantining more than this fraction of the samples is a critical failure (likely a wrong file).
    covariate_ranges : dict name -> (min, max)
        Allowed ranges of numeric covariates (``None`` for an open end).
    data_docs : bool
        Also render Great Expectations data docs next to the report.
    dvc : {"auto", "add", "off"}
        ``auto``: ``dvc add data`` when the output lies in a DVC repository's ``data/``; ``add``: require it.
    dvc_push : bool
        Push to the default DVC remote after ``dvc add``.
    name : str, optional
        Cohort name (default: the input's name).
    report_dir : path, optional
        Where reports go (default ``<quarantine_root>/../reports/<out_dir name>``).
    """

    orientation: str = "auto"
    gene_id_type: str = "auto"
    probe_map: Any = None
    duplicates: str | None = None
    min_mapping_rate: float = 0.5
    keep_unmapped: bool = False
    mad_k: float = 5.0
    outliers: str = "flag"
    max_missing_fraction: float = 0.5
    max_gene_missing_fraction: float = 0.5
    max_all_zero_gene_fraction: float = 0.5
    min_samples: int = 3
    max_quarantine_fraction: float = 0.25
    covariate_ranges: dict = field(default_factory=lambda: {"age": (0, 130)})
    data_docs: bool = True
    dvc: str = "auto"
    dvc_push: bool = False
    name: str | None = None
    report_dir: str | Path | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(self.probe_map, pd.DataFrame | pd.Series):
            d["probe_map"] = f"<table of {len(self.probe_map)} rows>"
        elif self.probe_map is not None:
            d["probe_map"] = str(self.probe_map)
        d["report_dir"] = None if self.report_dir is None else str(self.report_dir)
        d["covariate_ranges"] = {k: list(v) for k, v in self.covariate_ranges.items()}
        return d


@dataclass
class IngestResult:
    """What :func:`ingest` produced."""

    cohort: Cohort
    out_dir: Path
    report_json: Path
    report_html: Path
    quarantined: list[QuarantineRecord]
    quarantine_dir: Path | None
    warnings: list[str]
    mapping_rate: float | None
    dvc_md5: str
    run_id: str
    lineage: dict
    data_docs: Path | None = None
    #: "given", or "detected: <the rule that decided>" for ``value_type="auto"``
    value_type_source: str = "given"
    #: missing cells kept in the cohort (imputed at training), as ``sample/gene=nan``
    missing_values: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        kinds: dict[str, set] = {}
        for r in self.quarantined:
            kinds.setdefault(r.kind, set()).add(r.id)
        return {
            "run_id": self.run_id, "cohort": repr(self.cohort), "out_dir": str(self.out_dir),
            "mapping_rate": self.mapping_rate, "dvc_md5": self.dvc_md5,
            "value_type": self.cohort.value_type.value, "value_type_source": self.value_type_source,
            "missing_values": len(self.missing_values),
            "quarantined": {k: len(v) for k, v in kinds.items()},
            "quarantine_reasons": [f"{r.kind} {r.id}: {r.message}" for r in self.quarantined],
            "quarantine_dir": None if self.quarantine_dir is None else str(self.quarantine_dir),
            "warnings": len(self.warnings), "report_html": str(self.report_html),
            "report_json": str(self.report_json),
        }


# --------------------------------------------------------------------------- inputs
@dataclass
class _Inputs:
    matrix: pd.DataFrame  # samples x input features (repeated IDs allowed)
    sheet: pd.DataFrame  # indexed by sample_id (repeats allowed), sheet columns
    value_type: ValueType
    name: str
    meta: dict
    digests: dict  # input name -> md5
    files: dict  # quarantine name -> path or DataFrame
    notes: list[str]


def _md5_file(path: Path) -> str:
    return file_md5(path)


def _md5_frame(df: pd.DataFrame) -> str:
    """Content hash of an in-memory table: labels, dtypes and values (raw bytes for a numeric matrix)."""
    h = hashlib.md5(usedforsecurity=False)  # content fingerprint (DVC-compatible), not security
    for labels in (df.index, df.columns):
        h.update("\x1f".join(map(str, labels)).encode())
    h.update(str(list(map(str, df.dtypes.unique()))).encode())
    if len(df.columns) and all(np.issubdtype(t, np.number) for t in df.dtypes.unique()):
        h.update(np.ascontiguousarray(df.to_numpy()).tobytes())
    else:
        h.update(df.to_csv().encode())
    return h.hexdigest()


def _load_inputs(expression, samples, value_type, cfg: IngestConfig, quarantine_root: Path, run_id: str | None):
    """Read the inputs; a file that cannot be read is copied to the quarantine before the error is raised."""
    notes: list[str] = []
    files: dict = {}
    digests: dict = {}
    meta: dict = {}
    if isinstance(expression, str | Path) and (Path(expression).is_dir() or str(expression).endswith(".h5ad")):
        expression = _guard(lambda: Cohort.read(expression), {Path(expression).name: Path(expression)},
                            quarantine_root, run_id, cfg)
    sheet_path = Path(samples) if isinstance(samples, str | Path) else None
    if sheet_path is not None:
        files[f"samples__{sheet_path.name}"] = sheet_path
        sheet = _guard(lambda: read_sample_sheet(sheet_path, check_unique=False),
                       {f"samples__{sheet_path.name}": sheet_path}, quarantine_root, run_id, cfg)
        digests["samples"] = _md5_file(sheet_path)
    elif isinstance(samples, pd.DataFrame):
        sheet = samples.copy()
        sheet.index = pd.Index(sheet.index.astype(str), name="sample_id")
        digests["samples"] = _md5_frame(sheet)
        files["samples.csv"] = sheet
    elif samples is None:
        sheet = None
    else:
        raise InputError(f"samples must be a path or a DataFrame, got {type(samples).__name__}")

    if isinstance(expression, Cohort):
        c = expression
        matrix = c.frame().copy(deep=False)
        name = cfg.name or c.name
        meta = {k: v for k, v in c.meta.items() if k != "lineage"}
        vt = ValueType.parse(value_type) if value_type not in (None, "auto") else c.value_type
        if sheet is None:
            sheet = c.samples.copy()
            digests["samples"] = _md5_frame(sheet)
            files["samples.csv"] = sheet
        digests["expression"] = _md5_frame(matrix)
        files["expression.parquet"] = matrix
    elif isinstance(expression, pd.DataFrame):
        matrix = expression.copy(deep=False)
        matrix.index = pd.Index(matrix.index.astype(str), name="sample_id")
        name = cfg.name or "cohort"
        vt = _value_type(value_type, matrix, meta)
        digests["expression"] = _md5_frame(matrix)
        files["expression.parquet"] = matrix
    else:
        path = Path(expression)
        if value_type is None:
            raise InputError("value_type is required (counts, tpm, fpkm, log-expression or auto)")
        name = cfg.name or default_name(path)
        ids = None if sheet is None else list(sheet.index)
        matrix = _guard(lambda: read_matrix(path, cfg.orientation, ids), {f"expression__{path.name}": path},
                        quarantine_root, run_id, cfg)
        vt = _guard(lambda: _value_type(value_type, matrix, meta), {f"expression__{path.name}": path},
                    quarantine_root, run_id, cfg)
        digests["expression"] = _md5_file(path)
        files[f"expression__{path.name}"] = path
    if sheet is None:
        sheet = pd.DataFrame(index=pd.Index(matrix.index.astype(str), name="sample_id"))
        notes.append("no sample sheet given: samples carry no labels, batches or covariates")
    matrix, flipped = _fix_orientation(matrix, sheet, cfg.orientation)
    if flipped:
        notes.append(f"matrix read transposed: its columns, not its rows, held the sample IDs of the sheet "
                     f"({matrix.shape[0]} samples x {matrix.shape[1]} genes after flipping)")
    return _Inputs(matrix=matrix, sheet=sheet, value_type=vt, name=name, meta=meta, digests=digests,
                   files=files, notes=notes)


def _value_type(value_type, matrix: pd.DataFrame, meta: dict) -> ValueType:
    """The given value type, or for ``"auto"`` the detected one (its rule goes to ``meta``)."""
    if value_type is None:
        raise InputError("value_type is required (counts, tpm, fpkm, log-expression or auto)")
    if str(value_type).lower() != "auto":
        return ValueType.parse(value_type)
    guess = detect_value_type(matrix.to_numpy(), matrix.index, matrix.columns)
    meta["value_type_detected"] = guess.rule
    return guess.value_type


_GENERIC_STEMS = {"expression", "counts", "matrix", "data", "tpm", "fpkm", "values", "exprs", "gene_counts"}


def default_name(path: str | Path) -> str:
    """Cohort name from a path: the file stem, or the folder's name for generic stems
    (``golub/expression.parquet`` -> ``golub``)."""
    path = Path(path)
    stem = path.name.split(".")[0]
    if (path.is_dir() or stem.lower() in _GENERIC_STEMS) and path.resolve().parent.name:
        return path.name if path.is_dir() else path.resolve().parent.name
    return stem


def _guard(read, files: dict, quarantine_root: Path, run_id: str | None, cfg: IngestConfig):
    try:
        return read()
    except InputError as exc:
        path = next(iter(files.values()))
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() if path.is_file() else "missing"
        rid = run_id or f"{cfg.name or default_name(path)}-{digest[:12]}"
        records = [QuarantineRecord(kind="file", id=name, suite="read", check="readable input file", column=None,
                                    value=None, message=str(exc)) for name in files]
        existing = {k: v for k, v in files.items() if Path(v).is_file()}
        qdir = write_quarantine(Path(quarantine_root) / rid, rid, records, files=existing)
        raise type(exc)(f"{exc} [quarantined: {qdir}]") from exc


def _fix_orientation(matrix: pd.DataFrame, sheet: pd.DataFrame, orientation: str) -> tuple[pd.DataFrame, bool]:
    ids = pd.Index(sheet.index.astype(str))
    rows = int(matrix.index.astype(str).isin(ids).sum())
    cols = int(matrix.columns.astype(str).isin(ids).sum())
    if rows > 0 or cols == 0:
        return matrix, False
    if orientation != "auto":
        other = "genes" if orientation == "samples" else "samples"
        raise ValidationError(
            f"matrix looks transposed: {cols} of its columns and none of its rows are sample IDs of the sheet; "
            f"pass --orientation {other} (or auto)",
            {"check": "matrix orientation", "matching_columns": cols},
        )
    flipped = matrix.T
    flipped.index = pd.Index(flipped.index.astype(str), name="sample_id")
    flipped.columns = pd.Index(flipped.columns.astype(str), name="gene_id")
    return flipped, True


def _run_id(inputs: _Inputs, params: dict) -> str:
    h = hashlib.sha256(json.dumps({"inputs": inputs.digests, "params": params}, sort_keys=True,
                                  default=str).encode()).hexdigest()
    return f"{inputs.name}-{h[:12]}"


# --------------------------------------------------------------------------- tables
def _numeric_like(col: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(col):
        return True
    vals = col.dropna()
    return len(vals) > 0 and pd.to_numeric(vals, errors="coerce").notna().mean() >= 0.8


def _sheet_table(sheet: pd.DataFrame, matrix_ids: pd.Index, label_column, covariates) -> tuple[pd.DataFrame, list]:
    t = sheet.reset_index()
    t["sample_id"] = t["sample_id"].astype(str)
    t["in_matrix"] = t["sample_id"].isin(matrix_ids.astype(str))
    if label_column and label_column in t:
        lab = t[label_column]
        t[label_column] = lab.where(lab.isna(), lab.astype(str))
    numeric = [c for c in covariates if c in t and _numeric_like(t[c])]
    for c in numeric:
        raw = t[c]
        t[f"{c}__text"] = raw.where(raw.isna(), raw.astype(str))
        t[f"{c}__num"] = pd.to_numeric(raw, errors="coerce")
    return t, numeric


# --------------------------------------------------------------------------- main entry
def ingest(
    expression,
    samples=None,
    *,
    value_type: str | ValueType | None = None,
    label_column: str | None = None,
    allowed_labels=None,
    batch_column: str | None = None,
    covariates=(),
    out_dir: str | Path,
    quarantine_root: str | Path = "data/quarantine",
    run_id: str | None = None,
    config: IngestConfig | None = None,
) -> IngestResult:
    """Read, harmonize, validate, quarantine and version one cohort.

    Parameters
    ----------
    expression : path, DataFrame of shape (n_samples, n_features), or Cohort
        Matrix file (CSV/TSV/Parquet, either orientation), a cohort folder / ``.h5ad``, or in-memory data.
    samples : path or DataFrame indexed by sample_id, optional
        The sample sheet (for a Cohort, its own ``samples`` are used when omitted).
    value_type : {"counts", "tpm", "fpkm", "log-expression"}
        Required for files and DataFrames; defaults to the Cohort's.
    label_column : str, optional
        Column holding the class label (required to exist when given; nulls are quarantined).
    allowed_labels : sequence of str, optional
        Allowed label values; samples with others are quarantined.
    batch_column : str, optional
        Column holding the batch (required to exist when given; nulls are quarantined).
    covariates : sequence of str
        Covariate columns (must exist; numeric ones must hold numbers within ``config.covariate_ranges``).
    out_dir : path
        Folder for the validated cohort (``expression.parquet``, ``samples.csv``, ``cohort.json``).
    quarantine_root : path
        Rejected samples/genes/files go to ``<quarantine_root>/<run_id>/``.
    run_id : str, optional
        Defaults to ``<name>-<hash of the inputs and settings>``, so a rerun reuses (overwrites) its folder.
    config : IngestConfig, optional

    Returns
    -------
    IngestResult

    Raises
    ------
    InputError
        A file cannot be read (empty, truncated, not UTF-8, non-numeric cells); it is copied to the quarantine.
    ValidationError
        A critical expectation failed; ``details`` lists the failed checks, the report and quarantine paths.
    """
    cfg = config or IngestConfig()
    t_start = time.perf_counter()
    if cfg.outliers not in ("flag", "quarantine"):
        raise InputError(f"outliers must be flag or quarantine, got {cfg.outliers!r}")
    if cfg.duplicates is not None and cfg.duplicates not in DUPLICATE_POLICIES:
        raise InputError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {cfg.duplicates!r}")
    covariates = [c for c in (covariates or ()) if c]
    out_dir = Path(out_dir)
    inputs_on_disk = [p for p in (expression, samples) if isinstance(p, str | Path)]
    for fname in COHORT_FILES:  # the validated cohort must not land on top of the files it is read from
        check_output(out_dir / fname, inputs_on_disk, what="--out")
    quarantine_root = Path(quarantine_root)
    inputs = _load_inputs(expression, samples, value_type, cfg, quarantine_root, run_id)
    vt = inputs.value_type
    params = {"label_column": label_column, "allowed_labels": list(allowed_labels or []),
              "batch_column": batch_column, "covariates": covariates, "value_type": vt.value,
              "config": cfg.to_dict()}
    run_id = run_id or _run_id(inputs, params)
    report_dir = Path(cfg.report_dir) if cfg.report_dir else quarantine_root.parent / "reports" / out_dir.name
    qdir = quarantine_root / run_id
    warnings_: list[str] = list(inputs.notes)
    if batch_column is None:
        warnings_.append("no batch column given: batch effects cannot be checked or corrected")

    matrix, sheet = inputs.matrix, inputs.sheet
    matrix_ids = pd.Index(matrix.index.astype(str))
    id_type = cfg.gene_id_type
    if id_type == "auto" and inputs.meta.get("gene_id_type") in ("ensembl", "entrez", "symbol", "probe"):
        id_type = inputs.meta["gene_id_type"]
    mapping = map_gene_ids(matrix.columns, id_type=id_type, probe_map=cfg.probe_map, keep_unmapped=cfg.keep_unmapped)
    warnings_ += mapping.notes
    if mapping.mixed:
        warnings_.append("gene IDs mix types: " + ", ".join(f"{k} {v}" for k, v in mapping.type_counts.items())
                         + "; each ID was mapped by its own type")
    policy = cfg.duplicates or default_duplicate_policy(vt)

    validator = ex.Validator()
    try:
        # ---- phase 1: sample sheet, input features, per-sample QC
        sheet_tbl, numeric_cov = _sheet_table(sheet, matrix_ids, label_column, covariates)
        validator.run("sample_sheet", sheet_tbl, ex.sheet_expectations(
            sheet, label_column=label_column, allowed_labels=allowed_labels, batch_column=batch_column,
            covariates=covariates, numeric_covariates=numeric_cov, covariate_ranges=cfg.covariate_ranges),
            id_column="sample_id")
        feats = mapping.table.rename(columns={"input_id": "feature_id"})
        feats.insert(0, "position", np.arange(len(feats)))
        dominant = [mapping.id_type] + (["excel"] if mapping.id_type == "symbol" else [])
        validator.run("features", feats, ex.feature_expectations(
            cfg.min_mapping_rate, dominant, check_mapping=mapping.mapping_rate is not None),
            id_column="position", label_column="feature_id")
        X_raw = matrix.to_numpy()
        qc = ex.sample_qc_table(X_raw, matrix_ids, vt)
        qc["in_sheet"] = matrix_ids.isin(sheet.index.astype(str))
        qc.insert(0, "row", np.arange(len(qc)))
        validator.run("samples", qc, ex.sample_expectations(
            qc, vt, mad_k=cfg.mad_k, max_missing_fraction=cfg.max_missing_fraction,
            outlier_rows="quarantine" if cfg.outliers == "quarantine" else "flag"),
            id_column="row", label_column="sample_id")
        critical = _critical(validator.checks, sheet)

        records: list[QuarantineRecord] = []
        drop_rows: set[int] = set()
        drop_cols: set[int] = set()
        sheet_only: set[str] = set()
        if not critical:
            records, drop_rows, drop_cols, sheet_only = _dispositions(validator.checks, matrix_ids, mapping)
            _name_bad_cells(records, matrix, vt)
            # ---- phase 2: what is left
            kept_rows = np.array([i for i in range(len(matrix_ids)) if i not in drop_rows], dtype=int)
            kept_cols = np.array([j for j in range(matrix.shape[1]) if j not in drop_cols], dtype=int)
            all_ids = list(dict.fromkeys(list(matrix_ids) + [s for s in sheet.index.astype(str)]))
            kept_ids = set(matrix_ids[kept_rows])
            disposition = pd.DataFrame({"sample_id": all_ids, "kept": [int(s in kept_ids) for s in all_ids]})
            validator.run("cohort", disposition, ex.cohort_expectations(cfg.min_samples, cfg.max_quarantine_fraction),
                          id_column="sample_id")
            X_kept = X_raw[np.ix_(kept_rows, kept_cols)] if len(kept_cols) < X_raw.shape[1] else X_raw[kept_rows]
            canon = mapping.table["canonical"].to_numpy()[kept_cols]
            X_h, genes_h, merged = collapse_duplicates(X_kept, canon, policy)
            validator.run("genes", ex.gene_qc_table(X_h, genes_h), ex.gene_expectations(
                cfg.max_all_zero_gene_fraction, cfg.max_gene_missing_fraction), id_column="gene_id")
            critical = _critical(validator.checks, sheet)
        warnings_ += [c.message() for c in validator.checks if not c.success and c.severity != "critical"]

        data_docs = None
        if cfg.data_docs:
            data_docs = validator.build_data_docs(report_dir / "datadocs")
    finally:
        validator.close()

    missing = missing_cells(X_raw, matrix_ids, matrix.columns)
    if missing:
        warnings_.append(f"{len(missing)} missing value(s) kept as missing (training imputes them: KNN, or the "
                         f"training gene means): {describe(missing)}")
    report = {
        "run_id": run_id, "name": inputs.name, "value_type": vt.value, "success": not critical,
        "value_type_source": "detected: " + inputs.meta["value_type_detected"]
        if "value_type_detected" in inputs.meta else "given",
        "missing_values": {"n": len(missing), "cells": [str(c) for c in missing[:100]]},
        "inputs": {k: {"md5": v} for k, v in inputs.digests.items()},
        "shape_in": list(matrix.shape), "parameters": params,
        "mapping": mapping.summary(), "duplicate_policy": policy,
        "critical": [c.message() for c in critical], "warnings": warnings_,
        "checks": [c.to_dict() for c in validator.checks],
        "gx_results": validator.results,
        "data_docs": None if data_docs is None else str(data_docs),
    }

    if critical:
        fail_records = records + [
            QuarantineRecord(kind="file", id=name, suite=c.suite, check=c.name, column=c.column,
                             value=_first_value(c), message=c.message())
            for name in inputs.files for c in critical
        ]
        qpath = write_quarantine(qdir, run_id, fail_records, matrix=matrix, sheet=sheet,
                                 gene_positions=sorted(drop_cols), files=inputs.files)
        report["quarantine"] = _quarantine_summary(fail_records, qpath)
        report["timing_s"] = round(time.perf_counter() - t_start, 3)
        rjson, rhtml = _write_report(report, report_dir)
        lines = "; ".join(c.message() for c in critical)
        if records and any(c.suite == "cohort" for c in critical):  # say why so many samples were rejected
            why = pd.Series([r.check for r in records if r.kind == "sample"]).value_counts()
            lines += "; samples rejected by: " + ", ".join(f"{k} ({v})" for k, v in why.head(4).items())
        raise ValidationError(
            f"validation failed, {len(critical)} critical check(s): {lines} "
            f"[report: {rhtml}; inputs quarantined: {qpath}]",
            {"checks": [c.to_dict() for c in critical], "report_json": str(rjson), "report_html": str(rhtml),
             "quarantine_dir": str(qpath), "run_id": run_id},
        )

    # ---- success: write the validated cohort, the quarantine, the report, the lineage
    kept_sheet = sheet.copy()
    kept_sheet.index = pd.Index(kept_sheet.index.astype(str), name="sample_id")
    kept_sheet = kept_sheet.reindex(matrix_ids[kept_rows])
    if merged:
        warnings_.append(f"{len(merged)} genes merged from several input IDs ({policy}), e.g. "
                         + ", ".join(f"{g} <- {'+'.join(str(matrix.columns[kept_cols[j]]) for j in pos)}"
                                     for g, pos in list(merged.items())[:3]))
        report["warnings"] = warnings_
    qpath = write_quarantine(qdir, run_id, records, matrix=matrix, sheet=sheet,
                             gene_positions=sorted(drop_cols))
    lineage_meta = {
        "run_id": run_id, "inputs": report["inputs"], "value_type": vt.value,
        # "given" or "detected: <rule>" (the run summary and report print it)
        "value_type_source": report["value_type_source"], "missing_values": report["missing_values"]["n"],
        "gene_ids": {k: report["mapping"][k] for k in ("id_type", "mapping_rate", "n_features", "n_canonical",
                                                       "methods")},
        "duplicate_policy": policy, "n_merged_genes": len(merged),
        "quarantine": _quarantine_summary(records, qpath),
        "report": str(report_dir / "validation.json"),
        "genexflow_version": _version(),
    }
    cohort = Cohort(X=X_h, genes=genes_h, samples=kept_sheet, value_type=vt, name=inputs.name,
                    meta={**inputs.meta, "lineage": lineage_meta})
    for fname in COHORT_FILES:  # a rewrite must not keep a stale file from an earlier layout
        (out_dir / fname).unlink(missing_ok=True)
    cohort.write(out_dir)

    md5 = dvc_md5(out_dir)
    report["quarantine"] = lineage_meta["quarantine"]
    report["validated"] = {"path": str(out_dir), "dvc_md5": md5, "n_samples": cohort.n_samples,
                           "n_genes": cohort.n_genes}
    report["timing_s"] = round(time.perf_counter() - t_start, 3)
    lineage = {"run_id": run_id, "validated": {"path": str(out_dir), "dvc_md5": md5},
               "inputs": report["inputs"], "quarantine": report["quarantine"],
               "report": str(report_dir / "validation.json")}
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True, default=str))
    rjson, rhtml = _write_report(report, report_dir)
    # dvc add last: data/ then holds the cohort, the quarantine and the reports of this run
    dvc_record = record_dvc(out_dir, mode=cfg.dvc, push=cfg.dvc_push)
    lineage["dvc"] = dvc_record.get("dvc", {})
    if lineage["dvc"].get("error") or lineage["dvc"].get("push_error"):
        warnings_.append(lineage["dvc"].get("error") or lineage["dvc"]["push_error"])
    # in memory only: the md5 cannot be inside the data it hashes (training reads meta["dvc_md5"])
    cohort.meta["lineage"]["dvc_md5"] = cohort.meta["dvc_md5"] = md5
    return IngestResult(
        cohort=cohort, out_dir=out_dir, report_json=rjson, report_html=rhtml, quarantined=records,
        quarantine_dir=qpath, warnings=warnings_, mapping_rate=mapping.mapping_rate, dvc_md5=md5, run_id=run_id,
        lineage=lineage, data_docs=data_docs, value_type_source=report["value_type_source"],
        missing_values=[str(c) for c in missing],
    )


# --------------------------------------------------------------------------- helpers
def _version() -> str:
    return __version__


def _critical(checks: list[ex.CheckResult], sheet: pd.DataFrame) -> list[ex.CheckResult]:
    out = [c for c in checks if not c.success and c.severity == "critical"]
    for c in out:
        if c.expectation == "expect_column_to_exist":
            c.description += f" (sheet columns: {', '.join(map(str, sheet.columns)) or 'none'})"
        elif c.expectation == "expect_column_values_to_be_unique" and c.unexpected:
            c.description += " (repeated sample IDs: " + ", ".join(sorted({i for i, _ in c.unexpected})[:5]) + ")"
    return out


def _first_value(c: ex.CheckResult):
    if c.unexpected:
        return c.unexpected[0][1]
    return c.observed_value


def _dispositions(checks, matrix_ids: pd.Index, mapping):
    """Quarantine records and the matrix rows / columns they remove, from the row-level checks."""
    records: list[QuarantineRecord] = []
    drop_rows: set[int] = set()
    drop_cols: set[int] = set()
    sheet_only: set[str] = set()
    pos_of = {}
    for i, s in enumerate(matrix_ids):
        pos_of.setdefault(s, []).append(i)
    for c in checks:
        if c.rows != "quarantine" or not c.keys:
            continue
        for key, (label, value) in zip(c.keys, c.unexpected, strict=True):
            msg = f"{c.description}: {c.column}={value!r}"
            if c.suite == "features":
                j = int(key)
                drop_cols.add(j)
                note = mapping.table["note"].iat[j]
                records.append(QuarantineRecord(kind="gene", id=label, suite=c.suite, check=c.name, column=c.column,
                                                value=value, message=f"{msg}{f' ({note})' if note else ''}"))
            elif c.suite == "samples":
                drop_rows.add(int(key))
                records.append(QuarantineRecord(kind="sample", id=label, suite=c.suite, check=c.name,
                                                column=c.column, value=value, message=msg))
            else:  # sample_sheet: key is the sample ID
                if key in pos_of:
                    drop_rows.update(pos_of[key])
                    records.append(QuarantineRecord(kind="sample", id=key, suite=c.suite, check=c.name,
                                                    column=c.column, value=value, message=msg))
                else:
                    sheet_only.add(key)
                    records.append(QuarantineRecord(kind="sheet_row", id=key, suite=c.suite, check=c.name,
                                                    column=c.column, value=value, message=msg))
    return records, drop_rows, drop_cols, sheet_only


_CELL_CHECKS = ("n_negative", "n_inf", "n_implausible")


def _name_bad_cells(records: list[QuarantineRecord], matrix: pd.DataFrame, vt: ValueType) -> None:
    """Add the offending cells (sample/gene=value) to the reasons of samples quarantined for bad values."""
    rows = {r.id for r in records if r.kind == "sample" and r.column in _CELL_CHECKS}
    if not rows:
        return
    pos = [i for i, s in enumerate(matrix.index.astype(str)) if s in rows]
    sub = matrix.iloc[pos]
    cells = bad_cells(sub.to_numpy(), vt, sub.index, sub.columns)
    by_sample: dict[str, list] = {}
    for c in cells:
        by_sample.setdefault(c.sample, []).append(c)
    for k, r in enumerate(records):
        if r.kind == "sample" and r.column in _CELL_CHECKS and by_sample.get(r.id):
            records[k] = replace(r, message=f"{r.message} (cells: {describe(by_sample[r.id])})")


def _quarantine_summary(records: list[QuarantineRecord], qpath: Path | None) -> dict:
    kinds: dict[str, set] = {}
    for r in records:
        kinds.setdefault(r.kind, set()).add(r.id)
    return {"dir": None if qpath is None else str(qpath), "counts": {k: len(v) for k, v in sorted(kinds.items())},
            "n_reasons": len(records)}


def _write_report(report: dict, report_dir: Path) -> tuple[Path, Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    rjson = report_dir / "validation.json"
    rjson.write_text(json.dumps(report, indent=1, default=json_default))
    rhtml = report_dir / "validation.html"
    rhtml.write_text(render_html(report))
    return rjson, rhtml

