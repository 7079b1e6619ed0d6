"""Benchmark: full-matrix gene drift vs Evidently.

Target (issue 10): drift of 20,000 genes x 5,000 new samples against the reference in under 30 s, printed
beside Evidently's time on a 500-gene slice of the same data, as ratios.

Data: negative-binomial counts (log-normal gene means, log-normal library sizes, mean-dependent
dispersion) for a reference and a new cohort of the same size; the new cohort has a location shift on 5 %
of genes so both tools have something to find. The reference profile is built once (timed separately:
that happens at training time); then each side is warmed up and timed ``--repeat`` times (median).

    .venv/bin/python benchmarks/bench_monitoring.py                  # the issue's sizes
    .venv/bin/python benchmarks/bench_monitoring.py --quick          # 2,000 genes x 1,000 samples, 100-gene slice
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings

import numpy as np
import pandas as pd


def nb_counts(n: int, log_mu: np.ndarray, phi: np.ndarray, rng: np.random.Generator, shift: np.ndarray | None = None,
              rows: int = 500) -> np.ndarray:
    """(n, G) int32 gamma-Poisson counts, generated in row blocks to bound memory."""
    G = len(log_mu)
    out = np.empty((n, G), np.int32)
    base = log_mu if shift is None else log_mu + shift
    for s in range(0, n, rows):
        k = min(rows, n - s)
        lib = np.exp(rng.normal(0, 0.3, k)).astype(np.float32)
        mu = np.exp(base).astype(np.float32)[None, :] * lib[:, None]
        lam = rng.gamma(1.0 / phi[None, :], mu * phi[None, :]).astype(np.float32)
        out[s:s + k] = rng.poisson(lam)
    return out


def make_data(n_genes: int, n_ref: int, n_new: int, seed: int = 0):
    from genexflow.cohort import Cohort

    rng = np.random.default_rng(seed)
    log_mu = rng.normal(2.5, 1.8, n_genes)
    phi = (0.05 + 1.0 / np.sqrt(np.exp(log_mu) + 1.0)).astype(np.float32)
    shift = np.zeros(n_genes)
    drifted = rng.choice(n_genes, n_genes // 20, replace=False)
    shift[drifted] = rng.choice([-1, 1], len(drifted)) * 0.7
    genes = [f"G{i:05d}" for i in range(n_genes)]

    def cohort(n: int, name: str, sh: np.ndarray | None) -> Cohort:
        X = nb_counts(n, log_mu, phi, rng, sh)
        samples = pd.DataFrame({"batch": "b1"}, index=pd.Index([f"{name}{i:05d}" for i in range(n)], name="sample_id"))
        return Cohort(X, genes, samples, "counts", name)

    return cohort(n_ref, "ref", None), cohort(n_new, "new", shift), set(np.asarray(genes)[drifted])


def timed(fn, repeat: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def evidently_drift(ref: pd.DataFrame, cur: pd.DataFrame) -> float:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=list(ref.columns))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snap = Report([DataDriftPreset()]).run(current_data=Dataset.from_pandas(cur, data_definition=definition),
                                               reference_data=Dataset.from_pandas(ref, data_definition=definition))
    share = next(m["value"]["share"] for m in snap.dict()["metrics"] if "DriftedColumnsCount" in m["metric_name"])
    return float(share)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genes", type=int, default=20_000)
    ap.add_argument("--samples", type=int, default=5_000, help="new samples (and reference samples)")
    ap.add_argument("--evidently-genes", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--evidently-repeat", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2,000 genes x 1,000 samples, 100-gene Evidently slice")
    a = ap.parse_args()
    if a.quick:
        a.genes, a.samples, a.evidently_genes = 2_000, 1_000, 100

    from genexflow.monitoring.detectors import GeneDriftDetector
    from genexflow.profile import build_reference_profile

    t0 = time.perf_counter()
    ref, new, planted = make_data(a.genes, a.samples, a.samples)
    print(f"data: reference {ref.shape} and new {new.shape} counts generated in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    prof = build_reference_profile(ref, gene_sets=None)
    t_profile = time.perf_counter() - t0
    print(f"reference profile (training time, once): {t_profile:.1f} s")

    det = GeneDriftDetector().fit(prof)
    det.score(new.subset(genes=np.arange(min(500, a.genes))))  # warm-up: imports, torch, allocator
    t_full, runs, rep = timed(lambda: det.score(new), a.repeat)
    found = set(rep.table.index[rep.table["drifted"]])
    recall = len(found & planted) / len(planted)
    fdp = len(found - planted) / max(len(found), 1)
    print(f"genexflow full matrix: {a.genes} genes x {a.samples} samples: median {t_full:.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in runs)}); recall {recall:.2f}, false discoveries {fdp:.3f}")

    # Same slice for both tools: the first evidently_genes genes, log2 CPM (Evidently gets a matrix).
    k = a.evidently_genes
    sl = np.arange(k)
    slice_new = new.subset(genes=sl)
    t_slice, _, _ = timed(lambda: det.score(slice_new), a.repeat)

    def logcpm(c):
        X = c.X.astype(np.float64)
        return pd.DataFrame(np.log2(X[:, sl] / X.sum(1, keepdims=True) * 1e6 + 1), columns=[str(g) for g in c.genes[sl]])

    R, C = logcpm(ref), logcpm(new)
    evidently_drift(R.iloc[:, :5], C.iloc[:, :5])  # warm-up
    t_ev, ev_runs, share = timed(lambda: evidently_drift(R, C), a.evidently_repeat)
    print(f"Evidently DataDriftPreset on {k} genes: median {t_ev:.1f} s (runs "
          f"{', '.join(f'{t:.1f}' for t in ev_runs)}); drifted share {share:.3f}")

    per_gene_ours = t_full / a.genes
    per_gene_ev = t_ev / k
    rows = [
        ("genexflow, all genes", a.genes, t_full, per_gene_ours * 1e3, 1.0),
        (f"genexflow, {k}-gene slice", k, t_slice, t_slice / k * 1e3, (t_slice / k) / per_gene_ours),
        (f"Evidently, {k}-gene slice", k, t_ev, per_gene_ev * 1e3, per_gene_ev / per_gene_ours),
    ]
    print()
    print(f"{'tool':<28}{'genes':>8}{'seconds':>10}{'ms/gene':>10}{'x ours/gene':>13}")
    for name, g, t, ms, r in rows:
        print(f"{name:<28}{g:>8}{t:>10.2f}{ms:>10.3f}{r:>13.1f}")
    print()
    print(f"ratio Evidently({k} genes) / genexflow({a.genes} genes), wall time: {t_ev / t_full:.1f}x")
    print(f"ratio Evidently / genexflow on the same {k}-gene slice: {t_ev / t_slice:.0f}x")
    verdict = "PASS" if t_full < 30 else "FAIL"
    print(f"target: {a.genes} x {a.samples} in < 30 s -> {t_full:.1f} s {verdict}")


if __name__ == "__main__":
    main()
