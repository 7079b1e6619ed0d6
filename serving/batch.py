"""Batch scoring of a cohort of any size: streamed chunks, concurrent requests, resumable output.

Sources are read chunk by chunk so memory stays constant in the cohort size:

* a cohort folder (``expression.parquet`` samples as rows + ``samples.csv``) or a bare ``.parquet`` matrix:
  Parquet record batches (memory is bounded by the file's row-group size; genexflow writes small ones);
* an ``.h5ad`` file in AnnData backed mode (rows sliced from disk).

Each chunk is aligned to the model's genes, sent to Triton (one client per worker thread, requests of at
most ``request_size`` rows) or run in-process with onnxruntime (``local``), and written as its own part file
``<output>.parts/part-<chunk>.parquet`` through a temporary name and an atomic rename. A rerun after an
interruption finds the finished parts (same input fingerprint, chunk size and model) and scores only the
rest, so no row is lost or duplicated; when all parts exist they are merged into ``output`` (streamed, row
order = input order) and the parts folder is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genexflow.errors import InputError
from genexflow.export import ServingArtifact, ort_session
from genexflow.io import atomic_output, check_output, parquet_labels, read_sample_sheet
from genexflow.serving.client import TritonClient
from genexflow.serving.inputs import build_inputs, output_frame

PARTS_SUFFIX = ".parts"


@dataclass
class Chunk:
    index: int
    frame: pd.DataFrame  # samples x genes (only model genes that the source has)
    samples: pd.DataFrame | None


@dataclass
class ScoreResult:
    output: Path
    n_rows: int
    n_chunks: int
    n_skipped_chunks: int
    model_versions: list[str]
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.n_rows / self.seconds if self.seconds else float("nan")


# ---------------------------------------------------------------------------------------------- sources
class CohortSource:
    """A chunked reader over a cohort file/folder; only the ``genes`` columns are read."""

    def __init__(self, path: str | Path, samples: str | Path | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such cohort (a folder with expression.parquet, a .parquet or .h5ad)")
        self.samples_path = Path(samples) if samples else None
        if self.path.is_dir():
            expr = self.path / "expression.parquet"
            if not expr.exists():
                raise InputError(f"{self.path}: cohort folder has no expression.parquet (streaming needs Parquet "
                                 "or .h5ad; convert with `genexflow data`)")
            self.kind, self.matrix = "parquet", expr
            if self.samples_path is None and (self.path / "samples.csv").exists():
                self.samples_path = self.path / "samples.csv"
        elif self.path.suffix == ".h5ad":
            self.kind, self.matrix = "h5ad", self.path
        elif self.path.suffix == ".parquet":
            self.kind, self.matrix = "parquet", self.path
        else:
            raise InputError(f"{self.path}: unsupported cohort format; use a cohort folder, .parquet or .h5ad")

    def fingerprint(self) -> dict:
        st = self.matrix.stat()
        fp = {"path": str(self.matrix.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if self.samples_path:
            s2 = self.samples_path.stat()
            fp["samples"] = [str(self.samples_path.resolve()), s2.st_size, s2.st_mtime_ns]
        return fp

    def _sheet(self) -> pd.DataFrame | None:
        if self.samples_path is None:
            return None

        return read_sample_sheet(self.samples_path)

    def _parquet(self, **kw: Any):
        try:
            return pq.ParquetFile(self.matrix, **kw)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{self.matrix}: not a readable Parquet file, truncated or corrupt ({exc}); "
                             "re-export or re-copy it (e.g. `genexflow data` or pandas to_parquet)") from exc

    def n_rows(self) -> int:
        if self.kind == "parquet":
            return self._parquet().metadata.num_rows
        # lazy: anndata is only needed for .h5ad files
        import anndata as ad

        a = ad.read_h5ad(self.matrix, backed="r")
        try:
            return a.n_obs
        finally:
            a.file.close()

    def chunks(self, genes: list[str], chunk_size: int, skip: set[int] | None = None) -> Iterator[Chunk]:
        """Yield chunks of ``chunk_size`` rows in file order; chunks in ``skip`` are not materialized."""
        skip = skip or set()
        if self.kind == "parquet":
            yield from self._parquet_chunks(genes, chunk_size, skip)
        else:
            yield from self._h5ad_chunks(genes, chunk_size, skip)

    def _parquet_chunks(self, genes: list[str], chunk_size: int, skip: set[int]) -> Iterator[Chunk]:
        # pre_buffer=False: decode one record batch at a time instead of prefetching whole row groups
        pf = self._parquet(pre_buffer=False)
        names = pf.schema_arrow.names
        label = parquet_labels(pf.schema_arrow)[0]
        wanted = set(genes)
        cols = [c for c in names if c in wanted and c != label]
        # decode straight into model gene order (absent genes stay NaN): no alignment copy downstream
        pos = pd.Index(genes).get_indexer(cols)
        if not cols:
            raise InputError(f"{self.matrix}: none of the model's {len(genes)} genes is a column (e.g. "
                             f"{', '.join(genes[:3])}); is the matrix samples-as-rows with matching gene IDs?")
        sheet = self._sheet()
        sheet_pos = None
        for i, rb in enumerate(pf.iter_batches(batch_size=chunk_size, columns=[label] + cols)):
            if i in skip:
                continue
            ids = pd.Index(rb.column(0).to_pylist(), dtype=object).astype(str)
            X = np.full((rb.num_rows, len(genes)), np.nan, np.float32)
            for j in range(len(cols)):
                col = rb.column(j + 1)
                X[:, pos[j]] = col.to_numpy(zero_copy_only=False) if not col.null_count else \
                    np.asarray(col.to_pandas(), np.float32)
            del rb
            frame = pd.DataFrame(X, index=ids, columns=genes, copy=False)
            samples = None
            if sheet is not None:
                if sheet_pos is None:
                    sheet_pos = sheet.index
                missing = ids.difference(sheet_pos)
                if len(missing):
                    raise InputError(f"{len(missing)} samples of the matrix are not in the sample sheet "
                                     f"{self.samples_path} (e.g. {', '.join(missing[:3])})")
                samples = sheet.loc[ids]
            yield Chunk(i, frame, samples)

    def _h5ad_chunks(self, genes: list[str], chunk_size: int, skip: set[int]) -> Iterator[Chunk]:
        # lazy: anndata is only needed for .h5ad files
        import anndata as ad

        a = ad.read_h5ad(self.matrix, backed="r")
        try:
            var = pd.Index(a.var_names.astype(str))
            pos = var.get_indexer(pd.Index(genes))
            present = np.flatnonzero(pos >= 0)
            if not len(present):
                raise InputError(f"{self.matrix}: none of the model's genes is in var_names")
            col_idx = pos[present]
            order = np.argsort(col_idx)  # h5py needs increasing indices
            sheet = self._sheet()
            obs = a.obs if sheet is None else None
            for i, lo in enumerate(range(0, a.n_obs, chunk_size)):
                if i in skip:
                    continue
                hi = min(lo + chunk_size, a.n_obs)
                block = a.X[lo:hi]
                block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
                X = np.full((hi - lo, len(genes)), np.nan, np.float32)
                X[:, present[order]] = block[:, col_idx[order]]
                ids = pd.Index(a.obs_names[lo:hi].astype(str))
                samples = obs.iloc[lo:hi] if obs is not None else sheet.loc[ids]
                yield Chunk(i, pd.DataFrame(X, index=ids, columns=genes, copy=False), samples)
        finally:
            a.file.close()


# ---------------------------------------------------------------------------------------------- runners
class LocalRunner:
    """In-process onnxruntime; one session shared by all worker threads (``run`` is thread-safe)."""

    def __init__(self, artifact: ServingArtifact, threads: int = 1, version_label: str | None = None) -> None:
        self.artifact = artifact
        # no memory arena: concurrent chunk runs would each grow it to their peak and never give it back
        self.session = ort_session(artifact.onnx_path, threads, arena=False)
        self.inputs = [i.name for i in artifact.inputs]
        self.outputs = [o.name for o in artifact.outputs]
        self.version = version_label or f"sha256:{artifact.sha256[:12]}"
        self.info = artifact.info

    def contract_key(self) -> str:
        return self.artifact.sha256

    def run(self, chunk: Chunk, max_missing_fraction: float) -> tuple[pd.DataFrame, str]:
        feeds, _ = build_inputs(self.info, chunk.frame, chunk.samples, self.inputs, max_missing_fraction)
        out = dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
        return output_frame(self.info, out, chunk.frame.index), self.version


class TritonRunner:
    """Requests to a Triton server; a client per worker thread, requests of at most ``request_size`` rows."""

    def __init__(self, url: str, model_name: str, protocol: str | None = None, request_size: int = 256,
                 timeout_s: float = 60.0, retries: int = 3) -> None:
        self.url, self.model_name, self.protocol = url, model_name, protocol
        self.request_size = request_size
        self.kw = {"timeout_s": timeout_s, "retries": retries}
        self._local = threading.local()
        probe = TritonClient(url, model_name, protocol, **self.kw)
        try:
            self.contract = probe.contract()
            cfg = probe.model_config()
            self.request_size = min(request_size, int(cfg.get("max_batch_size", request_size) or request_size))
        finally:
            probe.close()
        self.info = self.contract.info

    def contract_key(self) -> str:
        return f"{self.url}/{self.model_name}"

    def _client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = TritonClient(self.url, self.model_name, self.protocol, **self.kw)
        return c

    def run(self, chunk: Chunk, max_missing_fraction: float) -> tuple[pd.DataFrame, str]:
        client = self._client()
        c = client.contract()
        feeds, _ = build_inputs(c.info, chunk.frame, chunk.samples, c.inputs, max_missing_fraction)
        parts, versions = [], set()
        for lo in range(0, len(chunk.frame), self.request_size):
            out, used = client.predict_feeds({k: v[lo:lo + self.request_size] for k, v in feeds.items()})
            parts.append(out)
            versions.add(_version_label(used))
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return output_frame(c.info, merged, chunk.frame.index), ",".join(sorted(versions))


def _version_label(c: Any) -> str:
    reg = c.registry or {}
    if reg.get("registered_model"):
        return f"{reg['registered_model']}/{reg.get('version')}"
    return f"triton/{c.version}"


# ---------------------------------------------------------------------------------------------- scoring
def score_cohort(source: CohortSource | str | Path, output: str | Path, runner: LocalRunner | TritonRunner, *,
                 chunk_size: int = 1024, concurrency: int = 4, max_missing_fraction: float = 0.2,
                 on_progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
                 stop_after_chunks: int | None = None) -> ScoreResult:
    """Score ``source`` into ``output`` (Parquet: sample_id, prediction, per-class probabilities,
    model_version), resuming from finished parts of an interrupted run.

    Parameters
    ----------
    chunk_size : int
        Rows per chunk (and per part file); memory grows with ``chunk_size * concurrency``.
    concurrency : int
        Chunks in flight at once (worker threads).
    stop_after_chunks : int, optional
        Stop (as if interrupted) after this many chunks were written in this call; for tests and drills.
    """
    if chunk_size < 1 or concurrency < 1:
        raise InputError("chunk-size and concurrency must be >= 1")
    src = source if isinstance(source, CohortSource) else CohortSource(source)
    output = check_output(output, [src.path, src.samples_path], what="output")
    parts = output.with_name(output.name + PARTS_SUFFIX)
    manifest = {"source": src.fingerprint(), "chunk_size": chunk_size, "model": runner.contract_key(),
                "genes": len(runner.info.input_genes)}
    done = _prepare_parts(parts, manifest)
    total = src.n_rows()
    n_chunks = -(-total // chunk_size) if total else 0
    if on_total:
        on_total(total)
    if on_progress and done:
        on_progress(sum(_part_rows(parts, i) for i in done))
    t0 = time.perf_counter()
    written = 0
    stop = threading.Event()
    versions: set[str] = set()
    errors: list[BaseException] = []

    def work(chunk: Chunk) -> int:
        if stop.is_set():
            return 0
        df, version = runner.run(chunk, max_missing_fraction)
        df.insert(len(df.columns), "model_version", version)
        versions.update(version.split(","))
        _write_part(parts, chunk.index, df)
        return len(df)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="score")
    pending: set[Future] = set()
    try:
        for chunk in src.chunks(runner.info.input_genes, chunk_size, skip=done):
            while len(pending) >= concurrency:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                written += _collect(finished, on_progress, errors)
                if errors or (stop_after_chunks is not None and written >= stop_after_chunks):
                    break
            if errors or (stop_after_chunks is not None and written >= stop_after_chunks):
                stop.set()
                break
            pending.add(pool.submit(work, chunk))
        finished, pending = wait(pending)
        written += _collect(finished, on_progress, errors)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if errors:
        raise errors[0]
    finished_parts = _done_parts(parts)
    complete = len(finished_parts) == n_chunks
    n_rows = 0
    if complete:
        n_rows = _merge(parts, output, n_chunks)
        shutil.rmtree(parts, ignore_errors=True)
    return ScoreResult(output if complete else parts, n_rows, n_chunks, len(done), sorted(versions),
                       time.perf_counter() - t0)


def _collect(finished: set[Future], on_progress: Callable[[int], None] | None, errors: list) -> int:
    n = 0
    for f in finished:
        exc = f.exception()
        if exc is not None:
            errors.append(exc)
            continue
        rows = f.result()
        if rows:
            n += 1
            if on_progress:
                on_progress(rows)
    return n


def _prepare_parts(parts: Path, manifest: dict) -> set[int]:
    mpath = parts / "manifest.json"
    if parts.exists() and mpath.exists():
        old = json.loads(mpath.read_text())
        if old != json.loads(json.dumps(manifest)):
            raise InputError(f"{parts} holds parts of a different run (input, chunk size or model changed); "
                             "delete it or write to another output")
        for tmp in parts.glob("*.tmp"):
            tmp.unlink()  # a part that was being written when the run stopped
        return _done_parts(parts)
    parts.mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(manifest, indent=1))
    return set()


def _done_parts(parts: Path) -> set[int]:
    return {int(p.stem.split("-")[1]) for p in parts.glob("part-*.parquet")}


def _part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:07d}.parquet"


def _part_rows(parts: Path, index: int) -> int:
    return pq.ParquetFile(_part_path(parts, index)).metadata.num_rows


def _write_part(parts: Path, index: int, df: pd.DataFrame) -> None:
    final = _part_path(parts, index)
    tmp = final.with_suffix(".tmp")
    df.to_parquet(tmp, index=True)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(final)  # atomic: a part is either complete or absent


def _merge(parts: Path, output: Path, n_chunks: int) -> int:
    n = 0
    with atomic_output(output) as tmp:
        writer = None
        try:
            for i in range(n_chunks):
                table = pq.read_table(_part_path(parts, i))
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                n += table.num_rows
        finally:
            if writer is not None:
                writer.close()
    return n
