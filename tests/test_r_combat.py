"""ComBat against the real ``sva::ComBat`` (sva 3.46) run through ``Rscript``: every mode, with and without
missing values, on designs generated fresh from a new seed each run (``GENEXFLOW_TEST_SEED`` replays one)
and on a shipped cohort with values knocked out. Skipped with a message when R or sva is not installed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from _rscript import fresh_seed, run_r

from genexflow.preprocessing import ComBat

MODES = {  # name: (genexflow kwargs, sva arguments)
    "parametric": ({}, ""),
    "nonparametric": ({"parametric": False}, ", par.prior = FALSE"),
    "mean_only": ({"mean_only": True}, ", mean.only = TRUE"),
    "np_mean_only": ({"parametric": False, "mean_only": True}, ", par.prior = FALSE, mean.only = TRUE"),
    "ref": ({"ref_batch": 1}, ", ref.batch = 1"),
    "np_ref": ({"parametric": False, "ref_batch": 1}, ", par.prior = FALSE, ref.batch = 1"),
}


def _case(rng, G=120, na_fraction=0.0, single=False):
    """Unbalanced batches (3-4 of 3-9 samples), a two-level covariate and a numeric one, batch shifts
    and scales; ``single`` adds a one-sample batch (sva then requires mean-only)."""
    nb = int(rng.integers(3, 5))
    sizes = list(rng.integers(3, 10, size=nb)) + ([1] if single else [])
    batch = np.repeat(np.arange(1, len(sizes) + 1), sizes)
    n = len(batch)
    grp = rng.permutation(np.resize([0.0, 1.0], n))
    age = rng.normal(50, 10, n).round(1)
    X = (rng.normal(7, 2, G) + np.outer(grp, rng.normal(0, 1, G)) + np.outer(age - 50, rng.normal(0, 0.02, G))
         + rng.normal(0, 0.8, (len(sizes), G))[batch - 1]
         + rng.normal(size=(n, G)) * rng.uniform(0.5, 1.5, (len(sizes), G))[batch - 1])
    return _knock_out(X, batch, na_fraction, rng), batch, np.column_stack([grp, age])


def _knock_out(X, batch, fraction, rng):
    """Remove ``fraction`` of the values at random, keeping the first two samples of each batch (so every
    gene has >= 2 observed values per batch; with fewer, sva's variance is NA and it stops)."""
    X = X.copy()
    out = rng.random(X.shape) < fraction
    for b in np.unique(batch):
        out[np.flatnonzero(batch == b)[:2]] = False
    X[out] = np.nan
    return X


def _compare(cases, tmp_path, seed):
    inputs, script = {}, []
    for name, (X, batch, mod, modes) in cases.items():
        inputs |= {f"X_{name}": X, f"b_{name}": batch, f"m_{name}": mod}
        script.append(f'dat <- t(rd("X_{name}")); b <- rd("b_{name}"); m <- rd("m_{name}")\n'
                      f'mod <- model.matrix(~ factor(m[, 1]) + m[, 2])\n')
        for mode in modes:
            script.append(f'wr("{name}__{mode}", t(quiet(ComBat(dat, b, mod{MODES[mode][1]}))))\n')
    out = run_r("".join(script), inputs, tmp_path, packages=("sva",))
    errors = {}
    for name, (X, batch, mod, modes) in cases.items():
        cov = pd.DataFrame({"grp": mod[:, 0].astype(int).astype(str), "age": mod[:, 1]})
        for mode in modes:
            ours = ComBat(**MODES[mode][0]).fit_transform(X, batch=batch, covariates=cov)
            ref = out[f"{name}__{mode}"]
            assert np.array_equal(np.isnan(ours), np.isnan(ref)), f"seed {seed}, {name}/{mode}: NaN positions"
            err = float(np.nanmax(np.abs(ours - ref)))
            assert err <= 1e-8, f"seed {seed}, {name}/{mode}: max |ours - sva| = {err}"
            errors[f"{name}/{mode}"] = err
    return errors


def test_all_modes_with_and_without_missing_values_match_sva(tmp_path):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    cases = {
        "complete": (*_case(rng), list(MODES)),
        "missing": (*_case(rng, na_fraction=0.08), list(MODES)),
        # a one-sample batch: sva switches to mean-only, genexflow requires mean_only=True
        "single": (*_case(rng, single=True), ["mean_only", "np_mean_only"]),
        "single_missing": (*_case(rng, na_fraction=0.05, single=True), ["mean_only"]),
    }
    errors = _compare(cases, tmp_path, seed)
    assert len(errors) == 15
    # covariates are used: dropping them changes the result (so the comparison covers the design)
    X, batch, mod = cases["complete"][:3]
    assert np.abs(ComBat().fit_transform(X, batch=batch)
                  - ComBat().fit_transform(X, batch=batch, covariates=pd.DataFrame({"a": mod[:, 1]}))).max() > 1e-3


def test_shipped_cohort_with_knocked_out_values_matches_sva(shared_data, tmp_path):
    """bladderbatch (5 batches, cancer status), 400 probes, 5% of the values removed at random."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    d = shared_data / "bladderbatch"
    X = pd.read_parquet(d / "expression.parquet").set_index("sample_id")
    s = pd.read_csv(d / "samples.csv").set_index("sample_id").loc[X.index]
    cols = np.sort(rng.choice(X.shape[1], 400, replace=False))
    Xn = _knock_out(X.to_numpy(np.float64)[:, cols], s["batch"].to_numpy(), 0.05, rng)
    inputs = {"X": Xn, "b": s["batch"].to_numpy(float), "c": s["cancer"].tolist()}
    out = run_r("""
        dat <- t(rd("X")); b <- rd("b"); mod <- model.matrix(~ factor(rd_chr("c")))
        wr("p", t(quiet(ComBat(dat, b, mod)))); wr("r", t(quiet(ComBat(dat, b, mod, ref.batch = 2))))
    """, inputs, tmp_path, packages=("sva",))
    for key, kw in (("p", {}), ("r", {"ref_batch": 2})):
        ours = ComBat(**kw).fit_transform(Xn, batch=s["batch"], covariates=s[["cancer"]])
        assert np.array_equal(np.isnan(ours), np.isnan(out[key]))
        err = np.nanmax(np.abs(ours - out[key]))
        assert err <= 1e-8, f"seed {seed}, {kw}: max |ours - sva| = {err}"
