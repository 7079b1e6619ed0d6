"""Line-by-line translations of the R reference code, used only as independent oracles in the tests.

They follow the R source literally (genes x samples, loops, no vectorization tricks), so the fast
implementations in ``genexflow.preprocessing`` are checked against a second reading of the same R.
Sources: sva 3.46 ``R/ComBat.R`` + ``R/helper.R``; edgeR ``R/calcNormFactors.R``, ``src/compute_cpm.c``,
``R/filterByExpr.R``; impute ``R/impute.knn.R`` + ``src/knnimpute.f``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


# ----------------------------------------------------------------------------- sva::ComBat
def r_combat(dat, batch, mod=None, par_prior=True, mean_only=False, ref_batch=None):
    """``sva::ComBat(dat, batch, mod, par.prior, mean.only, ref.batch)``; dat is genes x samples."""
    dat = np.asarray(dat, float)
    levels = sorted(set(batch))
    batch = np.asarray(batch)
    n_batch = len(levels)
    batchmod = np.stack([(batch == lv).astype(float) for lv in levels], 1)
    ref = None
    if ref_batch is not None:
        ref = levels.index(ref_batch)
        batchmod[:, ref] = 1
    batches = [np.flatnonzero(batch == lv) for lv in levels]
    n_batches = np.array([len(b) for b in batches])
    n_array = n_batches.sum()
    design = batchmod if mod is None else np.hstack([batchmod, mod])
    check = np.all(design == 1, axis=0)
    if ref is not None:
        check[ref] = False
    design = design[:, ~check]
    B_hat = np.linalg.solve(design.T @ design, design.T @ dat.T)
    if ref_batch is not None:
        grand_mean = B_hat[ref]
        ref_dat = dat[:, batches[ref]]
        var_pooled = ((ref_dat - (design[batches[ref]] @ B_hat).T) ** 2) @ np.full(n_batches[ref], 1 / n_batches[ref])
    else:
        grand_mean = (n_batches / n_array) @ B_hat[:n_batch]
        var_pooled = ((dat - (design @ B_hat).T) ** 2) @ np.full(n_array, 1 / n_array)
    stand_mean = np.outer(grand_mean, np.ones(n_array))
    tmp = design.copy()
    tmp[:, :n_batch] = 0
    stand_mean = stand_mean + (tmp @ B_hat).T
    s_data = (dat - stand_mean) / np.outer(np.sqrt(var_pooled), np.ones(n_array))
    batch_design = design[:, :n_batch]
    gamma_hat = np.linalg.solve(batch_design.T @ batch_design, batch_design.T @ s_data.T)
    delta_hat = np.stack([np.ones(dat.shape[0]) if mean_only else s_data[:, i].var(axis=1, ddof=1)
                          for i in batches])
    gamma_bar = gamma_hat.mean(1)
    t2 = gamma_hat.var(1, ddof=1)

    def aprior(g):
        m, s2 = g.mean(), g.var(ddof=1)
        return (2 * s2 + m**2) / s2

    def bprior(g):
        m, s2 = g.mean(), g.var(ddof=1)
        return (m * s2 + m**3) / s2

    def postmean(g_hat, g_bar, n, d_star, t2):
        return (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)

    def postvar(sum2, n, a, b):
        return (0.5 * sum2 + b) / (n / 2 + a - 1)

    def it_sol(sdat, g_hat, d_hat, g_bar, t2, a, b, conv=1e-4):
        n = sdat.shape[1]
        g_old, d_old = g_hat, d_hat
        change = 1
        while change > conv:
            g_new = postmean(g_hat, g_bar, n, d_old, t2)
            sum2 = ((sdat - np.outer(g_new, np.ones(sdat.shape[1]))) ** 2).sum(1)
            d_new = postvar(sum2, n, a, b)
            change = max(np.max(np.abs(g_new - g_old) / g_old), np.max(np.abs(d_new - d_old) / d_old))
            g_old, d_old = g_new, d_new
        return g_new, d_new

    def int_eprior(sdat, g_hat, d_hat):
        gs, ds = [], []
        for i in range(sdat.shape[0]):
            g = np.delete(g_hat, i)
            d = np.delete(d_hat, i)
            x = sdat[i]
            n = len(x)
            resid2 = (np.tile(x, (len(g), 1)) - g[:, None]) ** 2
            sum2 = resid2.sum(1)
            LH = 1 / (2 * np.pi * d) ** (n / 2) * np.exp(-sum2 / (2 * d))
            LH[np.isnan(LH)] = 0
            gs.append((g * LH).sum() / LH.sum())
            ds.append((d * LH).sum() / LH.sum())
        return np.array(gs), np.array(ds)

    with np.errstate(divide="ignore", invalid="ignore"):  # mean.only: all-ones delta.hat, as in R
        a_prior = [aprior(d) for d in delta_hat]
        b_prior = [bprior(d) for d in delta_hat]
    gamma_star = np.zeros_like(gamma_hat)
    delta_star = np.zeros_like(delta_hat)
    for i in range(n_batch):
        if par_prior:
            if mean_only:
                gamma_star[i] = postmean(gamma_hat[i], gamma_bar[i], 1, 1, t2[i])
                delta_star[i] = 1
            else:
                gamma_star[i], delta_star[i] = it_sol(s_data[:, batches[i]], gamma_hat[i], delta_hat[i],
                                                      gamma_bar[i], t2[i], a_prior[i], b_prior[i])
        else:
            dh = np.ones_like(delta_hat[i]) if mean_only else delta_hat[i]
            gamma_star[i], delta_star[i] = int_eprior(s_data[:, batches[i]], gamma_hat[i], dh)
    if ref_batch is not None:
        gamma_star[ref] = 0
        delta_star[ref] = 1
    bayesdata = s_data.copy()
    for j, i in enumerate(batches):
        bayesdata[:, i] = (bayesdata[:, i] - (batch_design[i] @ gamma_star).T) / np.outer(
            np.sqrt(delta_star[j]), np.ones(n_batches[j]))
    bayesdata = bayesdata * np.outer(np.sqrt(var_pooled), np.ones(n_array)) + stand_mean
    if ref_batch is not None:
        bayesdata[:, batches[ref]] = dat[:, batches[ref]]
    return bayesdata


# ----------------------------------------------------------------------------- edgeR
def r_quantile7(x, p):
    """R ``quantile(x, p)`` (type 7)."""
    x = np.sort(np.asarray(x, float))
    h = (len(x) - 1) * p
    lo = int(np.floor(h))
    hi = min(lo + 1, len(x) - 1)
    return x[lo] + (h - lo) * (x[hi] - x[lo])


def r_calc_factor_tmm(obs, ref, libsize_obs, libsize_ref, logratio_trim=0.3, sum_trim=0.05,
                      do_weighting=True, a_cutoff=-1e10):
    obs = np.asarray(obs, float)
    ref = np.asarray(ref, float)
    nO, nR = libsize_obs, libsize_ref
    with np.errstate(divide="ignore", invalid="ignore"):
        logR = np.log2((obs / nO) / (ref / nR))
        absE = (np.log2(obs / nO) + np.log2(ref / nR)) / 2
        v = (nO - obs) / nO / obs + (nR - ref) / nR / ref
    fin = np.isfinite(logR) & np.isfinite(absE) & (absE > a_cutoff)
    logR, absE, v = logR[fin], absE[fin], v[fin]
    if np.max(np.abs(logR)) < 1e-6:
        return 1.0
    n = len(logR)
    loL = np.floor(n * logratio_trim) + 1
    hiL = n + 1 - loL
    loS = np.floor(n * sum_trim) + 1
    hiS = n + 1 - loS
    rL = rankdata(logR)
    rE = rankdata(absE)
    keep = (rL >= loL) & (rL <= hiL) & (rE >= loS) & (rE <= hiS)
    if do_weighting:
        f = np.sum(logR[keep] / v[keep]) / np.sum(1 / v[keep])
    else:
        f = np.mean(logR[keep])
    if np.isnan(f):
        f = 0.0
    return 2**f


def r_calc_norm_factors(x, lib_size=None, **kw):
    """``calcNormFactors(x, method="TMM")``; x is genes x samples."""
    x = np.asarray(x, float)
    if lib_size is None:
        lib_size = x.sum(0)
    x = x[(x > 0).sum(1) > 0]
    f75 = np.array([r_quantile7(x[:, j], 0.75) for j in range(x.shape[1])]) / lib_size
    if np.median(f75) < 1e-20:
        refc = int(np.argmax(np.sqrt(x).sum(0)))
    else:
        refc = int(np.argmin(np.abs(f75 - f75.mean())))
    f = np.array([r_calc_factor_tmm(x[:, i], x[:, refc], lib_size[i], lib_size[refc], **kw)
                  for i in range(x.shape[1])])
    return f / np.exp(np.mean(np.log(f)))


def r_cpm(y, lib_size=None, log=False, prior_count=2.0):
    """``cpm.default`` (edgeR C code ``calc_cpm_log``/``calc_cpm_raw``); y is genes x samples."""
    y = np.asarray(y, float)
    if lib_size is None:
        lib_size = y.sum(0)
    lib_size = np.asarray(lib_size, float)
    if not log:
        return y * 1e6 / lib_size
    out = np.empty_like(y)
    for tag in range(y.shape[0]):
        ave = lib_size.mean()
        prior = prior_count * lib_size / ave
        off = np.log(lib_size + 2 * prior)
        val = y[tag] + prior
        out[tag] = (np.log(val) - off + np.log(1e6)) / np.log(2)
    return out


def r_filter_by_expr(y, group=None, lib_size=None, min_count=10, min_total_count=15, large_n=10, min_prop=0.7):
    """``filterByExpr.default``; y is genes x samples."""
    y = np.asarray(y, float)
    if lib_size is None:
        lib_size = y.sum(0)
    if group is None:
        min_n = y.shape[1]
    else:
        _, counts = np.unique(group, return_counts=True)
        min_n = counts[counts > 0].min()
    if min_n > large_n:
        min_n = large_n + (min_n - large_n) * min_prop
    cutoff = min_count / np.median(lib_size) * 1e6
    cpm = r_cpm(y, lib_size=lib_size)
    tol = 1e-14
    keep_cpm = (cpm >= cutoff).sum(1) >= (min_n - tol)
    keep_total = y.sum(1) >= min_total_count - tol
    return keep_cpm & keep_total


# ----------------------------------------------------------------------------- impute::impute.knn
def r_impute_knn(data, k=10, rowmax=0.5, colmax=0.8, maxp=1500, rng_seed=362436069):
    """``impute.knn(data, ...)$data``; data is genes x samples with NaN. Loops as in knnimpute.f."""
    from genexflow.preprocessing._rrng import RRandom  # R's RNG (checked separately against R values)

    rng = RRandom(rng_seed)
    x = np.array(data, float)
    p, n = x.shape
    col_nas = np.isnan(x).sum(0)
    if np.any(col_nas > colmax * p):
        raise ValueError("a column has too many missing values")
    imiss = np.isnan(x).astype(int)
    x[imiss == 1] = 0
    irmiss = imiss.sum(1)
    imax = int(np.trunc(rowmax * n))
    omit = irmiss > imax
    xomit, imiss_omit = x[omit], imiss[omit]
    x, imiss, irmiss = x[~omit], imiss[~omit], irmiss[~omit]

    def misdis(x0, im0, X, IM):
        P = X.shape[0]
        dis = np.zeros(P)
        cnt = np.zeros(P, int)
        for kk in range(n):
            if im0[kk] > 0:
                continue
            for j in range(P):
                if IM[j, kk] > 0:
                    continue
                dis[j] += (x0[kk] - X[j, kk]) ** 2
                cnt[j] += 1
        return np.where(cnt > 0, dis / np.maximum(cnt, 1), 1e10)

    def porder(kn, dist):
        nndist, pos = [], []
        for j in range(len(dist)):
            for kk in range(len(nndist)):
                if dist[j] < nndist[kk]:
                    nndist.insert(kk, dist[j])
                    pos.insert(kk, j)
                    break
            else:
                nndist.append(dist[j])
                pos.append(j)
            del nndist[kn:], pos[kn:]
        return pos

    def misave(X, im0, IM, index):
        x0 = np.zeros(n)
        im0 = im0.copy()
        for kk in range(n):
            if im0[kk] == 0:
                continue
            tot, ktot = 0.0, 0
            for jj in index:
                if IM[jj, kk] > 0:
                    continue
                tot += X[jj, kk]
                ktot += 1
            if ktot > 0:
                x0[kk] = tot / ktot
            else:
                im0[kk] = 2
        return x0, im0

    def knnimp_fortran(X, IM, IR):
        X = X.copy()
        IM = IM.copy()
        ximp = X.copy()
        for i in range(X.shape[0]):
            if IR[i] == 0:
                continue
            dist = misdis(X[i], IM[i], X, IM)
            pos = porder(k + 1, dist)
            workn, iworkn = misave(X, IM[i], IM, pos[1:])
            for kk in range(n):
                if iworkn[kk] == 0:
                    continue
                ximp[i, kk] = workn[kk]
                if iworkn[kk] == 2:
                    IM[i, kk] = 2
        ximp[IM == 2] = np.nan
        return ximp

    def twomis(X, starters, maxit=5, eps=1e-3):
        IM = np.zeros_like(X, dtype=int)  # twomeans.miss(x) sees the zero-filled x: nothing is missing
        P = X.shape[0]
        x0 = [X[starters[0]].copy(), X[starters[1]].copy()]
        im0 = [IM[starters[0]].copy(), IM[starters[1]].copy()]
        it, ratio, dold = 0, 10.0, 0.0
        clus = np.ones(P, int)
        while it < maxit and ratio > eps:
            it += 1
            d = [misdis(x0[0], im0[0], X, IM), misdis(x0[1], im0[1], X, IM)]
            dnew = 0.0
            members = [[], []]
            for j in range(P):
                c = 0 if d[0][j] < d[1][j] else 1
                members[c].append(j)
                dnew += d[c][j]
            clus = np.array([1 if j in set(members[0]) else 2 for j in range(P)])
            if dnew == 0:
                break
            if it == 1:
                dold = dnew * 10
            ratio = abs(dnew - dold) / dold
            dold = dnew
            for c in range(2):
                xc, ic = misave(X, np.ones(n, int), IM, members[c])
                x0[c] = xc
                im0[c] = (ic == 2).astype(int)
        return clus

    def internal(X, IM, IR):
        if X.shape[0] <= maxp:
            return knnimp_fortran(X, IM, IR)
        return split(X, IM, IR)

    def split(X, IM, IR):
        X = X.copy()
        starters = [s - 1 for s in rng.sample(X.shape[0], 2)]
        clus = twomis(X, starters)
        for c in (1, 2):
            index = clus == c
            if index.sum() <= k:
                continue  # meanimp(x[index, ]) on zero-filled data: no NA, nothing changes
            X[index] = internal(X[index], IM[index], IR[index])
        return X

    ximp = internal(x, imiss, irmiss)
    xq = x.copy()
    # mean.miss(x, imiss): `x[imiss] <- 0` with an integer 0/1 matrix indexes by
    if (imiss == 1).any():
        xq[0, 0] = 0.0   # position, i.e. sets x[1] (gene 1, sample 1) to 0 when a kept gene has a missing value
    xbar = np.array([xq[imiss[:, kk] == 0, kk].mean() for kk in range(n)])
    newmiss = np.isnan(ximp)
    ximp[newmiss] = np.broadcast_to(xbar, ximp.shape)[newmiss]
    if xomit.shape[0] > 1:  # meanimp() leaves a one-row matrix as it is (its zero-filled NAs)
        xomit[imiss_omit == 1] = np.broadcast_to(xbar, xomit.shape)[imiss_omit == 1]
    out = np.zeros((p, n))
    out[~omit] = ximp
    out[omit] = xomit
    return out
