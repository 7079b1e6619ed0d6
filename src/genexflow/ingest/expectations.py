"""Great Expectations suites over summary tables, and their results as typed checks.

A wide per-gene suite (one expectation per matrix column) is far too slow: GX evaluates every column
separately, about 8 ms per gene and expectation. Instead the matrix is summarised in one vectorized pass
into a per-sample table (library size, detected genes, missing / Inf / negative / non-integer counts, zero
fraction, mean, SD) and a per-gene table (all-zero flag, missing fraction, variance), and GX validates
those few columns over all rows. Five suites:

``sample_sheet``  required columns, unique sample IDs, batch present, labels in the allowed set,
                  covariate types and ranges, and each sheet row has expression data;
``features``      the input gene IDs: unique, mapped to a canonical gene (mapping rate), one ID type;
``samples``       per-sample matrix QC: finite, non-negative, integer counts, not all zero, not mostly
                  missing, library size and detected genes within median +- k * MAD;
``genes``         per-gene QC after harmonization: unique IDs, all-zero and missing genes within limits;
``cohort``        what is left after quarantine: enough samples, not too many quarantined.

Every expectation carries ``severity`` (``critical`` stops the run, ``warning`` is recorded) and
``meta["rows"]``: ``quarantine`` (failing rows go to the quarantine) or ``flag`` (recorded only).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genexflow.cohort import ValueType
from genexflow.ingest.values import MAX_MAGNITUDE, implausible_mask

MAD_SCALE = 1.4826  # makes the MAD a consistent estimator of the SD for normal data
_DROP_FROM_JSON = ("unexpected_index_query",)
_JSON_LIST_CAP = 200  # unexpected rows kept per expectation in the saved JSON (all go to reasons.csv)


# --------------------------------------------------------------------------- summary tables
def robust_bounds(values, k: float) -> tuple[float, float]:
    """``median -+ k * 1.4826 * MAD`` of the finite values (NaN bounds when there are none).

    The scaled MAD is floored at 1% of the median's magnitude: near a ceiling (every sample detects
    almost every gene) the MAD collapses to 0 and would flag samples one gene away from the median.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(v))
    mad = MAD_SCALE * float(np.median(np.abs(v - med)))
    mad = max(mad, 0.01 * max(abs(med), 1e-12))
    return med - k * mad, med + k * mad


