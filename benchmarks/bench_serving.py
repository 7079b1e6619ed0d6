"""Benchmark: serving through a real local Triton vs in-process onnxruntime, and streamed batch scoring.

Part 1 (online): throughput (rows/s, requests/s) and p50/p99 latency for in-process onnxruntime, Triton
HTTP and Triton gRPC at batch 1 and 64, concurrency 1 and 8 (one synchronous client per thread). Ratios
are against onnxruntime in the same cell; the dynamic-batching line compares Triton batch-1 throughput at
concurrency 8 with concurrency 1 and reads Triton's own counters (requests vs model executions).

Part 2 (batch): ``genexflow score`` of a simulated 100,000 x 5,000 counts cohort (Parquet, row groups of
2,048) in a child process, in-process onnxruntime (``--local``) and through Triton; prints samples/s and
the child's peak RSS (target < 1.5 GB).

Run on demand (never in the test suite)::

    .venv/bin/python benchmarks/bench_serving.py [--seconds 3] [--genes 2000] [--rows 100000]
        [--score-genes 5000] [--skip-online] [--skip-batch] [--artifact DIR]

The default model is the toy serving graph (fill, log-CPM, batch shift, scale, linear head + softmax) at
``--genes`` genes; ``--artifact`` benchmarks an exported bundle instead.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

VENV_BIN = Path(sys.executable).parent


def _feeds(art, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    from genexflow.export import example_inputs

    names = [i.name for i in art.inputs]
    return example_inputs(art.info, batch, use_covariates="covariates" in names, use_batch="batch_index" in names,
                          seed=seed)


def _run_cell(call, concurrency: int, seconds: float, warmup: float = 0.5) -> tuple[float, list[float], int]:
    """Run ``call(thread_state)`` in ``concurrency`` threads; returns (measured seconds, latencies of the
    measured window, all requests including warm-up)."""
    stop = threading.Event()
    measuring = threading.Event()
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    total = [0] * concurrency

    def worker(k: int) -> None:
        state: dict = {}
        while not stop.is_set():
            t0 = time.perf_counter()
            call(state)
            total[k] += 1
            if measuring.is_set():
                lat[k].append(time.perf_counter() - t0)
        if "close" in state:
            state["close"]()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    measuring.set()
    t0 = time.perf_counter()
    time.sleep(seconds)
    measuring.clear()
    elapsed = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    return elapsed, [x for xs in lat for x in xs], sum(total)


def _metrics(url: str, model: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()  # noqa: S310 - local server
    out = {}
    for key in ("nv_inference_request_success", "nv_inference_exec_count", "nv_inference_count"):
        m = re.search(rf'^{key}{{model="{model}",version="\d+"}} (\S+)$', text, re.M)
        out[key] = float(m.group(1)) if m else float("nan")
    return out


def online(art, seconds: float) -> None:
    from genexflow.export import ort_session
    from genexflow.serving.client import TritonClient
    from genexflow.serving.repository import TritonConfig, deploy
    from genexflow.serving.triton_server import TritonServer

    sess = ort_session(art.onnx_path, threads=1)
    out_names = [o.name for o in art.outputs]
    repo = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    server = TritonServer(repo, models=[]).start()
    try:
        from genexflow.serving.repository import ModelRepository

        mrepo = ModelRepository(repo, config=TritonConfig(max_batch_size=256, preferred_batch_sizes=[16, 64],
                                                          max_queue_delay_us=500, intra_op_threads=1))
        deploy(art, mrepo, "bench", server.url)
        rows = []
        for batch in (1, 64):
            feeds = _feeds(art, batch)
            for conc in (1, 8):
                def ort_call(state, feeds=feeds):
                    sess.run(out_names, feeds)

                def triton_call(state, feeds=feeds, proto="http"):
                    c = state.get("c")
                    if c is None:
                        url = server.url if proto == "http" else f"grpc://{server.grpc_url}"
                        c = state["c"] = TritonClient(url, "bench", timeout_s=60)
                        state["close"] = c.close
                    c.infer(feeds)

                cell = {}
                for path, fn in (("onnxruntime", ort_call), ("triton-http", triton_call),
                                 ("triton-grpc", lambda s, f=feeds: triton_call(s, f, "grpc"))):
                    before = _metrics(server.metrics_url, "bench") if path != "onnxruntime" else {}
                    el, lat, total = _run_cell(fn, conc, seconds)
                    after = _metrics(server.metrics_url, "bench") if path != "onnxruntime" else {}
                    reqs = len(lat)
                    execs = after.get("nv_inference_exec_count", np.nan) - before.get("nv_inference_exec_count", np.nan)
                    cell[path] = {"req_s": reqs / el, "rows_s": reqs * batch / el,
                                  "p50": statistics.median(lat) * 1e3 if lat else np.nan,
                                  "p99": float(np.percentile(lat, 99)) * 1e3 if lat else np.nan,
                                  "req_per_exec": total / execs if execs and np.isfinite(execs) else np.nan}
                rows.append((batch, conc, cell))
        print(f"\nOnline inference, {len(art.info.input_genes)} genes, {seconds:.0f} s per cell, sync client per thread")
        print(f"{'path':<12} {'batch':>5} {'conc':>4} {'rows/s':>10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'vs ORT':>7} {'req/exec':>8}")
        for batch, conc, cell in rows:
            base = cell["onnxruntime"]["rows_s"]
            for path, m in cell.items():
                per_exec = m["req_per_exec"]
                print(f"{path:<12} {batch:>5} {conc:>4} {m['rows_s']:>10,.0f} {m['req_s']:>8,.0f} {m['p50']:>8.2f} "
                      f"{m['p99']:>8.2f} {m['rows_s'] / base:>6.2f}x {per_exec:>8.2f}")
        for proto in ("triton-http", "triton-grpc"):
            c1 = next(c for b, k, c in rows if b == 1 and k == 1)[proto]["rows_s"]
            c8 = next(c for b, k, c in rows if b == 1 and k == 8)[proto]["rows_s"]
            print(f"dynamic batching, {proto}, batch-1 requests: concurrency 8 / concurrency 1 = {c8 / c1:.2f}x "
                  f"throughput")
    finally:
        server.stop()


def _write_cohort(folder: Path, info, rows: int, genes: int, seed: int = 0) -> Path:
    """Simulated counts cohort written in row groups (never the whole matrix in memory)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    schema = pa.schema([("sample_id", pa.string())] + [(g, pa.float32()) for g in info.input_genes[:genes]])
    step = 2048
    with pq.ParquetWriter(folder / "expression.parquet", schema, compression="zstd") as w:
        for lo in range(0, rows, step):
            n = min(step, rows - lo)
            X = rng.poisson(20.0, size=(n, genes)).astype(np.float32)
            cols = [pa.array([f"S{i:08d}" for i in range(lo, lo + n)])] + [pa.array(X[:, j]) for j in range(genes)]
            w.write_table(pa.Table.from_arrays(cols, schema=schema))
    ids = [f"S{i:08d}" for i in range(rows)]
    pd.DataFrame({"age": rng.normal(50, 10, rows).round(1), "sex": rng.choice(["F", "M"], rows),
                  "batch": rng.choice(info.batch_levels, rows)}, index=pd.Index(ids, name="sample_id")
                 ).to_csv(folder / "samples.csv")
    return folder


