"""Benchmark: validated ingestion of a simulated 1,000 x 20,000 counts cohort vs a naive per-gene GX suite.

genexflow validates summary tables (one row per sample, one row per gene) instead of one GX column per
gene. The peer is the naive approach: a wide Great Expectations suite with two expectations per gene
column (not null, non-negative) on a 1,000-gene slice of the same matrix; its time is also extrapolated
linearly to 20,000 genes (GX evaluates columns independently, so cost grows with the column count).

Run on demand (never in the test suite)::

    .venv/bin/python benchmarks/bench_ingest.py [--samples 1000] [--genes 20000] [--slice 1000] [--repeat 3]

Target (issue 4): the full ingest of 1,000 x 20,000 in under 30 s on the 2-core CI machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def naive_gx(frame, repeat: int) -> list[float]:
    """Two expectations per gene column on the wide matrix, validated in one GX call."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    frame = frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    batch_def = ctx.data_sources.add_pandas("naive").add_dataframe_asset("wide").add_batch_definition_whole_dataframe("all")
    expectations = []
    for col in frame.columns:
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=col))
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0))
    suite = gx.ExpectationSuite(name="naive", expectations=expectations)

    def once():
        batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format="SUMMARY")

    return _timed(once, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--genes", type=int, default=20000)
    ap.add_argument("--slice", type=int, default=1000, help="genes in the naive per-gene GX suite")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-repeat", type=int, default=1)
    args = ap.parse_args()

    from genexflow.ingest import IngestConfig, ingest
    from genexflow.simulate import simulate_cohort

    t0 = time.perf_counter()
    cohort, _ = simulate_cohort(n_samples=args.samples, n_genes=args.genes, seed=0)
    print(f"simulated {cohort} in {time.perf_counter() - t0:.1f} s")
    # The simulator names genes beyond the shipped KEGG symbols SIMG00001...; they are kept so all
    # 20,000 genes are validated (keep_unmapped) instead of being quarantined as unmapped.
    cfg = IngestConfig(keep_unmapped=True, dvc="off", data_docs=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm, _ = simulate_cohort(n_samples=40, n_genes=300, seed=1)
        ingest(warm, label_column="label", batch_column="batch", covariates=["age", "sex"], out_dir=tmp / "warm",
               quarantine_root=tmp / "q", config=cfg)  # warm-up: GX import, map loading

        runs = iter(range(10**6))

        def once():
            res = ingest(cohort, label_column="label", batch_column="batch", covariates=["age", "sex"],
                         out_dir=tmp / f"v{next(runs)}", quarantine_root=tmp / "q", config=cfg)
            assert res.cohort.shape == cohort.shape

        ours = _timed(once, args.repeat)

    n_slice = min(args.slice, args.genes)
    naive_gx(cohort.frame().iloc[:40, :20], 1)  # warm-up
    naive = naive_gx(cohort.frame().iloc[:, :n_slice], args.naive_repeat)

    t_ours, t_naive = statistics.median(ours), statistics.median(naive)
    t_naive_full = t_naive * args.genes / n_slice
    print()
    print(f"{'method':52s} {'genes':>7s} {'median s':>9s} {'runs':>5s} {'ratio naive/genexflow':>22s}")
    print(f"{'genexflow ingest (summary-table GX, full pipeline)':52s} {args.genes:7d} {t_ours:9.2f} "
          f"{len(ours):5d} {'1.0':>22s}")
    print(f"{'naive per-gene GX suite (2 expectations/gene)':52s} {n_slice:7d} {t_naive:9.2f} "
          f"{len(naive):5d} {t_naive / t_ours:22.2f}")
    print(f"{'naive per-gene GX, extrapolated linearly':52s} {args.genes:7d} {t_naive_full:9.1f} "
          f"{'-':>5s} {t_naive_full / t_ours:22.1f}")
    print(f"\ntarget: genexflow < 30 s for {args.samples} x {args.genes}: "
          f"{'met' if t_ours < 30 else 'NOT met'} ({t_ours:.1f} s; all runs: {', '.join(f'{t:.1f}' for t in ours)})")


if __name__ == "__main__":
    main()