def sample_qc_table(X: np.ndarray, sample_ids, value_type: ValueType) -> pd.DataFrame:
    """Per-sample summary of the matrix in one pass per statistic (no per-gene loops).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_genes)
    sample_ids : sequence of str, length n_samples
    value_type : ValueType

    Returns
    -------
    DataFrame with one row per sample: ``sample_id``, ``n_missing``, ``missing_fraction``, ``n_inf``,
    ``n_negative``, ``n_implausible`` (beyond :data:`genexflow.ingest.values.MAX_MAGNITUDE`),
    ``n_non_integer``, ``zero_fraction``, ``library_size``, ``log10_library_size``,
    ``detected``, ``mean``, ``sd``.
    """
    n, g = X.shape
    if np.issubdtype(X.dtype, np.integer):
        Xf = X
        n_missing = n_inf = n_nonint = np.zeros(n, dtype=np.int64)
        n_finite = np.full(n, g, dtype=np.int64)
    else:
        finite = np.isfinite(X)
        n_finite = finite.sum(1)
        n_missing = np.isnan(X).sum(1)
        n_inf = g - n_finite - n_missing
        Xf = np.where(finite, X, 0).astype(X.dtype, copy=False)
        n_nonint = (Xf != np.round(Xf)).sum(1)
    n_neg = (Xf < 0).sum(1)
    n_big = implausible_mask(Xf, value_type).sum(1)
    n_zero = (Xf == 0).sum(1) - (g - n_finite)  # masked entries were set to 0 above
    lib = Xf.sum(1, dtype=np.float64)
    detected = (Xf > 0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = lib / n_finite
        sq = np.einsum("ij,ij->i", Xf, Xf, dtype=np.float64) if Xf.dtype.kind == "f" else (
            (Xf.astype(np.float64) ** 2).sum(1))
        sd = np.sqrt(np.maximum(sq / n_finite - mean**2, 0))
        zero_fraction = np.where(n_finite > 0, n_zero / np.maximum(n_finite, 1), 1.0)
        log_lib = np.where(lib > 0, np.log10(np.where(lib > 0, lib, 1)), np.nan)
    return pd.DataFrame({
        "sample_id": pd.Index(sample_ids).astype(str),
        "n_missing": n_missing.astype(np.int64),
        "missing_fraction": n_missing / max(g, 1),
        "n_inf": np.asarray(n_inf, dtype=np.int64),
        "n_negative": n_neg.astype(np.int64),
        "n_implausible": n_big.astype(np.int64),
        "n_non_integer": np.asarray(n_nonint, dtype=np.int64),
        "zero_fraction": zero_fraction,
        "library_size": lib,
        "log10_library_size": log_lib,
        "detected": detected.astype(np.int64),
        "mean": mean,
        "sd": sd,
    })


def gene_qc_table(X: np.ndarray, genes, block: int = 256) -> pd.DataFrame:
    """Per-gene summary: ``gene_id``, ``missing_fraction``, ``all_zero``, ``variance``, ``mean``.

    Accumulated over blocks of ``block`` rows, so the float64 working copy stays small for wide matrices.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_genes)
    genes : sequence of str, length n_genes
    """
    n, g = X.shape
    total, sq, cnt = np.zeros(g), np.zeros(g), np.zeros(g)
    missing = np.zeros(g, dtype=np.int64)
    nonzero = np.zeros(g, dtype=bool)
    floating = not np.issubdtype(X.dtype, np.integer)
    for i0 in range(0, n, block):
        B = X[i0:i0 + block]
        if floating:
            finite = np.isfinite(B)
            missing += np.isnan(B).sum(0)
            cnt += finite.sum(0)
            Bf = np.where(finite, B, 0).astype(np.float64, copy=False)
        else:
            cnt += B.shape[0]
            Bf = B.astype(np.float64)
        total += Bf.sum(0)
        sq += np.einsum("ij,ij->j", Bf, Bf)
        nonzero |= (Bf != 0).any(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / cnt
        var = sq / cnt - mean**2
    return pd.DataFrame({
        "gene_id": pd.Index(genes).astype(str),
        "missing_fraction": missing / max(n, 1),
        "all_zero": ~nonzero,
        "variance": np.maximum(var, 0),
        "mean": mean,
    })


# --------------------------------------------------------------------------- results
@dataclass
class CheckResult:
    """One evaluated expectation, flattened from the GX result."""

    suite: str
    expectation: str
    column: str | None
    kwargs: dict
    severity: str
    rows: str | None  # quarantine | flag | None
    description: str
    success: bool
    element_count: int | None = None
    unexpected_count: int = 0
    unexpected: list[tuple[str, Any]] = field(default_factory=list)  # (row label, value)
    keys: list[str] = field(default_factory=list)  # row keys (the id column), aligned with unexpected
    observed_value: Any = None
    exception: str | None = None

    @property
    def name(self) -> str:
        """``expect_x(column, bounds)`` as a short, readable call."""
        args = [self.column] if self.column else []
        for key in ("value_set", "min_value", "max_value", "mostly", "regex"):
            if self.kwargs.get(key) is not None:
                v = self.kwargs[key]
                if isinstance(v, float):
                    v = f"{v:.4g}"
                elif isinstance(v, list) and len(v) > 6:
                    v = v[:6] + ["…"]
                args.append(f"{key}={v}")
        return f"{self.expectation}({', '.join(map(str, args))})"

    def message(self, limit: int = 5) -> str:
        """What failed, on which rows, with which values, and how many."""
        head = f"[{self.suite}] {self.name}: {self.description}"
        if self.exception:
            return f"{head}: GX raised {self.exception}"
        if self.unexpected:
            shown = ", ".join(f"{i}={_fmt(v)}" for i, v in self.unexpected[:limit])
            more = f", … ({self.unexpected_count} in all)" if self.unexpected_count > limit else ""
            total = f" of {self.element_count}" if self.element_count is not None else ""
            return f"{head}: {self.unexpected_count}{total} failing ({shown}{more})"
        if self.observed_value is not None:
            return f"{head}: observed {_fmt(self.observed_value)}"
        return head

    def to_dict(self) -> dict:
        return {
            "suite": self.suite, "expectation": self.expectation, "name": self.name, "column": self.column,
            "severity": self.severity, "rows": self.rows, "description": self.description,
            "success": self.success, "element_count": self.element_count,
            "unexpected_count": self.unexpected_count, "observed_value": _plain(self.observed_value),
            "unexpected": [[i, _plain(v)] for i, v in self.unexpected[:_JSON_LIST_CAP]],
            "exception": self.exception,
        }


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return f"{float(v):.4g}"
    return repr(v) if isinstance(v, str) else str(v)


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _parse(suite: str, res: dict, id_column: str, label_column: str | None = None) -> CheckResult:
    cfg = res.get("expectation_config", {})
    kwargs = {k: v for k, v in cfg.get("kwargs", {}).items() if k != "batch_id"}
    meta = cfg.get("meta") or {}
    out = res.get("result") or {}
    column = kwargs.get("column")
    unexpected, keys = [], []
    for row in out.get("unexpected_index_list") or []:
        if isinstance(row, dict):
            keys.append(str(row.get(id_column)))
            unexpected.append((str(row.get(label_column or id_column)), row.get(column)))
    exc = res.get("exception_info") or {}
    return CheckResult(
        suite=suite, expectation=cfg.get("type", "?"), column=column, kwargs=kwargs,
        severity=str(cfg.get("severity") or "critical"), rows=meta.get("rows"),
        description=cfg.get("description") or meta.get("why", ""), success=bool(res.get("success")),
        element_count=out.get("element_count"), unexpected_count=int(out.get("unexpected_count") or 0),
        unexpected=unexpected, keys=keys, observed_value=out.get("observed_value"),
        exception=exc.get("exception_message") if exc.get("raised_exception") else None,
    )


def _trim(result: dict) -> dict:
    """A JSON-friendly copy of one suite's GX result with long row lists capped."""
    for r in result.get("results", []):
        out = r.get("result") or {}
        for key in _DROP_FROM_JSON:
            out.pop(key, None)
        for key in ("unexpected_list", "unexpected_index_list"):
            if isinstance(out.get(key), list) and len(out[key]) > _JSON_LIST_CAP:
                out[key] = out[key][:_JSON_LIST_CAP]
                out[f"{key}_truncated_to"] = _JSON_LIST_CAP
    return result


# --------------------------------------------------------------------------- running suites
class Validator:
    """A throw-away GX file context in a temp dir: runs suites, keeps results, builds data docs.

    A file context (not an ephemeral one) so that GX can render its data docs; it lives in a
    temporary folder and is removed by :meth:`close`.
    """

    def __init__(self) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        # lazy: great_expectations takes seconds to import
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self._gx = gx
        self._dir = tempfile.mkdtemp(prefix="genexflow-gx-")
        self.context = gx.get_context(mode="file", project_root_dir=self._dir)
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.context.variables.save()
        self._source = self.context.data_sources.add_pandas("genexflow")
        self.results: dict[str, dict] = {}
        self.checks: list[CheckResult] = []

    def run(self, name: str, table: pd.DataFrame, expectations: list, id_column: str,
            label_column: str | None = None) -> list[CheckResult]:
        """Validate ``table`` against a suite built from ``expectations``; returns the parsed checks.

        Failing rows are identified by ``id_column`` (``CheckResult.keys``) and shown by ``label_column``.
        """
        gx = self._gx
        asset = self._source.add_dataframe_asset(name)
        batch_def = asset.add_batch_definition_whole_dataframe("all")
        suite = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        vd = self.context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        checkpoint = self.context.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[vd], actions=[],
            result_format={"result_format": "COMPLETE",
                           "unexpected_index_column_names": [id_column] + ([label_column] if label_column else [])},
        ))
        run = checkpoint.run(batch_parameters={"dataframe": table.reset_index(drop=True)})
        result = next(iter(run.run_results.values())).to_json_dict()
        checks = [_parse(name, r, id_column, label_column) for r in result.get("results", [])]
        self.results[name] = _trim(result)
        self.checks.extend(checks)
        return checks

    def build_data_docs(self, dest: Path) -> Path | None:
        """Render GX data docs and copy the site (without its 4 MB of images and fonts) to ``dest``."""
        self.context.build_data_docs()
        site = Path(self._dir) / "gx" / "uncommitted" / "data_docs" / "local_site"
        if not site.is_dir():
            return None
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(site, dest, ignore=shutil.ignore_patterns("images", "fonts"))
        return dest / "index.html"

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


