"""Data components: ingest + validate a cohort, split a cohort into shards, merge scored shards."""

# no `from __future__ import annotations`: KFP reads the real annotation objects
# lazy: each component imports inside its body, because KFP ships the function body alone to the container
from typing import NamedTuple

from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from genexflow.components._base import component


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
    ingest_config: dict = {},  # noqa: B006
) -> NamedTuple("IngestOutputs", [("n_samples", int), ("n_genes", int), ("n_quarantined", int)]):
    """Read, harmonize gene IDs and validate a raw cohort (Great Expectations); rejected samples, genes and
    files go to ``<quarantine_root>/<run_id>/`` with the reason. ``value_type="auto"`` guesses counts or
    log-expression from the values; ``ingest_config`` overrides ``IngestConfig`` fields (probe_map,
    keep_unmapped, min_samples, ...)."""
    import shutil
    from pathlib import Path

    from genexflow.components._steps import infer_value_type, kfp_numbers, log_metrics
    from genexflow.ingest import IngestConfig, ingest

    task_dir = Path(cohort.path).parent
    res = ingest(expression_uri, samples_uri or None, value_type=infer_value_type(value_type, expression_uri, samples_uri),
                 label_column=label_column or None, allowed_labels=allowed_labels or None,
                 batch_column=batch_column or None, covariates=list(covariates), out_dir=cohort.path,
                 quarantine_root=quarantine_root or str(task_dir / "quarantine"), run_id=run_id or None,
                 config=IngestConfig(**{"report_dir": str(task_dir / "validation"), **kfp_numbers(ingest_config)}))
    shutil.copyfile(res.report_html, report.path)
    quarantined = res.summary()["quarantined"]
    log_metrics(summary, {"n_samples": res.cohort.n_samples, "n_genes": res.cohort.n_genes,
                          "mapping_rate": res.mapping_rate, "warnings": len(res.warnings),
                          **{f"quarantined.{k}": v for k, v in quarantined.items()}})
    cohort.metadata.update({"dvc_md5": res.dvc_md5, "run_id": res.run_id, "value_type": res.cohort.value_type.value})
    return (res.cohort.n_samples, res.cohort.n_genes, int(quarantined.get("sample", 0)))


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
