"""The batch-inference pipeline: score a large cohort through Triton in parallel shards.

::

    ingest + validate (harmonize gene IDs; no label needed) -> split into shards + manifest
      -> ParallelFor(shards, parallelism=N): score one shard through Triton
      -> Collected -> merge into one predictions table (checked against the manifest: nothing lost,
         nothing duplicated)

The parallelism bound is a compile-time setting (KFP's ``ParallelFor(parallelism=...)``), default 4:
enough to keep Triton's dynamic batcher busy without stacking shard pods on a small cluster.
"""

# no `from __future__ import annotations`: KFP reads the real annotation objects
from typing import Any

from kfp import dsl

from genexflow.components.data import ingest_validate, merge_predictions, shard_cohort
from genexflow.components.serving import batch_infer
from genexflow.pipelines.kubernetes import Platform

NAME = "genexflow-batch-inference"
DEFAULT_PARALLELISM = 4


def build(platform: Platform | None = None, parallelism: int = DEFAULT_PARALLELISM) -> Any:
    """Build the batch-inference pipeline with at most ``parallelism`` shards scored at once."""
    platform = platform or Platform()

    @dsl.pipeline(name=NAME, description="Score a cohort through Triton in parallel shards and merge the "
                  "predictions.")
    def batch_inference_pipeline(
        expression_uri: str,
        samples_uri: str,
        triton_url: str,
        serving_name: str = "genexflow_classifier",
        value_type: str = "auto",
        n_shards: int = 8,
        quarantine_root: str = "/data/quarantine",
        ingest_config: dict = {},  # noqa: B006
    ):
        ing = ingest_validate(expression_uri=expression_uri, samples_uri=samples_uri, label_column="",
                              value_type=value_type, quarantine_root=quarantine_root,
                              run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, ingest_config=ingest_config)
        platform(ing, "data").set_display_name("ingest + validate").set_caching_options(False)
        sh = shard_cohort(cohort=ing.outputs["cohort"], n_shards=n_shards)
        platform(sh, "data").set_display_name("split into shards").set_caching_options(True)
        with dsl.ParallelFor(sh.outputs["Output"], parallelism=parallelism, name="shards") as shard:
            bi = batch_infer(shards=sh.outputs["shards"], shard=shard, triton_url=triton_url,
                             serving_name=serving_name)
            # the served model changes under a fixed URL: never reuse old scores
            platform(bi, "data", "triton").set_display_name("score shard (Triton)").set_caching_options(False)
        mg = merge_predictions(parts=dsl.Collected(bi.outputs["predictions"]), shards=sh.outputs["shards"])
        platform(mg, "data").set_display_name("merge predictions").set_caching_options(False)

    return batch_inference_pipeline


#: The portable batch-inference pipeline.
batch_inference_pipeline = build()