# --------------------------------------------------------------------------- suites
def _E():
    # lazy: great_expectations takes seconds to import
    import great_expectations.expectations as gxe

    return gxe


def sheet_expectations(
    sheet: pd.DataFrame,
    *,
    label_column: str | None,
    allowed_labels,
    batch_column: str | None,
    covariates,
    numeric_covariates,
    covariate_ranges: dict,
) -> list:
    """Expectations for the sample sheet table (``sample_id`` column + sheet columns + ``in_matrix``)."""
    E = _E()
    ex = [
        E.ExpectColumnValuesToNotBeNull(column="sample_id", severity="critical",
                                        description="every sheet row has a sample ID"),
        E.ExpectColumnValuesToBeUnique(column="sample_id", severity="critical",
                                       description="sample IDs in the sheet are unique"),
        E.ExpectColumnValuesToBeInSet(column="in_matrix", value_set=[True], severity="warning",
                                      meta={"rows": "quarantine"},
                                      description="sheet row has expression data in the matrix"),
    ]
    required = [c for c in (label_column, batch_column, *covariates) if c]
    for col in required:
        ex.append(E.ExpectColumnToExist(column=col, severity="critical",
                                        description=f"sample sheet has the column {col!r}"))
    present = set(sheet.columns)
    if batch_column and batch_column in present:
        ex.append(E.ExpectColumnValuesToNotBeNull(column=batch_column, severity="warning", meta={"rows": "quarantine"},
                                                  description="batch is recorded"))
    if label_column and label_column in present:
        ex.append(E.ExpectColumnValuesToNotBeNull(column=label_column, severity="warning",
                                                  meta={"rows": "quarantine"}, description="label is recorded"))
        if allowed_labels:
            ex.append(E.ExpectColumnValuesToBeInSet(
                column=label_column, value_set=[str(v) for v in allowed_labels], severity="warning",
                meta={"rows": "quarantine"}, description="label is one of the allowed values"))
    for col in covariates:
        if col not in present:
            continue
        ex.append(E.ExpectColumnValuesToNotBeNull(column=col, severity="warning", meta={"rows": "quarantine"},
                                                  description=f"covariate {col!r} is recorded"))
        if col in numeric_covariates:
            ex.append(E.ExpectColumnValuesToMatchRegex(
                column=f"{col}__text", regex=r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$", severity="warning",
                meta={"rows": "quarantine"}, description=f"numeric covariate {col!r} holds a number"))
            lo, hi = covariate_ranges.get(col, (None, None))
            if lo is not None or hi is not None:
                ex.append(E.ExpectColumnValuesToBeBetween(
                    column=f"{col}__num", min_value=lo, max_value=hi, severity="warning", meta={"rows": "quarantine"},
                    description=f"covariate {col!r} within its range"))
    return ex


