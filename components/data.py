"""Data components: ingest + validate a cohort, split a cohort into shards, merge scored shards."""

# no `from __future__ import annotations`: KFP reads the real annotation objects
from typing import NamedTuple

from genexflow.components._base import component
from kfp.dsl import HTML, Dataset, Input, Metrics, Output


@component
def ingest_validate(
    expression_uri: str,
    samples_uri: str,
    label_column: str,
    cohort: Output[Dataset],
    report: Output[HTML],
    summary: Output[Metrics],
    value_type: str = "auto",
    batch_column: str = "",
    covariates: list = [],  # noqa: B006 - KFP parameters take literal defaults
    allowed_labels: list = [],  # noqa: B006
    quarantine_root: str = "",
    run_id: str = "",
) -> NamedTuple("IngestOutputs", [("n_samples", int), ("n_genes", int), ("n_quarantined", int)]):
    """Read, harmonize gene IDs and validate a raw cohort; rejected samples/files go to the quarantine."""
    from genexflow.components._steps import log_metrics

    from genexflow.ingest import ingest

    res = ingest(expression_uri, samples_uri, value_type=value_type, label_column=label_column or None,
                 allowed_labels=allowed_labels or None, batch_column=batch_column or None,
                 covariates=list(covariates), out_dir=cohort.path, quarantine_root=quarantine_root or None,
                 run_id=run_id or None)
    res.write_report(report.path)
    log_metrics(summary, res.summary())
    return (res.cohort.n_samples, res.cohort.n_genes, res.n_quarantined)


@component
def shard_cohort(cohort: Input[Dataset], n_shards: int, shards: Output[Dataset]) -> list:
    """Split a cohort into at most ``n_shards`` shards plus a manifest of every sample; returns one
    ``{"index", "name", "n_samples"}`` item per shard for a ParallelFor."""
    from genexflow.components._steps import shard_step

    return shard_step(cohort.path, n_shards, shards.path)


@component
def merge_predictions(
    parts: Input[list[Dataset]], shards: Input[Dataset], predictions: Output[Dataset], summary: Output[Metrics]
) -> int:
    """Concatenate scored shards into one table in manifest order; fails if a sample is missing or scored
    twice."""
    from genexflow.components._steps import merge_step

    n = merge_step([p.path for p in parts], shards.path, predictions.path)
    summary.log_metric("n_predictions", n)
    summary.log_metric("n_shards", len(parts))
    return n
