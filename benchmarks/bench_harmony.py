"""Harmony speed and agreement: genexflow (numpy) vs harmonypy 2.x (C++), same input, same seed.

Input: a simulated embedding of 5,000 samples x 50 PCs, 10 batches, 8 cell types (``--n``, ``--dims``,
``--batches`` to change it). Both run with their defaults (theta 2, sigma 0.1, nclust min(n/30, 100),
lambda estimated with alpha 0.2, at most 10 iterations). Times are the median of ``--repeat`` runs
after one warm-up; harmonypy runs on one thread (``ncores=1``) and, for reference, on all cores;
genexflow with one BLAS thread. Agreement: correlation of the corrected embeddings, batch/type
silhouettes and mean LISI (harmonypy's ``compute_lisi``).

Prints and writes ``benchmarks/results/harmony.md``::

    nice -n 10 python benchmarks/bench_harmony.py             # ~1 min
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
from bench_preprocessing import timed  # shared warm-up + median timer
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from genexflow.preprocessing.harmony import run_harmony

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "harmony.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dims", type=int, default=50)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--types", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import harmonypy

    rng = np.random.default_rng(0)
    t = rng.integers(0, args.types, args.n)
    b = rng.integers(0, args.batches, args.n)
    Z = (rng.normal(0, 3, (args.types, args.dims))[t] + rng.normal(0, 2, (args.batches, args.dims))[b]
         + rng.normal(0, 1, (args.n, args.dims)))
    meta = pd.DataFrame({"batch": b.astype(str), "type": t.astype(str)})
    codes = np.unique(meta["batch"], return_inverse=True)[1][:, None]

    with threadpool_limits(1):
        t_ours, res = timed(lambda: run_harmony(Z, codes, [args.batches], random_state=0), args.repeat)
    t_hp1, hp = timed(lambda: harmonypy.run_harmony(Z, meta, "batch", verbose=False, random_state=0, ncores=1),
                      args.repeat)
    t_hpn, _ = timed(lambda: harmonypy.run_harmony(Z, meta, "batch", verbose=False, random_state=0), args.repeat)
    ref = np.asarray(hp.Z_corr)
    ours = res.Z_corr
    corr = float(np.corrcoef(ours.ravel(), ref.ravel())[0, 1])
    sub = rng.choice(args.n, size=min(args.n, 3000), replace=False)  # silhouettes are quadratic in n

    def sil(M, lab):
        return silhouette_score(M[sub], lab[sub])

    lisi = {k: harmonypy.compute_lisi(M, meta, ["batch", "type"]).mean(axis=0) for k, M in
            (("raw", Z), ("harmonypy", ref), ("genexflow", ours))}
    rows = [f"| {k} | {sil(M, b):.4f} | {sil(M, t):.4f} | {lisi[k][0]:.3f} | {lisi[k][1]:.3f} |"
            for k, M in (("raw", Z), ("harmonypy", ref), ("genexflow", ours))]
    lines = [
        "# Harmony: genexflow vs harmonypy", "",
        f"`nice -n 10 python benchmarks/bench_harmony.py` — {args.n} samples x {args.dims} PCs, {args.batches} "
        f"batches, {args.types} cell types (simulated); median of {args.repeat} runs after a warm-up. "
        f"harmonypy {harmonypy.__version__}; machine {platform.machine()}, {os.cpu_count()} cores (shared, busy).",
        "",
        "| implementation | seconds | ratio genexflow / peer |", "|---|---|---|",
        f"| genexflow (numpy, 1 BLAS thread) | {t_ours:.2f} | 1.00 |",
        f"| harmonypy (C++, ncores=1) | {t_hp1:.2f} | {t_ours / t_hp1:.2f} |",
        f"| harmonypy (C++, default threads) | {t_hpn:.2f} | {t_ours / t_hpn:.2f} |",
        "",
        f"genexflow: {res.n_iter} iterations (converged: {res.converged}); harmonypy: "
        f"{len(hp.objective_harmony) - 1} iterations.",
        "",
        f"Agreement: correlation of the corrected embeddings {corr:.5f}.", "",
        "| embedding | batch silhouette | type silhouette | batch LISI | type LISI |", "|---|---|---|---|---|",
        *rows, "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