def feature_expectations(min_mapping_rate: float, dominant_types: list[str], check_mapping: bool) -> list:
    """Expectations for the input-feature table (``feature_id``, ``id_type``, ``canonical``, ...)."""
    E = _E()
    ex = [
        E.ExpectColumnValuesToBeUnique(column="feature_id", severity="warning", meta={"rows": "quarantine"},
                                       description="each input gene ID occurs once"),
        E.ExpectColumnValuesToBeInSet(column="id_type", value_set=dominant_types, mostly=0.95, severity="warning",
                                      meta={"rows": "flag"}, description="gene IDs are of one type"),
        E.ExpectColumnValuesToNotBeInSet(column="method", value_set=["excel"], severity="info", meta={"rows": "flag"},
                                         description="no gene symbol was mangled into a date by Excel"),
    ]
    if check_mapping:
        ex.append(E.ExpectColumnValuesToNotBeNull(
            column="canonical", mostly=float(min_mapping_rate), severity="critical", meta={"rows": "quarantine"},
            description="gene ID maps to a known gene (the mapping rate is the fraction that do)"))
    return ex


def sample_expectations(qc: pd.DataFrame, value_type: ValueType, *, mad_k: float, max_missing_fraction: float,
                        outlier_rows: str) -> list:
    """Expectations for the per-sample QC table, with robust bounds computed from ``qc`` itself."""
    E = _E()
    ex = [
        E.ExpectColumnValuesToBeUnique(column="sample_id", severity="critical",
                                       description="sample IDs in the matrix are unique"),
        E.ExpectColumnValuesToBeInSet(column="in_sheet", value_set=[True], severity="warning",
                                      meta={"rows": "quarantine"}, description="matrix sample is in the sample sheet"),
        E.ExpectColumnValuesToBeBetween(column="n_inf", max_value=0, severity="warning", meta={"rows": "quarantine"},
                                        description="no infinite values"),
        E.ExpectColumnValuesToBeBetween(column="missing_fraction", max_value=float(max_missing_fraction),
                                        severity="warning", meta={"rows": "quarantine"},
                                        description="missing values (NaN) within the limit"),
        E.ExpectColumnValuesToBeBetween(column="zero_fraction", max_value=1.0, strict_max=True, severity="warning",
                                        meta={"rows": "quarantine"}, description="sample is not all zeros"),
        E.ExpectColumnValuesToBeBetween(column="n_implausible", max_value=0, severity="warning",
                                        meta={"rows": "quarantine"},
                                        description=f"no value beyond ±{MAX_MAGNITUDE[value_type]:g} "
                                                    f"(implausible for {value_type.value})"),
    ]
    ok = (qc["zero_fraction"] < 1) & (qc["n_inf"] == 0) & (qc["missing_fraction"] <= max_missing_fraction)
    ok &= qc["n_implausible"] == 0
    if value_type != ValueType.LOG:
        ex.append(E.ExpectColumnValuesToBeBetween(column="n_negative", max_value=0, severity="warning",
                                                  meta={"rows": "quarantine"},
                                                  description=f"no negative values ({value_type.value})"))
        ok &= qc["n_negative"] == 0
        lo, hi = robust_bounds(qc.loc[ok, "log10_library_size"], mad_k)
        if np.isfinite(lo):
            ex.append(E.ExpectColumnValuesToBeBetween(
                column="log10_library_size", min_value=lo, max_value=hi, severity="warning",
                meta={"rows": outlier_rows, "k": mad_k},
                description=f"log10 library size within median ± {mad_k:g}·MAD"))
        lo, hi = robust_bounds(qc.loc[ok, "detected"], mad_k)
        if np.isfinite(lo):
            ex.append(E.ExpectColumnValuesToBeBetween(
                column="detected", min_value=lo, max_value=hi, severity="warning", meta={"rows": outlier_rows, "k": mad_k},
                description=f"detected genes within median ± {mad_k:g}·MAD"))
    else:
        for col in ("mean", "sd"):
            lo, hi = robust_bounds(qc.loc[ok, col], mad_k)
            if np.isfinite(lo):
                ex.append(E.ExpectColumnValuesToBeBetween(
                    column=col, min_value=lo, max_value=hi, severity="warning", meta={"rows": outlier_rows, "k": mad_k},
                    description=f"sample {col} within median ± {mad_k:g}·MAD"))
    if value_type == ValueType.COUNTS:
        ex.append(E.ExpectColumnValuesToBeBetween(
            column="n_non_integer", max_value=0, severity="warning", meta={"rows": "flag"},
            description="counts are integers (estimated counts, e.g. from Salmon, are fractional)"))
    return ex