def _score_child(args: list[str]) -> tuple[float, float, str]:
    """Run ``genexflow score`` in a child; return (seconds, peak RSS GB, last stderr line)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen([str(VENV_BIN / "genexflow"), "score", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    p = psutil.Process(proc.pid)
    peak = 0
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr))
    reader.start()
    while proc.poll() is None:
        try:
            peak = max(peak, p.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    reader.join()
    if proc.returncode:
        raise RuntimeError("".join(err_lines[-5:]))
    return time.perf_counter() - t0, peak / 2**30, " ".join("".join(err_lines[-2:]).split())


def batch(rows: int, genes: int, chunk: int, concurrency: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        _batch(work, rows, genes, chunk, concurrency)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the cohort is GBs


def _batch(work: Path, rows: int, genes: int, chunk: int, concurrency: int) -> None:
    from genexflow.serving.repository import deploy
    from genexflow.serving.toy import make_toy_artifact
    from genexflow.serving.triton_server import TritonServer

    art = make_toy_artifact(work / "art", n_genes=genes, n_classes=4, n_batches=3)
    t0 = time.perf_counter()
    cohort = _write_cohort(work / "cohort", art.info, rows, genes)
    gb = (cohort / "expression.parquet").stat().st_size / 2**30
    print(f"\nBatch scoring {rows:,} x {genes:,} (Parquet {gb:.2f} GB on disk, written in "
          f"{time.perf_counter() - t0:.0f} s), chunk {chunk}, concurrency {concurrency}")
    results = {}
    s, rss, _ = _score_child([str(cohort), "-o", str(work / "local.parquet"), "--local", "--artifact",
                              str(art.folder), "--chunk-size", str(chunk), "--concurrency", str(concurrency)])
    results["in-process onnxruntime (--local)"] = (s, rss)
    repo = work / "models"
    repo.mkdir()
    server = TritonServer(repo, models=[]).start()
    try:
        deploy(art, repo, "bench", server.url)
        s, rss, _ = _score_child([str(cohort), "-o", str(work / "triton.parquet"), "--url",
                                  f"grpc://{server.grpc_url}", "--model-name", "bench", "--chunk-size", str(chunk),
                                  "--concurrency", str(concurrency)])
        results["Triton gRPC (--url)"] = (s, rss)
    finally:
        server.stop()
    base = results["in-process onnxruntime (--local)"][0]
    print(f"{'path':<34} {'seconds':>8} {'samples/s':>10} {'peak RSS GB':>12} {'time vs local':>14}")
    for name, (s, rss) in results.items():
        flag = "OK" if rss < 1.5 else "OVER 1.5 GB"
        print(f"{name:<34} {s:>8.1f} {rows / s:>10,.0f} {rss:>12.2f} {s / base:>13.2f}x  {flag}")
    import pandas as pd

    a = pd.read_parquet(work / "local.parquet", columns=["p_class_0"])
    b = pd.read_parquet(work / "triton.parquet", columns=["p_class_0"])
    print(f"rows: local {len(a):,}, triton {len(b):,}; max |diff| {np.abs(a.to_numpy() - b.to_numpy()).max():.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per online cell")
    ap.add_argument("--genes", type=int, default=2000, help="genes of the toy model for the online part")
    ap.add_argument("--artifact", type=Path, help="exported artifact folder to benchmark online instead")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--score-genes", type=int, default=5000)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--skip-online", action="store_true")
    ap.add_argument("--skip-batch", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared: expect noise)")
    if not a.skip_online:
        from genexflow.export import load_artifact
        from genexflow.serving.toy import make_toy_artifact

        art = load_artifact(a.artifact) if a.artifact else make_toy_artifact(
            Path(tempfile.mkdtemp(prefix="bench-art-")), n_genes=a.genes, n_classes=4)
        online(art, a.seconds)
    if not a.skip_batch:
        batch(a.rows, a.score_genes, a.chunk_size, a.concurrency)


if __name__ == "__main__":
    main()
