"""``genexflow ingest``: harmonize gene IDs, validate with Great Expectations, quarantine, version with DVC."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from genexflow.cli._common import console, step
from genexflow.errors import InputError
from genexflow.ingest import IngestConfig
from genexflow.ingest import ingest as run_ingest
from genexflow.ingest.ingest import default_name


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _ranges(items: list[str]) -> dict:
    out = {}
    for item in items:
        try:
            name, bounds = item.split("=", 1)
            lo, hi = bounds.split(":", 1)
            out[name.strip()] = (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)
        except ValueError:
            raise InputError(f"--covariate-range {item!r}: use NAME=MIN:MAX (either end may be empty)") from None
    return out


def ingest(
    expression: Path = typer.Argument(..., help="Expression matrix (.csv/.tsv/.parquet, either orientation), "
                                                "or a cohort folder / .h5ad."),
    samples: Path = typer.Option(None, "--samples", "-s", help="Sample sheet (CSV/TSV, first column sample_id)."),
    value_type: str = typer.Option(None, "--value-type", help="counts, tpm, fpkm, log-expression or auto "
                                                              "(read off the numbers, docs/ingest.md; required unless EXPRESSION is a cohort)."),
    label_column: str = typer.Option(None, "--label-column", help="Sample-sheet column with the class label."),
    allowed_labels: str = typer.Option(None, "--allowed-labels", help="Comma-separated allowed label values; "
                                                                      "other samples are quarantined."),
    batch_column: str = typer.Option(None, "--batch-column", help="Sample-sheet column with the batch."),
    covariates: str = typer.Option(None, "--covariates", help="Comma-separated covariate columns, e.g. age,sex."),
    covariate_range: list[str] = typer.Option(None, "--covariate-range",
                                              help="Allowed range of a numeric covariate, NAME=MIN:MAX "
                                                   "(repeatable; default age=0:130)."),
    orientation: str = typer.Option("auto", "--orientation", help="auto, samples (rows are samples) or genes."),
    out: Path = typer.Option(None, "--out", "-o", help="Validated cohort folder [default: data/validated/NAME]."),
    name: str = typer.Option(None, "--name", help="Cohort name [default: the input file's name]."),
    gene_id_type: str = typer.Option("auto", "--gene-id-type", help="auto, ensembl, entrez, symbol or probe."),
    probe_map: Path = typer.Option(None, "--probe-map", help="Probe -> symbol table (a 'symbol' column and a "
                                                             "probe-ID column), e.g. golub/genes.csv."),
    duplicates: str = typer.Option(None, "--duplicates", help="Merge genes that map to one symbol by sum, mean "
                                                              "or max-variance [default: sum; max-variance for log]."),
    min_mapping_rate: float = typer.Option(0.5, "--min-mapping-rate", help="Fail below this fraction of mapped IDs."),
    keep_unmapped: bool = typer.Option(False, "--keep-unmapped", help="Keep unmapped IDs instead of quarantining."),
    mad_k: float = typer.Option(5.0, "--mad-k", help="Robust bounds: median +- k * MAD."),
    outliers: str = typer.Option("flag", "--outliers", help="Samples outside the robust bounds: flag or quarantine."),
    min_samples: int = typer.Option(3, "--min-samples", help="Fail with fewer samples left."),
    max_quarantine_fraction: float = typer.Option(0.25, "--max-quarantine-fraction",
                                                  help="Fail when more samples than this are quarantined."),
    quarantine_root: Path = typer.Option(Path("data/quarantine"), "--quarantine-root",
                                         help="Quarantine folder (one sub-folder per run)."),
    report_dir: Path = typer.Option(None, "--report-dir", help="Report folder [default: data/reports/NAME]."),
    run_id: str = typer.Option(None, "--run-id", help="Run ID [default: NAME-<hash of inputs and settings>]."),
    data_docs: bool = typer.Option(True, "--data-docs/--no-data-docs", help="Also write GX data docs."),
    dvc: str = typer.Option("auto", "--dvc", help="auto (dvc add data/ inside a DVC repo), add (require it), off."),
    dvc_push: bool = typer.Option(False, "--dvc-push", help="dvc push to the default remote afterwards."),
    as_json: bool = typer.Option(False, "--json", help="Print the result summary as JSON on stdout."),
) -> None:
    """Validate a cohort and write it, harmonized, to data/validated/NAME.

    Reads the matrix and sample sheet, maps gene IDs to HGNC symbols (Ensembl, Entrez, aliases, Excel-mangled dates, probes with --probe-map), runs Great Expectations suites on the sample sheet and on per-sample / per-gene summaries, moves failing samples and genes to the quarantine with the reason, writes an HTML + JSON report and records the DVC md5.

    Exits 2 with the failing expectation, the offending samples or genes and their count when a critical check fails.
    """
    cohort_name = name or default_name(expression)
    out = out or Path("data") / "validated" / cohort_name
    ranges = _ranges(covariate_range) if covariate_range else {"age": (0, 130)}
    cfg = IngestConfig(
        orientation=orientation, gene_id_type=gene_id_type, probe_map=probe_map, duplicates=duplicates,
        min_mapping_rate=min_mapping_rate, keep_unmapped=keep_unmapped, mad_k=mad_k, outliers=outliers,
        min_samples=min_samples, max_quarantine_fraction=max_quarantine_fraction, covariate_ranges=ranges,
        data_docs=data_docs, dvc=dvc, dvc_push=dvc_push, name=name, report_dir=report_dir,
    )
    with step(f"ingest {expression.name}"):
        result = run_ingest(
            expression, samples, value_type=value_type, label_column=label_column,
            allowed_labels=_split(allowed_labels) or None, batch_column=batch_column,
            covariates=_split(covariates), out_dir=out, quarantine_root=quarantine_root, run_id=run_id, config=cfg,
        )
    summary = result.summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return

    table = Table(show_header=False, box=None)
    rate = "n/a (probes kept)" if result.mapping_rate is None else f"{result.mapping_rate:.1%}"
    rows = [
        ("validated", f"{result.cohort.n_samples} samples x {result.cohort.n_genes} genes -> {result.out_dir}"),
        ("value type", f"{summary['value_type']} ({summary['value_type_source']})"),
        ("mapping rate", rate),
        ("quarantined", ", ".join(f"{v} {k}s" for k, v in summary["quarantined"].items()) or "nothing"),
        ("quarantine", str(result.quarantine_dir or "-")),
        ("report", str(result.report_html)),
        ("dvc md5", result.dvc_md5),
        ("run id", result.run_id),
    ]
    for k, v in rows:
        table.add_row(f"[bold]{k}[/]", v)
    console.print(table)

    for line in summary["quarantine_reasons"][:10]:
        console.print(f"[yellow]quarantined:[/] {escape(line)}", highlight=False)
    for w in result.warnings[:10]:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    if len(result.warnings) > 10:
        console.print(f"[yellow]… {len(result.warnings) - 10} more warnings in {escape(str(result.report_html))}[/]")


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
