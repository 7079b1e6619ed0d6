"""Preprocessing benchmarks: genexflow vs inmoose and scanpy, timed in the same run, printed as ratios.

Run on demand (never in the test suite)::

    .venv/bin/python benchmarks/bench_preprocessing.py            # all quick benchmarks
    .venv/bin/python benchmarks/bench_preprocessing.py --repeat 5 --large-peers --np-peers

Peers come from the optional extra ``bench`` (``pip install -c constraints.txt -e '.[bench]'``:
inmoose, scanpy); without them the peer columns say "not installed". Shared data (``../shared/data``,
or ``GENEXFLOW_SHARED_DATA``) provides bladderbatch and its sva reference; without it those rows are
skipped.

Rows:
  1. parametric ComBat on bladderbatch (57 x 22,283; batch + cancer covariate): time and parity vs sva
  2. parametric ComBat on simulated 1,000 x 20,000 (peers only with --large-peers: they take minutes)
  3. non-parametric ComBat on full bladderbatch (target < 20 s; peers 130-160 s, only with --np-peers)
  4. ComBat-seq on marioni (10 x 5,088 counts, batch = run, covariate tissue) vs inmoose pycombat_seq
Each timing is the median of ``--repeat`` runs after one warm-up (the slow rows run once).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GENEXFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


def timed(fn, repeat: int, warmup: bool = True) -> tuple[float, object]:
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def peer(name: str):
    try:
        if name == "inmoose":
            import inmoose.pycombat as mod
        else:
            import scanpy as mod
        return mod
    except ImportError:
        return None


def combat_ours(X, batch, cov, parametric=True):
    from genexflow.preprocessing import ComBat

    return ComBat(parametric=parametric).fit_transform(X, batch=batch, covariates=cov)


def combat_inmoose(X, batch, cov, parametric=True):
    inm = peer("inmoose")
    covar = None if cov is None else cov.reset_index(drop=True)
    return np.asarray(inm.pycombat_norm(X.T, batch, covar_mod=covar, par_prior=parametric)).T


def combat_scanpy(X, batch, cov):
    import anndata as ad

    sc = peer("scanpy")
    obs = pd.DataFrame({"batch": pd.Categorical(np.asarray(batch).astype(str))})
    covs = None
    if cov is not None:
        for c in cov.columns:
            obs[c] = pd.Categorical(cov[c].astype(str).to_numpy())
        covs = list(cov.columns)
    obs.index = obs.index.astype(str)
    a = ad.AnnData(X=X.copy(), obs=obs)
    return np.asarray(sc.pp.combat(a, key="batch", covariates=covs, inplace=False))


class Table:
    def __init__(self):
        self.rows = []

    def add(self, *cells):
        self.rows.append([str(c) for c in cells])

    def print(self, header):
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(len(header))]
        line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
        print(line)
        print("-" * len(line))
        for r in self.rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def fmt_t(t):
    return "-" if t is None else f"{t:.2f} s"


def fmt_ratio(peer_t, ours_t):
    return "-" if peer_t is None else f"{peer_t / ours_t:.1f}x"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--large-peers", action="store_true", help="also time the peers on 1000 x 20000")
    ap.add_argument("--np-peers", action="store_true", help="also time the peers on non-parametric ComBat")
    args = ap.parse_args(argv)
    missing = [p for p in ("inmoose", "scanpy") if peer(p) is None]
    if missing:
        print(f"NOTE: peers not installed: {', '.join(missing)} -> install the optional extra 'bench' "
              "(pip install -c constraints.txt -e '.[bench]'); their columns show '-'.\n")
    times = Table()
    parity = Table()
    bb = SHARED / "bladderbatch"

    # 1. bladderbatch parametric
    if (bb / "expression.parquet").exists():
        X = pd.read_parquet(bb / "expression.parquet").set_index("sample_id")
        ref = pd.read_parquet(bb / "reference_combat.parquet").set_index("sample_id").loc[X.index, X.columns]
        s = pd.read_csv(bb / "samples.csv").set_index("sample_id").loc[X.index]
        Xb = X.to_numpy(np.float64)
        batch = s["batch"].to_numpy()
        cov = s[["cancer"]]
        t_ours, out = timed(lambda: combat_ours(Xb, batch, cov), args.repeat)
        parity.add("ComBat parametric, bladderbatch", "genexflow", f"{np.abs(out - ref.to_numpy()).max():.2e}")
        t_inm = t_sc = None
        if peer("inmoose"):
            t_inm, o = timed(lambda: combat_inmoose(Xb, batch, cov), args.repeat)
            parity.add("", "inmoose pycombat_norm", f"{np.abs(o - ref.to_numpy()).max():.2e}")
        if peer("scanpy"):
            t_sc, o = timed(lambda: combat_scanpy(Xb, batch, cov), args.repeat)
            parity.add("", "scanpy pp.combat", f"{np.abs(o - ref.to_numpy()).max():.2e}")
        times.add("ComBat parametric, bladderbatch 57x22283", fmt_t(t_ours), fmt_t(t_inm), fmt_ratio(t_inm, t_ours),
                  fmt_t(t_sc), fmt_ratio(t_sc, t_ours))
    else:
        print(f"NOTE: {bb} not found; bladderbatch rows skipped")

    # 2. simulated 1000 x 20000
    rng = np.random.default_rng(0)
    n, G = 1000, 20000
    bsim = np.repeat(np.arange(8), n // 8)
    grp = pd.DataFrame({"group": rng.choice(["a", "b", "c"], n)})
    Xs = (rng.normal(8, 1, G) + rng.normal(0, 0.5, (8, G))[bsim]
          + rng.normal(size=(n, G)) * rng.uniform(0.7, 1.4, (8, G))[bsim])
    t_ours, _ = timed(lambda: combat_ours(Xs, bsim, grp), 1, warmup=False)
    t_inm = t_sc = None
    if args.large_peers and peer("inmoose"):
        t_inm, _ = timed(lambda: combat_inmoose(Xs, bsim, grp), 1, warmup=False)
    if args.large_peers and peer("scanpy"):
        t_sc, _ = timed(lambda: combat_scanpy(Xs, bsim, grp), 1, warmup=False)
    times.add("ComBat parametric, simulated 1000x20000", fmt_t(t_ours), fmt_t(t_inm), fmt_ratio(t_inm, t_ours),
              fmt_t(t_sc), fmt_ratio(t_sc, t_ours))
    Xs = None  # free 160 MB before the next rows

    # 3. non-parametric on full bladderbatch
    if (bb / "expression.parquet").exists():
        t_ours, _ = timed(lambda: combat_ours(Xb, batch, cov, parametric=False), 1, warmup=False)
        t_inm = None
        if args.np_peers and peer("inmoose"):
            t_inm, _ = timed(lambda: combat_inmoose(Xb, batch, cov, parametric=False), 1, warmup=False)
        target = "OK (< 20 s)" if t_ours < 20 else "SLOW (target < 20 s)"
        times.add(f"ComBat non-parametric, bladderbatch [{target}]", fmt_t(t_ours), fmt_t(t_inm),
                  fmt_ratio(t_inm, t_ours), "-", "-")

    # 4. ComBat-seq on marioni
    mar = SHARED / "marioni_noiseq"
    if (mar / "counts.parquet").exists():
        from genexflow.preprocessing import ComBatSeq

        C = pd.read_parquet(mar / "counts.parquet").set_index("sample_id")
        ms = pd.read_csv(mar / "samples.csv").set_index("sample_id").loc[C.index]
        Cn = C.to_numpy(np.float64)
        t_ours, ours = timed(lambda: ComBatSeq().fit_transform(Cn, batch=ms["run"].to_numpy(),
                                                               covariates=ms[["tissue"]]), args.repeat)
        t_inm = None
        if peer("inmoose"):
            inm = peer("inmoose")
            t_inm, o = timed(lambda: np.asarray(inm.pycombat_seq(
                Cn.T, ms["run"].to_numpy(), covar_mod=ms[["tissue"]].reset_index(drop=True))).T, 1)
            diff = np.abs(o - ours)
            parity.add("ComBat-seq, marioni (no R reference here)", "genexflow vs inmoose",
                       f"max {diff.max():.0f}, {int((diff > 0).sum())}/{diff.size} counts differ")
        times.add("ComBat-seq, marioni 10x5088", fmt_t(t_ours), fmt_t(t_inm), fmt_ratio(t_inm, t_ours), "-", "-")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} at the end (shared machine: absolute times "
          f"scale with load, ratios are same-run), numpy {np.__version__}; median of {args.repeat} after warm-up "
          "(single runs for the large rows)\n")
    times.print(["benchmark", "genexflow", "inmoose", "inmoose/genexflow", "scanpy", "scanpy/genexflow"])
    print()
    parity.print(["parity vs sva::ComBat reference (max abs diff)", "implementation", "value"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
