"""Validated ingestion: gene-ID harmonization, Great Expectations checks, quarantine, reports, DVC lineage.

The entry point is :func:`ingest` (also ``genexflow ingest``); see ``docs/ingest.md``.
"""

from genexflow.ingest.gene_ids import GeneMapping, collapse_duplicates, map_gene_ids
from genexflow.ingest.ingest import IngestConfig, IngestResult, ingest
from genexflow.ingest.lineage import dvc_md5
from genexflow.ingest.quarantine import QuarantineRecord, read_reasons

__all__ = [
    "GeneMapping", "IngestConfig", "IngestResult", "QuarantineRecord", "collapse_duplicates", "dvc_md5", "ingest",
    "map_gene_ids", "read_reasons",
]
