"""edgeR and impute against the real Bioconductor packages (edgeR 3.40.2, impute 1.72.3) through ``Rscript``.

Inputs are generated fresh from a new seed each run (``GENEXFLOW_TEST_SEED`` replays one) plus shipped
cohorts (Marioni counts, golub with values knocked out). One ``Rscript`` call per package. Skipped with a
message when R or the package is not installed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from _rscript import fresh_seed, run_r

from genexflow.preprocessing import FilterByExpr, impute_knn
from genexflow.preprocessing.normalize import calc_norm_factors, cpm

MEASURED: dict[str, float] = {}  # max errors of the last run, per comparison (read by reports)


def _counts(rng, n=None, G=600):
    """NB counts with library sizes over two orders of magnitude, many zeros, a few all-zero genes."""
    n = n or int(rng.integers(4, 16))
    lib = rng.uniform(0.05, 5, n)
    mu = rng.gamma(0.4, 100, G) * lib[:, None] * np.exp(rng.normal(0, 0.5, (n, G)))
    X = rng.negative_binomial(4, 4 / (4 + mu)).astype(float)
    X[:, :3] = 0
    return X


def test_edger_normalization_cpm_and_filter_match_edger(shared_data, tmp_path):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    marioni = pd.read_parquet(shared_data / "marioni_noiseq" / "counts.parquet").set_index("sample_id")
    cases = {"gen1": _counts(rng), "gen2": _counts(rng, n=24), "marioni": marioni.to_numpy(np.float64)}
    groups = {k: rng.integers(0, 3, len(X)).astype(float) for k, X in cases.items()}
    inputs, script = {}, []
    for k, X in cases.items():
        inputs |= {f"X_{k}": X, f"g_{k}": groups[k]}
        script.append(f"""
        y <- t(rd("X_{k}")); g <- rd("g_{k}"); ls <- colSums(y) * runif(ncol(y), 0.8, 1.2)
        wr("ls_{k}", ls)
        wr("tmm_{k}", calcNormFactors(y)); wr("uq_{k}", calcNormFactors(y, method = "upperquartile"))
        wr("rle_{k}", calcNormFactors(y, method = "RLE")); wr("uq5_{k}", calcNormFactors(y, method = "upperquartile", p = 0.5))
        wr("tmm_ls_{k}", calcNormFactors(y, lib.size = ls)); wr("tmm_nw_{k}", calcNormFactors(y, doWeighting = FALSE))
        nf <- calcNormFactors(y)
        wr("cpm_{k}", t(cpm(y))); wr("lcpm2_{k}", t(cpm(y, log = TRUE)))
        wr("lcpm05_{k}", t(cpm(y, log = TRUE, prior.count = 0.5, lib.size = colSums(y) * nf)))
        wr("fbe_{k}", filterByExpr(y)); wr("fbe_g_{k}", filterByExpr(y, group = g))
        wr("fbe_ls_{k}", filterByExpr(y, group = g, lib.size = colSums(y) * nf, min.count = 5))
        """)
    out = run_r("set.seed(1)\n" + "".join(script), inputs, tmp_path, packages=("edgeR",))
    errors = {}

    def close(name, ours, ref, tol=1e-12):
        err = float(np.max(np.abs(np.asarray(ours, float).ravel() - ref.ravel()) / np.maximum(1, np.abs(ref.ravel()))))
        errors[name] = MEASURED[name] = err
        assert err <= tol, f"seed {seed}, {name}: max relative error {err}"

    for k, X in cases.items():
        ls = out[f"ls_{k}"].ravel()
        close(f"{k} TMM", calc_norm_factors(X), out[f"tmm_{k}"])
        close(f"{k} upperquartile", calc_norm_factors(X, method="upperquartile"), out[f"uq_{k}"])
        close(f"{k} upperquartile p=0.5", calc_norm_factors(X, method="upperquartile", p=0.5), out[f"uq5_{k}"])
        close(f"{k} RLE", calc_norm_factors(X, method="RLE"), out[f"rle_{k}"])
        close(f"{k} TMM lib.size", calc_norm_factors(X, lib_size=ls), out[f"tmm_ls_{k}"])
        close(f"{k} TMM unweighted", calc_norm_factors(X, do_weighting=False), out[f"tmm_nw_{k}"])
        nf = calc_norm_factors(X)
        close(f"{k} cpm", cpm(X), out[f"cpm_{k}"])
        close(f"{k} log cpm", cpm(X, log=True), out[f"lcpm2_{k}"])
        close(f"{k} log cpm prior 0.5 TMM", cpm(X, lib_size=X.sum(1) * nf, log=True, prior_count=0.5),
              out[f"lcpm05_{k}"])
        for name, kw, fkw in (("fbe", {}, {}), ("fbe_g", {"group": groups[k]}, {}),
                              ("fbe_ls", {"group": groups[k], "lib_size": X.sum(1) * nf}, {"min_count": 5})):
            keep = FilterByExpr(**fkw).fit(X, **kw).keep_
            assert np.array_equal(keep, out[f"{name}_{k}"].ravel() == 1), f"seed {seed}, {k} {name}"
    # the methods differ from each other on these data (so each comparison tests its own method)
    assert np.abs(out["tmm_gen1"] - out["rle_gen1"]).max() > 1e-3
    assert len(errors) == 27


def test_impute_knn_matches_impute(shared_data, tmp_path):
    """impute.knn: generated modules and golub with values knocked out (some genes above rowmax, so they
    get sample means; small maxp so the two-means splitting and R's RNG run)."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    golub = pd.read_parquet(shared_data / "golub" / "expression.parquet").set_index("sample_id")
    G = golub.to_numpy(np.float64)[:, np.sort(rng.choice(golub.shape[1], 300, replace=False))]
    n, g = 20, 250
    modules = rng.normal(size=(n, 5)) @ rng.normal(size=(5, g)) + rng.normal(0, 0.3, (n, g))
    cases = {}
    for name, X, frac in (("golub", G, 0.05), ("modules", modules, 0.1)):
        X = X.copy()
        X[rng.random(X.shape) < frac] = np.nan
        X[:int(0.6 * len(X)), :2] = np.nan  # two genes above rowmax = 0.5
        cases[name] = X
    params = [dict(k=10, maxp=1500), dict(k=5, maxp=60), dict(k=3, maxp=100, rowmax=0.3)]
    script = []
    for name in cases:
        for i, p in enumerate(params):
            args = ", ".join(f"{k} = {v}" for k, v in p.items())
            script.append(f'wr("{name}_{i}", t(quiet(impute.knn(t(rd("{name}")), {args})$data)))\n')
    out = run_r("".join(script), cases, tmp_path, packages=("impute",))
    for name, X in cases.items():
        for i, p in enumerate(params):
            ours = impute_knn(X, **p)
            err = MEASURED[f"impute.knn {name} {p}"] = float(np.abs(ours - out[f"{name}_{i}"]).max())
            assert err <= 1e-10, f"seed {seed}, {name}, {p}: max |ours - impute.knn| = {err}"
    # the parameters matter on these inputs (else one comparison would stand for all)
    assert np.abs(out["golub_0"] - out["golub_1"]).max() > 1e-3
