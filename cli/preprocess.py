"""``genexflow normalize | filter | impute | combat | combat-seq | combat-report``.

Each command reads a matrix in the ``shared/data`` layout (samples as rows, first column ``sample_id``;
Parquet or CSV/TSV; ``--orientation genes`` for genes-as-rows files), writes the same layout keeping the
sample and gene order, and exits non-zero with a one-line message on bad input.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from rich.markup import escape

from genexflow.cli._common import console, step
from genexflow.cohort import ValueType
from genexflow.errors import InputError
from genexflow.ingest.values import check_cells, describe, detect_value_type, missing_cells
from genexflow.io import check_output, check_unique_ids, read_matrix, read_sample_sheet, write_matrix

ORIENT_HELP = "Rows of the input: samples, genes or auto (decided from the first column name)."


class Method(StrEnum):
    cpm = "cpm"
    logcpm = "logcpm"
    tmm_logcpm = "tmm-logcpm"
    tpm = "tpm"
    fpkm = "fpkm"
    log2p1 = "log2p1"


def _read(path: Path, orientation: str, sample_ids=None):
    """The matrix, refusing repeated sample or gene IDs (no later step could tell them apart, and a
    Parquet file with repeated column names cannot be read back by pandas)."""
    with step(f"read {path.name}"):
        df = read_matrix(path, orientation=orientation, sample_ids=sample_ids)
    check_unique_ids(df, path)
    return df


def _write(df, out: Path, inputs) -> None:
    with step(f"write {out}"):
        write_matrix(df, out, inputs)
    console.print(f"{df.shape[0]} samples x {df.shape[1]} genes -> {out}", markup=False)


def _say_missing(df, what: str) -> None:
    """Name the missing cells a command leaves (or fills): never a silent NaN."""
    cells = missing_cells(df.to_numpy(), df.index, df.columns)
    if cells:
        console.print(f"[yellow]{len(cells)} missing value(s) {what}: {escape(describe(cells))}[/]")


def _sheet(samples: Path, index, columns: list[str]):
    """Sample-sheet rows in matrix order, checking that the needed columns exist."""
    sheet = read_sample_sheet(samples)
    missing_ids = index.difference(sheet.index)
    if len(missing_ids):
        raise InputError(f"{samples}: {len(missing_ids)} matrix samples are not in the sheet "
                         f"(e.g. {', '.join(map(str, missing_ids[:3]))})")
    missing = [c for c in columns if c not in sheet.columns]
    if missing:
        raise InputError(f"{samples}: no column {', '.join(missing)}; available: {', '.join(map(str, sheet.columns))}")
    return sheet.loc[index]


def _refuse_counts(df, path: Path) -> None:
    """ComBat models log-scale, roughly normal values; on raw counts it shifts small counts below zero."""
    try:
        guess = detect_value_type(df.to_numpy(), df.index, df.columns)
    except InputError:
        return  # TPM-or-FPKM: not counts
    if guess.value_type == ValueType.COUNTS:
        raise InputError(
            f"{path} looks like raw counts ({guess.rule}); ComBat expects log-scale values and would write "
            "negative counts: run `genexflow combat-seq` on counts, or `genexflow normalize` (log-CPM) first")


def _split(text: str | None) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


# --------------------------------------------------------------------------- commands
def normalize(
    inp: Path = typer.Argument(..., help="Raw matrix (counts for cpm/logcpm/tmm-logcpm/tpm/fpkm)."),
    method: Method = typer.Option(Method.tmm_logcpm, "--method", "-m", help="Normalization."),
    prior_count: float = typer.Option(2.0, "--prior-count", help="edgeR prior count for log-CPM (> 0)."),
    gene_lengths: str | None = typer.Option(None, "--gene-lengths",
                                            help="Gene lengths for tpm/fpkm: 'hg19' (shipped) or a file "
                                                 "(gene_id + length / median_length)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output matrix (.parquet or .csv)."),
    orientation: str = typer.Option("auto", help=ORIENT_HELP),
) -> None:
    """Library-size normalization with edgeR semantics (CPM, log-CPM, TMM log-CPM), TPM/FPKM, log2(x+1)."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.preprocessing.normalize import CPMNormalizer, LengthNormalizer, Log2p1, read_gene_lengths

    check_output(out, [inp], what="-o/--out")
    if not prior_count > 0:  # log(0 + prior) is -inf or NaN for a zero count
        raise InputError(f"--prior-count must be positive (edgeR's default is 2), got {prior_count:g}")
    df = _read(inp, orientation)
    # every method here takes raw values (counts, or TPM/FPKM for log2p1): none can be negative, infinite
    # or beyond the plausible range of counts, and one such cell would shift every sample's TMM factor
    check_cells(df.to_numpy(), ValueType.COUNTS, df.index, df.columns, what=str(inp))
    if method in (Method.tpm, Method.fpkm):
        if gene_lengths is None:
            raise InputError("--method tpm/fpkm needs --gene-lengths hg19 (shipped) or --gene-lengths FILE")
        est = LengthNormalizer(read_gene_lengths(gene_lengths), unit=method.value)
    elif method == Method.log2p1:
        est = Log2p1()
    else:
        est = CPMNormalizer(log=method != Method.cpm, prior_count=prior_count, tmm=method == Method.tmm_logcpm)
    with step(f"normalize ({method.value})"):
        values = est.fit_transform(df)
    _write(pd.DataFrame(values, index=df.index, columns=df.columns), out, [inp])
    _say_missing(df, "left missing (library sizes use the observed values; `genexflow impute` fills them)")
    if isinstance(est, CPMNormalizer) and est.tmm:
        console.print(f"TMM reference sample: {df.index[est.ref_index_]}; factors "
                      f"{est.norm_factors_.min():.3f}-{est.norm_factors_.max():.3f}", markup=False)


