"""ComBat-seq against the real ``sva::ComBat_seq`` (sva 3.46, edgeR 3.40.2) run through ``Rscript``.

Cases: the Marioni kidney/liver cohort (two sequencing runs, group = tissue) and designs generated fresh
from a new seed each run (``GENEXFLOW_TEST_SEED`` replays one): unbalanced batches, a biological group,
covariates. Skipped with a message when R or sva is not installed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from _rscript import fresh_seed, run_r

from genexflow.preprocessing import _edger
from genexflow.preprocessing.combat_seq import ComBatSeq

# Counts may land one step apart: the common dispersion comes from Brent's search on a sum of ~10^4
# log-likelihoods, where the last-bit differences of lgamma between scipy and the C library can move the
# optimum within optimize's tolerance. Near-saturated designs (5 samples, 4 coefficients) can map a count
# to ~1e20 in both R and here; those agree to ~1e-12 relative, not to the unit.
MAX_STEP = 1
MAX_FRACTION_OFF = 1e-3


def _check(ours, ref, what):
    diff = np.abs(ours - ref)
    off = diff > 1e-9 * np.abs(ref)
    worst = float((diff / np.maximum(1.0, 1e-9 * np.abs(ref))).max())
    assert worst <= MAX_STEP and off.mean() <= MAX_FRACTION_OFF, (
        f"{what}: max |ours - sva| = {diff.max()} (in units of max(1, 1e-9 |sva|): {worst}), "
        f"{off.mean():.3%} of entries differ")


def _random_case(rng, G=250):
    """Counts with batch and group effects; unbalanced batches (2-7 samples), both groups in each batch."""
    nb = int(rng.integers(2, 4))
    sizes = rng.integers(2, 8, size=nb)
    sizes[rng.integers(nb)] = 2  # always one small batch
    batch = np.repeat(np.arange(nb), sizes)
    group = np.concatenate([rng.permutation(["a"] + ["b"] + list(rng.choice(["a", "b"], s - 2))) for s in sizes])
    n = len(batch)
    mu = rng.gamma(0.8, 80, size=G) * rng.uniform(0.6, 1.6, size=(n, 1))
    eff = np.exp(rng.normal(0, 0.7, size=(nb, G)))[batch]
    bio = np.exp(rng.normal(0, 0.8, size=G) * (group == "b")[:, None])
    size = rng.uniform(2, 30, size=G)
    X = rng.negative_binomial(size, size / (size + mu * eff * bio)).astype(float)
    covar = rng.normal(size=n).round(3)
    return X, batch, group, covar


def test_marioni_with_and_without_tissue_group_matches_sva(shared_data, tmp_path):
    d = shared_data / "marioni_noiseq"
    X = pd.read_parquet(d / "counts.parquet").set_index("sample_id")
    s = pd.read_csv(d / "samples.csv").set_index("sample_id").loc[X.index]
    Xn = X.to_numpy(np.float64)
    out = run_r("""
        cnt <- t(rd("X")); run <- rd_chr("run"); tissue <- rd_chr("tissue")
        wr("group", t(quiet(ComBat_seq(cnt, batch = run, group = tissue))))
        wr("none", t(quiet(ComBat_seq(cnt, batch = run))))
    """, {"X": Xn, "run": s["run"].astype(str).tolist(), "tissue": s["tissue"].tolist()}, tmp_path,
        packages=("sva",))
    with_group = ComBatSeq().fit_transform(Xn, batch=s["run"], group=s["tissue"])
    _check(with_group, out["group"], "Marioni, group = tissue")
    _check(ComBatSeq().fit_transform(Xn, batch=s["run"]), out["none"], "Marioni, no group")
    # the correction is not a no-op on this cohort
    assert np.abs(out["group"] - Xn).max() > 10


def test_generated_designs_match_sva(tmp_path):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    cases = [_random_case(rng) for _ in range(3)]
    inputs, script = {}, []
    for i, (X, batch, group, covar) in enumerate(cases):
        inputs |= {f"X{i}": X, f"b{i}": batch, f"g{i}": list(group), f"c{i}": covar}
        script.append(f"""
        cnt <- t(rd("X{i}")); b <- rd("b{i}"); g <- rd_chr("g{i}"); cv <- rd("c{i}")
        wr("group{i}", t(quiet(ComBat_seq(cnt, batch = b, group = g))))
        wr("covar{i}", t(quiet(ComBat_seq(cnt, batch = b, group = g, covar_mod = data.frame(cv = cv)))))
        wr("nofull{i}", t(quiet(ComBat_seq(cnt, batch = b, group = g, full_mod = FALSE))))
        """)
    out = run_r("".join(script), inputs, tmp_path, packages=("sva",))
    for i, (X, batch, group, covar) in enumerate(cases):
        what = f"seed {seed}, case {i} (batches {np.bincount(batch).tolist()})"
        _check(ComBatSeq().fit_transform(X, batch=batch, group=group), out[f"group{i}"], what + " group")
        cov = pd.DataFrame({"cv": covar})
        _check(ComBatSeq().fit_transform(X, batch=batch, group=group, covariates=cov), out[f"covar{i}"],
               what + " group + covariate")
        _check(ComBatSeq(full_mod=False).fit_transform(X, batch=batch, group=group), out[f"nofull{i}"],
               what + " full_mod = FALSE")


def test_edger_pieces_match_edger(tmp_path):
    """The edgeR functions ComBat-seq calls, on a two-group design with a group of zeros in some genes."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    X, batch, group, _ = _random_case(rng, G=300)
    while np.bincount(batch).max() < 4:  # the two-column design needs residual df
        X, batch, group, _ = _random_case(rng, G=300)
    Y = X.T[:, batch == np.bincount(batch).argmax()]  # the largest batch: residual df for the design
    d = np.column_stack([np.ones(Y.shape[1]), group[batch == np.bincount(batch).argmax()] == "b"]).astype(float)
    Y[:20, d[:, 1] == 1] = 0  # fitted means of exactly zero
    Y = Y[Y.sum(1) >= 5]
    off = np.log(Y.sum(0))
    out = run_r("""
        y <- rd("Y"); d <- rd("d"); off <- matrix(rd("off"), nrow(y), ncol(y), byrow = TRUE)
        wr("apl", sapply(c(1e-4, 0.05, 0.5), function(p) adjustedProfileLik(p, y, d, off)))
        wr("common", c(estimateGLMCommonDisp(y, d, subset = nrow(y)), estimateGLMCommonDisp(y, NULL, subset = nrow(y))))
        cd <- estimateGLMCommonDisp(y, d, subset = nrow(y))
        wr("tagwise", estimateGLMTagwiseDisp(y, design = d, dispersion = cd, prior.df = 0))
    """, {"Y": Y, "d": d, "off": off}, tmp_path, packages=("edgeR",))
    offm = np.broadcast_to(off, Y.shape)
    for j, p in enumerate((1e-4, 0.05, 0.5)):
        apl = _edger.adjusted_profile_lik(np.full(len(Y), p), Y, d, offm)
        np.testing.assert_allclose(apl, out["apl"][:, j], rtol=1e-9, atol=1e-9, err_msg=f"seed {seed}, disp {p}")
    assert np.isfinite(out["common"]).all()  # residual df in both designs, so the values are compared
    common = [_edger.disp_cox_reid(Y, d, off), _edger.disp_cox_reid(Y, None, off)]
    np.testing.assert_allclose(common, out["common"][:, 0], rtol=1e-3, err_msg=f"seed {seed}")
    tag = _edger.disp_cox_reid_interpolate_tagwise(Y, d, out["common"][0, 0], off)
    np.testing.assert_allclose(tag, out["tagwise"][:, 0], rtol=1e-6, atol=1e-8, err_msg=f"seed {seed}")


