"""``genexflow simulate`` and ``genexflow datasets``: demo cohorts and simulated cohorts."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from genexflow import datasets
from genexflow.cli._common import console, step
from genexflow.simulate import simulate_cohort

datasets_app = typer.Typer(help="Shipped demo cohorts (golub, geuvadis_sex, bladderbatch).", no_args_is_help=True)


@datasets_app.command("list")
def datasets_list() -> None:
    """List the shipped cohorts with shape, labels and license."""
    table = Table("name", "samples", "genes", "value type", "sample columns", "license")
    for name in datasets.LOADERS:
        c = datasets.load(name)
        table.add_row(name, str(c.n_samples), str(c.n_genes), c.value_type.value,
                      ", ".join(c.samples.columns), c.meta["license"])
    console.print(table)


@datasets_app.command("export")
def datasets_export(
    name: str = typer.Argument(..., help="golub, geuvadis_sex or bladderbatch"),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (expression.parquet + samples.csv)."),
) -> None:
    """Write a shipped cohort as a cohort folder (samples as rows, first column sample_id)."""
    with step(f"export {name}"):
        cohort = datasets.load(name)
        cohort.write(out)
    console.print(f"{cohort} -> {out}", markup=False)


def simulate(
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: expression.parquet, samples.csv, truth.json, pathways.gmt"),
    n_samples: int = typer.Option(300, help="Number of samples."),
    n_genes: int = typer.Option(2000, help="Number of genes."),
    n_pathways: int = typer.Option(40, help="KEGG pathways used as expression programs."),
    n_informative: int = typer.Option(4, help="Pathways that drive label and target (first two interact)."),
    n_classes: int = typer.Option(3, help="Classes in the label column."),
    n_batches: int = typer.Option(3, help="Batches."),
    batch_location: float = typer.Option(0.4, help="SD of per-gene log-scale batch shifts."),
    batch_scale: float = typer.Option(0.15, help="SD of log per-gene batch scale factors."),
    signal: float = typer.Option(1.0, help="Pathway program strength (log scale)."),
    library_size: float = typer.Option(2e6, help="Median library size."),
    dropout: float = typer.Option(0.0, help="Extra-zero rate for low counts."),
    missing_rate: float = typer.Option(0.0, help="Fraction of entries set to NaN."),
    value_type: str = typer.Option("counts", help="counts or log-expression."),
    seed: int = typer.Option(0, help="Random seed (same seed, same cohort)."),
    batch_confounding: float = typer.Option(0.0, help="Share of samples moved to their class's batch "
                                                       "(0 = batch independent of the label, 1 = confounded)."),
) -> None:
    """Simulate a realistic cohort (NB counts, pathway programs, batches, covariates) with its ground truth."""
    with step(f"simulate {n_samples} x {n_genes}"):
        cohort, truth = simulate_cohort(
            n_samples=n_samples, n_genes=n_genes, n_pathways=n_pathways, n_informative=n_informative,
            n_classes=n_classes, n_batches=n_batches, batch_location=batch_location, batch_scale=batch_scale,
            signal=signal, library_size=library_size, dropout=dropout, missing_rate=missing_rate,
            value_type=value_type, seed=seed, batch_confounding=batch_confounding,
        )
    with step(f"write {out}"):
        cohort.write(out)
        (out / "truth.json").write_text(json.dumps(truth.to_dict(), indent=1))
        truth.write_gmt(out / "pathways.gmt")
    console.print(f"{cohort}\ninformative pathways: {', '.join(truth.informative_pathways)}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")
    app.command("simulate")(simulate)