def gene_expectations(max_all_zero_fraction: float, max_missing_fraction: float) -> list:
    """Expectations for the per-gene QC table of the harmonized matrix."""
    E = _E()
    return [
        E.ExpectTableRowCountToBeBetween(min_value=1, severity="critical", description="at least one gene is left"),
        E.ExpectColumnValuesToBeUnique(column="gene_id", severity="critical",
                                       description="canonical gene IDs are unique after harmonization"),
        E.ExpectColumnValuesToBeInSet(column="all_zero", value_set=[False], mostly=1 - float(max_all_zero_fraction),
                                      severity="warning", meta={"rows": "flag"},
                                      description="genes with only zeros within the limit"),
        E.ExpectColumnValuesToBeBetween(column="missing_fraction", max_value=float(max_missing_fraction),
                                        severity="warning", meta={"rows": "flag"},
                                        description="gene is not mostly missing"),
    ]


def cohort_expectations(min_samples: int, max_quarantine_fraction: float) -> list:
    """Expectations for the disposition table (one row per sample ID, ``kept`` 0/1)."""
    E = _E()
    return [
        E.ExpectColumnSumToBeBetween(column="kept", min_value=int(min_samples), severity="critical",
                                     description=f"at least {min_samples} samples pass validation"),
        E.ExpectColumnMeanToBeBetween(column="kept", min_value=1 - float(max_quarantine_fraction), severity="critical",
                                      description=f"at most {max_quarantine_fraction:.0%} of the samples are quarantined"),
    ]