def test_shrinkage_matches_sva(tmp_path):
    """``shrink = TRUE`` (mean only, with dispersions, and over ``gene.subset.n`` genes drawn by R's RNG)."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    X, batch, group, _ = _random_case(rng, G=80)  # R's Monte-Carlo integration: O(G^2) R calls
    out = run_r("""
        cnt <- t(rd("X")); b <- rd("b"); g <- rd_chr("g")
        wr("mean", t(quiet(ComBat_seq(cnt, batch = b, group = g, shrink = TRUE))))
        wr("disp", t(quiet(ComBat_seq(cnt, batch = b, group = g, shrink = TRUE, shrink.disp = TRUE))))
        set.seed(rd("s")); wr("subset", t(quiet(ComBat_seq(cnt, batch = b, shrink = TRUE, gene.subset.n = 40))))
    """, {"X": X, "b": batch, "g": list(group), "s": np.array([seed % 10_000])}, tmp_path, packages=("sva",))
    what = f"seed {seed} (batches {np.bincount(batch).tolist()})"
    shrunk = ComBatSeq(shrink=True).fit_transform(X, batch=batch, group=group)
    _check(shrunk, out["mean"], what + " shrink")
    _check(ComBatSeq(shrink=True, shrink_disp=True).fit_transform(X, batch=batch, group=group), out["disp"],
           what + " shrink.disp")
    sub = ComBatSeq(shrink=True, gene_subset_n=40, random_state=seed % 10_000).fit_transform(X, batch=batch)
    _check(sub, out["subset"], what + " gene.subset.n = 40")
    # shrinkage changes the result (else the comparison above would not test it)
    assert np.abs(shrunk - ComBatSeq().fit_transform(X, batch=batch, group=group)).max() >= 2