def filter_genes(
    inp: Path = typer.Argument(..., help="Raw count matrix."),
    min_count: float = typer.Option(5, "--min-count", help="Low-count rule: counts below this are 'low'."),
    max_fraction_below: float = typer.Option(0.8, "--max-fraction-below",
                                             help="Drop genes that are low in more than this fraction of samples."),
    filter_by_expr: bool = typer.Option(False, "--filter-by-expr", help="Use edgeR::filterByExpr instead."),
    samples: Path | None = typer.Option(None, "--samples", help="Sample sheet (for --group-column)."),
    group_column: str | None = typer.Option(None, "--group-column", help="filterByExpr group column."),
    out: Path = typer.Option(..., "-o", "--out", help="Output matrix with the kept genes."),
    orientation: str = typer.Option("auto", help=ORIENT_HELP),
) -> None:
    """Drop low-expression genes (blueprint rule, or filterByExpr); kept genes stay in input order."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.preprocessing.filtering import FilterByExpr, LowCountFilter

    check_output(out, [inp, samples], what="-o/--out")
    df = _read(inp, orientation)
    if filter_by_expr:
        group = None
        if group_column:
            if samples is None:
                raise InputError("--group-column needs --samples SHEET")
            group = _sheet(samples, df.index, [group_column])[group_column].to_numpy()
        est = FilterByExpr().fit(df, group=group)
    else:
        est = LowCountFilter(min_count, max_fraction_below).fit(df)
    keep = est.get_support()
    _write(df.loc[:, keep], out, [inp, samples])
    console.print(f"kept {int(keep.sum())} of {len(keep)} genes", markup=False)


def impute(
    inp: Path = typer.Argument(..., help="Matrix with missing values (log scale)."),
    k: int = typer.Option(10, "--k", help="Neighbour genes."),
    rowmax: float = typer.Option(0.5, "--rowmax", help="Genes with more missing than this get per-sample means."),
    colmax: float = typer.Option(0.8, "--colmax", help="Samples with more missing than this are an error."),
    maxp: int = typer.Option(1500, "--maxp", help="Largest gene block without two-means splitting."),
    out: Path = typer.Option(..., "-o", "--out", help="Output matrix."),
    orientation: str = typer.Option("auto", help=ORIENT_HELP),
) -> None:
    """KNN imputation with impute::impute.knn semantics (neighbours are genes)."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.preprocessing.impute import KNNImputer

    check_output(out, [inp], what="-o/--out")
    df = _read(inp, orientation)
    n_missing = int(np.isnan(df.to_numpy(np.float64)).sum())
    with step(f"impute {n_missing} missing values (k={k})"):
        values = KNNImputer(k=k, rowmax=rowmax, colmax=colmax, maxp=maxp).fit_transform(df)
    _write(pd.DataFrame(values, index=df.index, columns=df.columns), out, [inp])
    _say_missing(df, "imputed")


