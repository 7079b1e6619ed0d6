"""The parts of edgeR that ``sva::ComBat_seq`` calls, ported from edgeR's R and C sources.

Vectorized over genes (rows); every loop below runs over iterations or design columns, never genes.

* ``glm_one_group`` / ``mglm_one_way``: ``mglmOneGroup`` (Newton-Raphson, tol 1e-10, maxit 50, start
  ``log(sum(y / N) / n)`` over positive counts) and ``mglmOneWay`` (one group fit per unique design
  row, ``pmax(beta, -1e8)``), ``src/glm.c``.
* ``mglm_levenberg``: ``mglmLevenberg`` / ``fit_leven_vec`` with the "null" start (``get_leven_start``),
  Levenberg damping (``lambda = 1e-6 max(diag XtWX)``, x10 on Cholesky failure, x2 while the deviance
  rises, /10 after a first-try step), stop when ``dl . dbeta < tol`` (1e-6), maxit 250 as glmFit uses.
* ``glm_fit``: ``glmFit.default`` (one-way shortcut when the design is a one-way layout;
  ``prior.count > 0`` replaces the coefficients by ``predFC`` ones: a refit on counts plus a
  library-size-scaled prior, offsets ``log(N + 2 prior)``).
* ``adjusted_profile_lik``: ``adjustedProfileLik`` / ``compute_adj_profile_ll`` (NB log-likelihood
  minus half the log-determinant of XtWX; edgeR 3.40 semantics, see the function).
* ``disp_cox_reid``: ``dispCoxReid`` (rows with sum < 5 dropped, R ``optimize`` = Brent's fmin on
  ``par^4`` over ``[0, 4^0.25]``, tol 1e-5).
* ``disp_cox_reid_interpolate_tagwise``: ``dispCoxReidInterpolateTagwise`` with ``prior.df = 0``
  (11-point grid ``2^seq(-6, 6)`` around the input dispersion, FMM cubic spline maximum
  ``maximizeInterpolant``; rows with sum < 5 keep the input dispersion).
* ``pnbinom`` / ``qnbinom``: R's NB distribution functions (``qnbinom`` = smallest ``y`` with
  ``F(y) >= p (1 - 8 eps)``, R >= 4.2's left-continuity fuzz).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import betainc, gammaln
from scipy.stats import nbinom

LOW_VALUE = 1e-10


# --------------------------------------------------------------------------- deviance & APL
def unit_nb_deviance(y: np.ndarray, mu: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """edgeR ``compute_unit_nb_deviance`` (elementwise)."""
    y = y + 1e-8
    mu = mu + 1e-8
    phi = np.broadcast_to(phi, y.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        resid = y - mu
        # "2/3*resid" in the C source is integer division (0), so the term is -phi*y: kept for parity
        pois = 2 * (y * np.log(y / mu) - resid - 0.5 * resid * resid * phi * (1 + phi * (0.0 * resid - y)))
        prod = mu * phi
        gam = 2 * ((y - mu) / mu - np.log(y / mu)) * mu / (1 + prod)
        invphi = 1 / phi
        nb = 2 * (y * np.log(y / mu) + (y + invphi) * np.log((mu + invphi) / (y + invphi)))
    # edgeR 3.40 (Bioc 3.16, what sva 3.46 ran on) does not clamp the unit deviance at 0 (edgeR 4 does)
    return np.where(phi < 1e-4, pois, np.where(prod > 1e6, gam, nb))


def adjusted_profile_lik(disp: np.ndarray, y: np.ndarray, design: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``adjustedProfileLik(dispersion, y, design, offset)`` per gene (weights 1, adjust=TRUE).

    Parameters
    ----------
    disp : float or ndarray broadcastable to (G,) or (G, n)
    y, offset : ndarray of shape (G, n)
    design : ndarray of shape (n, p)
    """
    G, n = y.shape
    phi = np.broadcast_to(np.asarray(disp, np.float64).reshape(-1, 1) if np.ndim(disp) == 1 else disp, (G, n))
    mu = glm_fit(y, design, phi, offset, prior_count=0.0)["fitted"]
    pos = mu > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1 / phi
        logmur = np.log(mu + r)
        nb = y * np.log(mu) - y * logmur + r * np.log(r) - r * logmur + gammaln(y + r) - gammaln(y + 1) - gammaln(r)
        pois = y * np.log(mu) - mu - gammaln(y + 1)
    ll = np.where(pos, np.where(phi > 0, nb, pois), 0.0).sum(axis=1)
    # edgeR 3.40.2's compute_apl (Debian r-bioc-edger, checked against its output) computes the working
    # weight of every library from its fitted value, so a library with a zero fitted value (a group with
    # only zero counts) adds 0 to XtWX and the singular pivot is clamped to log(1e-10).
    wz = np.where(pos, mu / (1 + phi * mu), 0.0)
    p = design.shape[1]
    if p == 1:
        with np.errstate(divide="ignore"):
            adj = np.log(np.abs(wz.sum(axis=1))) / 2  # edgeR sums the weights (design is all ones)
    else:
        xtwx = np.einsum("gn,ni,nj->gij", wz, design, design)
        adj = _half_logdet_ldl(xtwx)
    return ll - adj