def combat(
    inp: Path = typer.Argument(..., help="Normalized log-scale matrix without missing values."),
    samples: Path = typer.Option(..., "--samples", help="Sample sheet (sample_id + columns)."),
    batch_column: str = typer.Option(..., "--batch-column", help="Sample-sheet column with the batch."),
    covariates: str | None = typer.Option(None, "--covariates", help="Comma-separated columns to protect."),
    mean_only: bool = typer.Option(False, "--mean-only", help="Correct batch means only (sva mean.only)."),
    non_parametric: bool = typer.Option(False, "--non-parametric", help="Non-parametric empirical Bayes."),
    reference_batch: str | None = typer.Option(None, "--reference-batch", help="Batch left unchanged."),
    keep_constant: bool = typer.Option(False, "--keep-constant",
                                       help="Leave genes constant within a batch uncorrected (as sva) instead of failing."),
    report: Path | None = typer.Option(None, "--report", help="Also write the quality report to this folder."),
    biology_column: str | None = typer.Option(None, "--biology-column", help="Biology column for --report."),
    out: Path = typer.Option(..., "-o", "--out", help="Output matrix."),
    orientation: str = typer.Option("auto", help=ORIENT_HELP),
) -> None:
    """ComBat batch correction with sva::ComBat numerics (parametric / non-parametric / mean-only / reference)."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.preprocessing.combat import ComBat

    covs = _split(covariates)
    check_output(out, [inp, samples], what="-o/--out")
    df = _read(inp, orientation)
    _refuse_counts(df, inp)
    sheet = _sheet(samples, df.index, [batch_column, *covs] + ([biology_column] if biology_column else []))
    est = ComBat(parametric=not non_parametric, mean_only=mean_only, ref_batch=reference_batch,
                 constant_genes="passthrough" if keep_constant else "error")
    kind = "non-parametric" if non_parametric else "parametric"
    with step(f"ComBat ({kind}{', mean-only' if mean_only else ''}) over {sheet[batch_column].nunique()} batches"):
        values = est.fit_transform(df, batch=sheet[batch_column].to_numpy(),
                                   covariates=sheet[covs] if covs else None)
    if est.n_missing_:
        console.print(f"note: {est.n_missing_} missing values: fitted on the observed values (sva's missing-value "
                      "path); they stay missing in the output")
    result = pd.DataFrame(values, index=df.index, columns=df.columns)
    _write(result, out, [inp, samples])
    if report is not None:
        if not biology_column:
            raise InputError("--report needs --biology-column (the grouping that must be kept)")
        _report(df, result, sheet[batch_column], sheet[biology_column], report)


def combat_seq(
    inp: Path = typer.Argument(..., help="Raw integer count matrix."),
    samples: Path = typer.Option(..., "--samples", help="Sample sheet (sample_id + columns)."),
    batch_column: str = typer.Option(..., "--batch-column", help="Sample-sheet column with the batch."),
    covariates: str | None = typer.Option(None, "--covariates", help="Comma-separated columns (sva covar_mod)."),
    group_column: str | None = typer.Option(None, "--group-column", help="Biological condition (sva group)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output count matrix."),
    orientation: str = typer.Option("auto", help=ORIENT_HELP),
) -> None:
    """ComBat-seq (negative binomial) on raw counts, sva::ComBat_seq semantics; writes integer counts."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.preprocessing.combat_seq import ComBatSeq

    covs = _split(covariates)
    check_output(out, [inp, samples], what="-o/--out")
    df = _read(inp, orientation)
    sheet = _sheet(samples, df.index, [batch_column, *covs] + ([group_column] if group_column else []))
    with step(f"ComBat-seq over {sheet[batch_column].nunique()} batches, {df.shape[1]} genes"):
        values = ComBatSeq().fit_transform(
            df, batch=sheet[batch_column].to_numpy(), group=sheet[group_column].to_numpy() if group_column else None,
            covariates=sheet[covs] if covs else None)
    _write(pd.DataFrame(values.astype(np.int64), index=df.index, columns=df.columns), out, [inp, samples])


def combat_report(
    before: Path = typer.Argument(..., help="Matrix before correction."),
    after: Path = typer.Argument(..., help="Matrix after correction (same samples)."),
    samples: Path = typer.Option(..., "--samples", help="Sample sheet."),
    batch_column: str = typer.Option(..., "--batch-column", help="Batch column."),
    biology_column: str = typer.Option(..., "--biology-column", help="Biology column that must be kept."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (batch_correction.png + .json)."),
    n_pcs: int = typer.Option(10, "--n-pcs", help="Principal components for the silhouettes."),
    orientation: str = typer.Option("auto", help=ORIENT_HELP),
) -> None:
    """Quality report: PCA before/after coloured by batch and biology, batch and biology silhouettes."""

    a = _read(before, orientation)
    b = _read(after, orientation)
    if not a.index.equals(b.index):
        raise InputError("before and after matrices have different samples (or sample order)")
    sheet = _sheet(samples, a.index, [batch_column, biology_column])
    _report(a, b, sheet[batch_column], sheet[biology_column], out, n_pcs)


def _report(a, b, batch, biology, out: Path, n_pcs: int = 10) -> None:
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.preprocessing.report import batch_correction_report

    with step("quality report"):
        res = batch_correction_report(a, b, batch.to_numpy(), biology.to_numpy(), out, n_pcs=n_pcs)
    console.print(
        f"batch silhouette {res['before']['batch_silhouette']:.3f} -> {res['after']['batch_silhouette']:.3f}; "
        f"biology silhouette {res['before']['biology_silhouette']:.3f} -> {res['after']['biology_silhouette']:.3f}\n"
        f"{res['png']}\n{res['json']}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("normalize")(normalize)
    app.command("filter")(filter_genes)
    app.command("impute")(impute)
    app.command("combat")(combat)
    app.command("combat-seq")(combat_seq)
    app.command("combat-report")(combat_report)