_BK_ALPHA = (1.0 + math.sqrt(17.0)) / 8.0


def _dsytf2_diag(A: np.ndarray) -> tuple[np.ndarray, bool]:
    """Diagonal of LAPACK ``dsytf2(uplo="U")`` (Bunch-Kaufman) applied to many small symmetric matrices.

    ``compute_apl.c`` factorizes XtWX with ``dsytrf`` (unblocked ``dsytf2`` for these sizes) and sums
    ``log(diag)/2``. For positive definite XtWX that is ``logdet/2`` whatever the pivoting, but where
    fitted values are zero XtWX is singular and the pivots that come out ~0 (clamped to ``log(1e-10)``)
    depend on the pivot order, so the pivoting is reproduced. This vectorized version handles 1x1
    pivots (with interchanges); the second return value flags matrices that need a 2x2 pivot.
    """
    A = A.copy()
    G, p, _ = A.shape
    rows = np.arange(G)
    needs_2x2 = np.zeros(G, dtype=bool)
    for k in range(p - 1, -1, -1):
        absakk = np.abs(A[:, k, k])
        if k > 0:
            col = np.abs(A[:, :k, k])
            imax = np.argmax(col, axis=1)
            colmax = col[rows, imax]
        else:
            imax = np.zeros(G, dtype=np.int64)
            colmax = np.zeros(G)
        zero = (np.maximum(absakk, colmax) == 0) | np.isnan(absakk)
        nopiv = zero | (absakk >= _BK_ALPHA * colmax)
        kp = np.full(G, k)
        if k > 0 and not nopiv.all():
            # row max of row imax over columns imax+1..k, and over rows 1..imax-1 of column imax
            r = np.abs(A[rows, imax, :])  # symmetric: row imax
            cidx = np.arange(p)[None, :]
            upper = np.where((cidx > imax[:, None]) & (cidx <= k), r, -1.0).max(axis=1)
            lower = np.where(cidx < imax[:, None], r, -1.0).max(axis=1)
            rowmax = np.maximum(upper, lower)
            with np.errstate(invalid="ignore", divide="ignore"):
                keep_k = absakk >= _BK_ALPHA * colmax * (colmax / rowmax)
            one_swap = ~nopiv & ~keep_k & (np.abs(A[rows, imax, imax]) >= _BK_ALPHA * rowmax)
            two = ~nopiv & ~keep_k & ~one_swap
            needs_2x2 |= two
            kp = np.where(one_swap, imax, k)
        swap = kp != k
        if swap.any():
            perm = np.tile(np.arange(p), (G, 1))
            perm[rows, k] = kp
            perm[rows, kp] = k
            g = np.flatnonzero(swap)
            pg = perm[g]
            A[g] = A[g[:, None, None], pg[:, :, None], pg[:, None, :]]
        if k > 0:
            dkk = A[:, k, k]
            ok = ~zero & (dkk != 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                r1 = np.where(ok, 1.0 / np.where(ok, dkk, 1.0), 0.0)
            w = A[:, :k, k]
            A[:, :k, :k] -= r1[:, None, None] * w[:, :, None] * w[:, None, :]
    return np.einsum("gii->gi", A), needs_2x2


def _dsytf2_diag_scalar(A: np.ndarray) -> np.ndarray:
    """Full ``dsytf2(uplo="U")`` on one matrix (1x1 and 2x2 pivots); returns the diagonal."""
    A = np.array(A, dtype=float)
    n = A.shape[0]
    k = n - 1
    while k >= 0:
        kstep = 1
        absakk = abs(A[k, k])
        if k > 0:
            imax = int(np.argmax(np.abs(A[:k, k])))
            colmax = abs(A[imax, k])
        else:
            imax, colmax = 0, 0.0
        if max(absakk, colmax) == 0 or np.isnan(absakk):
            k -= 1
            continue
        if absakk >= _BK_ALPHA * colmax:
            kp = k
        else:
            rowmax = np.abs(A[imax, imax + 1:k + 1]).max()
            if imax > 0:
                rowmax = max(rowmax, np.abs(A[:imax, imax]).max())
            if absakk >= _BK_ALPHA * colmax * (colmax / rowmax):
                kp = k
            elif abs(A[imax, imax]) >= _BK_ALPHA * rowmax:
                kp = imax
            else:
                kp, kstep = imax, 2
        kk = k - kstep + 1
        if kp != kk:
            perm = np.arange(n)
            perm[kk], perm[kp] = kp, kk
            sub = perm[: k + 1]
            A[: k + 1, : k + 1] = A[np.ix_(sub, sub)]
        if kstep == 1:
            w = A[:k, k].copy()
            A[:k, :k] -= np.outer(w, w) / A[k, k]
            A[:k, k] = w / A[k, k]
            A[k, :k] = A[:k, k]
        elif k > 1:
            d12 = A[k - 1, k]
            d22 = A[k - 1, k - 1] / d12
            d11 = A[k, k] / d12
            t = 1.0 / (d11 * d22 - 1.0)
            d12 = t / d12
            for j in range(k - 2, -1, -1):
                wkm1 = d12 * (d11 * A[j, k - 1] - A[j, k])
                wk = d12 * (d22 * A[j, k] - A[j, k - 1])
                for i in range(j, -1, -1):
                    A[i, j] = A[i, j] - A[i, k] * wk - A[i, k - 1] * wkm1
                    A[j, i] = A[i, j]
                A[j, k] = wk
                A[j, k - 1] = wkm1
        k -= kstep
    return np.diag(A).copy()


def _half_logdet_ldl(A: np.ndarray) -> np.ndarray:
    """edgeR 3.40 ``adj_coxreid::compute``: half the sum of ``log(d)`` over the dsytrf pivots, with
    ``log(1e-10)`` for a pivot below 1e-10 or not finite."""
    diag, two = _dsytf2_diag(A)
    for g in np.flatnonzero(two):  # 2x2 pivots: rare (near-singular XtWX); exact scalar port
        diag[g] = _dsytf2_diag_scalar(A[g])
    bad = ~(diag >= LOW_VALUE) | ~np.isfinite(diag)
    return 0.5 * np.where(bad, np.log(LOW_VALUE), np.log(np.where(bad, 1.0, diag))).sum(axis=1)


# --------------------------------------------------------------------------- GLM fitting
def glm_one_group(y: np.ndarray, offset: np.ndarray, phi: np.ndarray, maxit: int = 50, tol: float = 1e-10) -> np.ndarray:
    """``mglmOneGroup``: per-row NB mean ``beta`` with ``mu = exp(beta + offset)`` (rows x libs)."""
    n = y.shape[1]
    pos = y > LOW_VALUE
    allzero = ~pos.any(axis=1)
    with np.errstate(divide="ignore"):
        beta = np.log(np.where(pos, y / np.exp(offset), 0.0).sum(axis=1) / n)
    active = ~allzero
    out = beta.copy()
    for _ in range(maxit):
        if not active.any():
            break
        a = np.flatnonzero(active)
        mu = np.exp(beta[a, None] + offset[a])
        denom = 1 + mu * phi[a]
        dl = ((y[a] - mu) / denom).sum(axis=1)
        info = (mu / denom).sum(axis=1)
        step = dl / info
        beta[a] += step
        done = np.abs(step) < tol
        out[a] = beta[a]
        active[a[done]] = False
    out[allzero] = -np.inf
    return out


def _design_groups(design: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``designAsFactor``: group index per library and the first library of each group (level order)."""
    z = (math.e + math.pi) / 5
    key = (design * z ** np.arange(design.shape[1])).mean(axis=1)
    levels, group = np.unique(key, return_inverse=True)
    first = np.array([np.flatnonzero(group == g)[0] for g in range(len(levels))])
    return group, first


def mglm_one_way(y, design, phi, offset) -> dict:
    group, first = _design_groups(design)
    G = y.shape[0]
    ng = len(first)
    beta = np.empty((G, ng))
    for g in range(ng):
        cols = group == g
        beta[:, g] = glm_one_group(y[:, cols], offset[:, cols], phi[:, cols])
    beta = np.maximum(beta, -1e8)
    mu = np.exp(beta[:, group] + offset)
    du = design[first]
    coef = np.linalg.solve(du, beta.T).T
    return {"coefficients": coef, "fitted": mu}


def _chol_solve(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched Cholesky solve of small SPD systems; returns (solution, ok mask)."""
    G, p, _ = A.shape
    L = np.zeros_like(A)
    ok = np.ones(G, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(p):
            s = A[:, j, j] - (L[:, j, :j] ** 2).sum(axis=1)
            ok &= s > 0
            L[:, j, j] = np.sqrt(np.where(s > 0, s, 1.0))
            for i in range(j + 1, p):
                L[:, i, j] = (A[:, i, j] - (L[:, i, :j] * L[:, j, :j]).sum(axis=1)) / L[:, j, j]
        z = np.zeros_like(b)
        for i in range(p):
            z[:, i] = (b[:, i] - (L[:, i, :i] * z[:, :i]).sum(axis=1)) / L[:, i, i]
        x = np.zeros_like(b)
        for i in reversed(range(p)):
            x[:, i] = (z[:, i] - (L[:, i + 1:, i] * x[:, i + 1:]).sum(axis=1)) / L[:, i, i]
    return x, ok


def levenberg_start(y, design, phi, offset) -> np.ndarray:
    """``get_leven_start`` with the "null" method: fit a constant log-mean by least squares."""
    N = np.exp(offset)
    cw = N / (1 + phi * N)
    c = np.log((y * cw / N).sum(axis=1) / cw.sum(axis=1))
    unit, *_ = np.linalg.lstsq(design, np.ones(design.shape[0]), rcond=None)
    return c[:, None] * unit[None, :]


def mglm_levenberg(y, design, phi, offset, maxit: int = 250, tol: float = 1e-6) -> dict:
    G, n = y.shape
    p = design.shape[1]
    beta = levenberg_start(y, design, phi, offset)
    ymax = y.max(axis=1)
    dead = ymax < LOW_VALUE
    mu = np.exp(offset + beta @ design.T)
    dev = unit_nb_deviance(y, mu, phi).sum(axis=1)
    lam = np.zeros(G)
    max_info = np.full(G, -1.0)
    failed = np.zeros(G, dtype=bool)
    active = ~dead
    for it in range(1, maxit + 1):
        a = np.flatnonzero(active)
        if not len(a):
            break
        ya, pa, oa, mua = y[a], phi[a], offset[a], mu[a]
        denom = 1 + mua * pa
        zw = mua / denom
        dr = (ya - mua) / denom
        xtwx = np.einsum("gn,ni,nj->gij", zw, design, design)
        dl = dr @ design
        max_info[a] = np.maximum(max_info[a], np.einsum("gii->gi", xtwx).max(axis=1))
        if it == 1:
            lam[a] = np.maximum(max_info[a] * 1e-6, 1e-13)
        lev = np.zeros(len(a), dtype=np.int64)
        need = np.ones(len(a), dtype=bool)
        low_dev = np.zeros(len(a), dtype=bool)
        db_last = np.zeros((len(a), p))
        fail_a = np.zeros(len(a), dtype=bool)
        while need.any():
            k = np.flatnonzero(need)
            lev[k] += 1
            # Cholesky with lambda on the diagonal; x10 until it succeeds
            todo = k
            db = np.zeros((len(k), p))
            while len(todo):
                A = xtwx[todo] + lam[a[todo], None, None] * np.eye(p)
                x, ok = _chol_solve(A, dl[todo])
                db[np.searchsorted(k, todo[ok])] = x[ok]
                bad = todo[~ok]
                lam[a[bad]] *= 10
                lam[a[bad]] = np.where(lam[a[bad]] <= 0, 1e-100, lam[a[bad]])
                todo = bad
            db_last[k] = db
            nbeta = beta[a[k]] + db
            nmu = np.exp(oa[k] + nbeta @ design.T)
            ndev = unit_nb_deviance(ya[k], nmu, pa[k]).sum(axis=1)
            ld = ndev / ymax[a[k]] < 1e-13
            low_dev[k] = ld
            acc = (ndev <= dev[a[k]]) | ld
            ka = k[acc]
            beta[a[ka]] = nbeta[acc]
            mu[a[ka]] = nmu[acc]
            dev[a[ka]] = ndev[acc]
            need[ka] = False
            kr = k[~acc]
            lam[a[kr]] *= 2
            lam[a[kr]] = np.where(lam[a[kr]] <= 0, 1e-100, lam[a[kr]])
            f = lam[a[kr]] / max_info[a[kr]] > 1e13
            fail_a[kr[f]] = True
            need[kr[f]] = False
        divergence = (dl * db_last).sum(axis=1)
        stop = fail_a | low_dev | (divergence < tol)
        failed[a[fail_a]] = True
        active[a[stop]] = False
        first_try = (~stop) & (lev == 1)
        lam[a[first_try]] /= 10
    beta[dead] = np.nan
    mu[dead] = 0.0
    return {"coefficients": beta, "fitted": mu, "deviance": dev, "failed": failed}


def is_one_way(design: np.ndarray) -> bool:
    group, _ = _design_groups(design)
    return len(np.unique(group)) == design.shape[1]


def add_prior_count(y: np.ndarray, offset: np.ndarray, prior_count: float) -> tuple[np.ndarray, np.ndarray]:
    """``addPriorCount``: per row, prior ``prior_count * N_j / mean(N)`` added to counts, twice to ``N``."""
    N = np.exp(offset)
    prior = prior_count * N / N.mean(axis=1, keepdims=True)
    return y + prior, np.log(N + 2 * prior)


def glm_fit(y: np.ndarray, design: np.ndarray, phi: np.ndarray, offset: np.ndarray, prior_count: float = 0.125) -> dict:
    """``glmFit.default``: NB GLM per row. ``phi``/``offset`` are (G, n) matrices.

    Returns dict with ``coefficients`` (shrunk by ``prior_count`` as ``predFC`` does, natural log),
    ``unshrunk`` coefficients and ``fitted`` values (of the unshrunk fit).
    """
    design = np.asarray(design, np.float64)
    phi = np.broadcast_to(phi, y.shape)
    offset = np.broadcast_to(offset, y.shape)
    fit = mglm_one_way(y, design, phi, offset) if is_one_way(design) else mglm_levenberg(y, design, phi, offset)
    out = {"coefficients": fit["coefficients"], "unshrunk": fit["coefficients"], "fitted": fit["fitted"]}
    if prior_count > 0:
        yp, op = add_prior_count(y, offset, prior_count)
        g = mglm_one_way(yp, design, phi, op) if is_one_way(design) else mglm_levenberg(yp, design, phi, op)
        out["coefficients"] = g["coefficients"]
    return out


# --------------------------------------------------------------------------- dispersion
def brent_fmin(f, ax: float, bx: float, tol: float) -> float:
    """R's ``optimize`` core (``Brent_fmin`` in ``src/library/stats/src/optimize.c``): minimizer of f."""
    c = (3.0 - math.sqrt(5.0)) * 0.5
    eps = math.sqrt(np.finfo(float).eps)
    a, b = ax, bx
    v = a + c * (b - a)
    w = x = v
    d = e = 0.0
    fx = f(x)
    fv = fw = fx
    tol3 = tol / 3.0
    while True:
        xm = (a + b) * 0.5
        tol1 = eps * abs(x) + tol3
        t2 = tol1 * 2.0
        if abs(x - xm) <= t2 - (b - a) * 0.5:
            break
        p = q = r = 0.0
        if abs(e) > tol1:
            r = (x - w) * (fx - fv)
            q = (x - v) * (fx - fw)
            p = (x - v) * q - (x - w) * r
            q = (q - r) * 2.0
            if q > 0.0:
                p = -p
            else:
                q = -q
            r = e
            e = d
        if abs(p) >= abs(q * 0.5 * r) or p <= q * (a - x) or p >= q * (b - x):
            e = (b - x) if x < xm else (a - x)
            d = c * e
        else:  # parabolic step
            d = p / q
            u = x + d
            if u - a < t2 or b - u < t2:
                d = tol1 if x < xm else -tol1
        if abs(d) >= tol1:
            u = x + d
        elif d > 0.0:
            u = x + tol1
        else:
            u = x - tol1
        fu = f(u)
        if fu <= fx:
            if u < x:
                b = x
            else:
                a = x
            v, w, x = w, x, u
            fv, fw, fx = fw, fx, fu
        else:
            if u < x:
                a = u
            else:
                b = u
            if fu <= fw or w == x:
                v, fv = w, fw
                w, fw = u, fu
            elif fu <= fv or v == x or v == w:
                v, fv = u, fu
    return x


def disp_cox_reid(y: np.ndarray, design: np.ndarray | None = None, offset: np.ndarray | None = None,
                  interval: tuple[float, float] = (0.0, 4.0), tol: float = 1e-5, min_row_sum: float = 5) -> float:
    """``estimateGLMCommonDisp(y, design, subset = nrow(y))`` (Cox-Reid APL, ``dispCoxReid``)."""
    if design is None:
        design = np.ones((y.shape[1], 1))
    if offset is None:
        offset = np.log(y.sum(axis=0))
    if design.shape[1] >= y.shape[1]:
        return float("nan")
    offset = np.broadcast_to(offset, y.shape)
    keep = y.sum(axis=1) >= min_row_sum
    yk, ok = y[keep], offset[keep]
    if not len(yk):
        raise ValueError("no data rows with required number of counts")

    def neg(par: float) -> float:
        return -float(adjusted_profile_lik(np.full(len(yk), par**4), yk, design, ok).sum())

    best = brent_fmin(neg, interval[0] ** 0.25, interval[1] ** 0.25, tol)
    return best**4


def fmm_spline(x: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R's ``fmm_spline`` (Forsythe, Malcolm & Moler end conditions) for many rows of ``Y`` at once."""
    n = len(x)
    G = Y.shape[0]
    b = np.zeros((G, n))
    c = np.zeros((G, n))
    d = np.zeros((G, n))
    xs = np.asarray(x, float)
    # 1-based in C; here 0-based
    dd = np.zeros(n)
    bb = np.zeros(n)
    dd[0] = xs[1] - xs[0]
    c[:, 1] = (Y[:, 1] - Y[:, 0]) / dd[0]
    for i in range(1, n - 1):
        dd[i] = xs[i + 1] - xs[i]
        bb[i] = 2.0 * (dd[i - 1] + dd[i])
        c[:, i + 1] = (Y[:, i + 1] - Y[:, i]) / dd[i]
        c[:, i] = c[:, i + 1] - c[:, i]
    bb[0] = -dd[0]
    bb[n - 1] = -dd[n - 2]
    c[:, 0] = 0.0
    c[:, n - 1] = 0.0
    if n > 3:
        c0 = c[:, 2] / (xs[3] - xs[1]) - c[:, 1] / (xs[2] - xs[0])
        cn = c[:, n - 2] / (xs[n - 1] - xs[n - 3]) - c[:, n - 3] / (xs[n - 2] - xs[n - 4])
        c[:, 0] = c0 * dd[0] * dd[0] / (xs[3] - xs[0])
        c[:, n - 1] = -cn * dd[n - 2] * dd[n - 2] / (xs[n - 1] - xs[n - 4])
    bdiag = np.tile(bb, (G, 1))
    for i in range(1, n):
        t = dd[i - 1] / bdiag[:, i - 1]
        bdiag[:, i] = bdiag[:, i] - t * dd[i - 1]
        c[:, i] = c[:, i] - t * c[:, i - 1]
    c[:, n - 1] = c[:, n - 1] / bdiag[:, n - 1]
    for i in range(n - 2, -1, -1):
        c[:, i] = (c[:, i] - dd[i] * c[:, i + 1]) / bdiag[:, i]
    b[:, n - 1] = (Y[:, n - 1] - Y[:, n - 2]) / dd[n - 2] + dd[n - 2] * (c[:, n - 2] + 2.0 * c[:, n - 1])
    for i in range(n - 1):
        b[:, i] = (Y[:, i + 1] - Y[:, i]) / dd[i] - dd[i] * (c[:, i + 1] + 2.0 * c[:, i])
        d[:, i] = (c[:, i + 1] - c[:, i]) / dd[i]
        c[:, i] = 3.0 * c[:, i]
    c[:, n - 1] = 3.0 * c[:, n - 1]
    d[:, n - 1] = d[:, n - 2]
    return b, c, d


def maximize_interpolant(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """edgeR ``maximizeInterpolant``: per row, the x maximizing the FMM spline through ``(x, Y[row])``
    near the largest grid value (segments left and right of it)."""
    G, n = Y.shape
    at = np.argmax(Y, axis=1)  # first maximum, as the C loop's strict '>'
    rows = np.arange(G)
    maxed = Y[rows, at]
    x_max = x[at].astype(float)
    b, c, d = fmm_spline(x, Y)
    with np.errstate(invalid="ignore", divide="ignore"):
        for side in (-1, 0):  # segment left of the max (index at-1), then right (index at)
            seg = at + side
            valid = (seg >= 0) & (seg <= n - 2)
            s = np.clip(seg, 0, n - 2)
            sd, sc, sb = d[rows, s], c[rows, s], b[rows, s]
            delta = sc * sc - 3 * sd * sb
            sol = (-sc - np.sqrt(np.where(delta < 0, 0.0, delta))) / (3 * sd)
            width = x[s + 1] - x[s]
            inside = valid & (delta >= 0) & (sol > 0) & (sol < width)
            temp = ((sd * sol + sc) * sol + sb) * sol + Y[rows, s]
            better = inside & (temp > maxed)
            maxed = np.where(better, temp, maxed)
            x_max = np.where(better, sol + x[s], x_max)
    return x_max


def disp_cox_reid_interpolate_tagwise(y: np.ndarray, design: np.ndarray, dispersion: float,
                                      offset: np.ndarray | None = None, min_row_sum: float = 5,
                                      grid_npts: int = 11, grid_range: tuple[float, float] = (-6, 6)) -> np.ndarray:
    """``estimateGLMTagwiseDisp(y, design, dispersion, prior.df = 0)`` (no smoothing at prior.df 0)."""
    G, n = y.shape
    if offset is None:
        offset = np.log(y.sum(axis=0))
    offset = np.broadcast_to(offset, y.shape)
    disp = np.full(G, float(dispersion))
    if design.shape[1] >= n:
        return np.full(G, np.nan)
    keep = y.sum(axis=1) >= min_row_sum
    if not keep.any():
        return disp
    yk, ok = y[keep], offset[keep]
    pts = np.linspace(grid_range[0], grid_range[1], grid_npts)
    apl = np.column_stack([adjusted_profile_lik(disp[keep] * 2.0**pt, yk, design, ok) for pt in pts])
    dmax = maximize_interpolant(pts, apl)
    disp[keep] = disp[keep] * 2.0**dmax
    return disp


# --------------------------------------------------------------------------- NB distribution (R)
def pnbinom(q: np.ndarray, size: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """R ``pnbinom(q, size=, mu=)``: ``I_{size/(size+mu)}(size, floor(q + 1e-7) + 1)``."""
    q = np.floor(np.asarray(q, float) + 1e-7)
    prob = size / (size + mu)
    with np.errstate(invalid="ignore"):
        out = betainc(size, q + 1, prob)
    return np.where(q < 0, 0.0, out)


def qnbinom(p: np.ndarray, size: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """R ``qnbinom(p, size=, mu=)`` (lower tail): smallest integer ``y`` with ``F(y) >= p (1 - 8 eps)``."""
    p = np.asarray(p, float)
    size = np.broadcast_to(size, p.shape).astype(float)
    mu = np.broadcast_to(mu, p.shape).astype(float)
    target = p * (1 - 8 * np.finfo(float).eps)
    prob = size / (size + mu)
    top = p >= 1.0  # R: qnbinom(1) = Inf
    y = np.asarray(nbinom.ppf(target, size, prob), float)
    y = np.where(np.isfinite(y), y, 0.0)
    # make y exactly the smallest integer with F(y) >= target under R's pnbinom
    for _ in range(64):
        up = pnbinom(y, size, mu) < target
        if not up.any():
            break
        y = np.where(up, y + 1, y)
    for _ in range(64):
        down = (y > 0) & (pnbinom(y - 1, size, mu) >= target)
        if not down.any():
            break
        y = np.where(down, y - 1, y)
    return np.where(top, np.inf, y)
