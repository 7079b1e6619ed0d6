"""Start the network's pathway terms (crosstalk + linear pathway terms) from a fit on the training rows.

The wide path starts from a GLM (:mod:`genexflow.training.wide`); this module does the same for the
pathway-crosstalk term, CANN-style, so a non-additive pathway effect (the sign of a product of two
pathway activities, an XOR) is in the model from the first epoch instead of waiting for a factorization
machine to grow out of a zero gate at a small learning rate.

Three steps, all on the fold's training rows:

1. **Pathway scores** (label-free). Each pathway's activity is estimated by a sparse factor model
   ``X ≈ A Wᵀ`` whose loadings ``W`` (G, P) live on the membership only: started from each set's first
   principal component, refined by a few ridge alternating-least-squares sweeps, and read out jointly,
   ``s = X W (WᵀW + λI)⁻¹`` (scaled to unit SD). The joint read-out separates programs that share genes;
   the members' mean does not: on the simulator's XOR task a logistic model on the planted product of
   member-mean scores reaches 0.66 balanced accuracy, of first-PC scores 0.77, of these scores 0.85
   (the Bayes level with the true activities: 0.86). In the network this is ``fm_gene_weights`` (the
   member weights) and ``fm_mix`` (the P x P read-out).
2. **Offsets**: the GLM's out-of-fold logits on the training rows (the wide path's family and strength,
   refitted on 3 inner folds), so the pathway terms learn what the GLM leaves over without being fooled
   by the GLM's in-sample fit.
3. **Pathway terms**: ``s Lᵀ`` (linear, ``fm_linear``) plus the rank-r factorization machine over ``s``
   (``fm_factors``, gate 1), fitted full-batch with Adam under an L2 penalty; the penalty and the number
   of steps are chosen by inner 3-fold CV on the log-loss (or MSE), and the terms are kept only when
   they beat the offsets alone by :data:`MIN_GAIN` (relative). Candidates are screened first: the
   linear terms on the pathways whose score gradient at the intercept-only model stands out, the
   crosstalk on the pathways of the pairs whose gradient ``Sᵀ diag(r_k) S`` at the offsets stands out
   (within :data:`RATIO` of the strongest, robust z >= :data:`ZMIN`); an unscreened FM over all P(P-1)/2
   pairs overfits 1,000 rows within a few steps. The GLM's own weight α is fitted with the terms (the
   wide path is scaled by it), so a cleaner pathway score can take over a main effect from the GLM.
   Otherwise, and on fewer than :data:`MIN_ROWS` rows, the model starts exactly as before (gate 0, zero
   linear terms, identity read-out, the latter two frozen), so cohorts without pathway-level signal keep
   the GLM start.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import clone
from sklearn.linear_model import ElasticNet, LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold
from torch.nn import functional as F

from genexflow.training.baselines import inner_folds
from genexflow.training.wide import glm_logits

#: L2 penalties (on the sum of squared factors and linear weights, beside the mean loss) tried.
PENALTIES = (1e-3, 1e-2, 3e-2)
#: The pathway terms are kept when their inner-CV loss is below the offsets' by this fraction.
MIN_GAIN = 0.01
#: L-BFGS iterations (at most) of the pathway-term fit.
MAX_STEPS = 300
#: Screening: candidates within RATIO of the strongest gradient, which must have a robust z >= ZMIN.
RATIO = 0.6
ZMIN = 8.0
#: Fewer training rows than this: no pathway start (the module stays as built).
MIN_ROWS = 200
#: Rows used to estimate the factor loadings (label-free; a random subset above this).
MAX_ROWS = 3000


@dataclass
class PathwayStart:
    """What :func:`fit_pathway_start` found: score read-out and the fitted terms (None when not kept)."""

    gene_weights: np.ndarray  # (G, P) on the membership
    mix: np.ndarray  # (P, P)
    factors: np.ndarray | None  # (P, K * r), output-major
    linear: np.ndarray | None  # (P, K)
    penalty: float | None
    glm_scale: float  # α: the wide path's GLM is scaled by it
    cv_loss: float
    offset_loss: float
    linear_pathways: np.ndarray | None = None  # indices screened for linear terms
    pair_pathways: np.ndarray | None = None  # indices screened for the crosstalk
    bias: np.ndarray | None = None  # (K,) added to the wide path's bias

    @property
    def kept(self) -> bool:
        return self.factors is not None


def factor_loadings(X: np.ndarray, membership: np.ndarray, ridge: float = 10.0, sweeps: int = 6,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Label-free pathway-score read-out: loadings ``W`` (G, P) on the membership and ``D`` (P, P) with
    ``s = X W D`` of unit SD on ``X``'s rows (which are assumed centred, as after the fold's scaler)."""
    X = np.asarray(X, np.float64)
    M = np.asarray(membership) > 0
    if len(X) > MAX_ROWS:
        X = X[np.sort(np.random.default_rng(seed).choice(len(X), MAX_ROWS, replace=False))]
    X = X - X.mean(0)
    G, P = M.shape
    W = np.zeros((G, P))
    for k in range(P):  # first principal component of each set's members, signed like their mean
        idx = np.flatnonzero(M[:, k])
        if not len(idx):
            continue
        Z = X[:, idx]
        w, v = np.linalg.eigh(Z.T @ Z)
        v = v[:, -1]
        W[idx, k] = v if v.sum() >= 0 else -v
    eye = ridge * np.eye(P)
    members = [np.flatnonzero(M[g]) for g in range(G)]
    for _ in range(sweeps):  # ridge ALS: activities given loadings, then each gene's loadings on its sets
        A = np.linalg.solve(W.T @ W + eye, W.T @ X.T).T
        AtA, AtX = A.T @ A + eye, A.T @ X
        for g, k in enumerate(members):
            if len(k):
                W[g, k] = np.linalg.solve(AtA[np.ix_(k, k)], AtX[k, g])
    D = np.linalg.inv(W.T @ W + eye)
    sd = (X @ W @ D).std(0)
    D /= np.where(sd > 1e-8, sd, 1.0)[None, :]
    return W.astype(np.float32), D.astype(np.float32)


def _terms(S: torch.Tensor, V: torch.Tensor, L: torch.Tensor, K: int, r: int) -> torch.Tensor:
    P = S.shape[1]
    Vr = V.view(P, K, r)
    quad = torch.einsum("np,pkr->nkr", S, Vr).pow(2).sum(-1) - torch.einsum("np,pkr->nk", S.pow(2), Vr.pow(2))
    return 0.5 * quad + S @ L


def _loss(z: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    return F.cross_entropy(z, y) if task == "classification" else F.mse_loss(z[:, 0], y)


def _residual(off: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """Negative loss gradient per output at ``off`` (n, K): one-hot minus softmax, or y minus prediction."""
    if task != "classification":
        return (np.asarray(y, np.float64) - off[:, 0])[:, None]
    z = off - off.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return np.eye(off.shape[1])[np.asarray(y, int)] - p


def _keep(score: np.ndarray) -> np.ndarray:
    """Indices of the screened candidates: within :data:`RATIO` of the strongest, which must stand out of
    the bulk (robust z >= :data:`ZMIN`)."""
    if not len(score):
        return np.zeros(0, int)
    med = np.median(score)
    mad = 1.4826 * np.median(np.abs(score - med)) + 1e-12
    if (score.max() - med) / mad < ZMIN:
        return np.zeros(0, int)
    return np.flatnonzero(score >= RATIO * score.max())


def screen(S: np.ndarray, y: np.ndarray, off: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Pathways for the linear terms and for the crosstalk, from the loss gradients at zero.

    Linear: ``|Sᵀ r₀| / n`` with r₀ the residual of the intercept-only model (main effects, whether or not
    the GLM has them). Pairs: ``|Sᵀ diag(r_k) S| / n`` with r the residual of the offsets (the gradient
    of each pair's weight at zero, what the GLM leaves over), norm over outputs.
    """
    n, P = S.shape
    base = np.zeros_like(off)
    if task == "classification":
        freq = np.bincount(np.asarray(y, int), minlength=off.shape[1]) / n
        base = np.log(np.maximum(freq, 1e-6))[None, :].repeat(n, 0)
    else:
        base = base + np.mean(y)
    lin = np.sqrt(((S.T @ _residual(base, y, task) / n) ** 2).sum(1))
    R = _residual(off, y, task)
    C = np.stack([S.T @ (S * R[:, [k]]) / n for k in range(R.shape[1])])
    pair = np.sqrt((C ** 2).sum(0))
    j, l_ = np.triu_indices(P, k=1)
    top = _keep(pair[j, l_])
    return _keep(lin), np.unique(np.concatenate([j[top], l_[top]])).astype(int)


def _fit(S, y, off, task, K, r, penalty, lin_idx, pair_idx, seed):
    """Penalized full-batch L-BFGS of α·offset + c + s L + FM(s), L on ``lin_idx`` and V on ``pair_idx`` only."""
    g = torch.Generator().manual_seed(seed)
    P = S.shape[1]
    mv = torch.zeros(P, 1)
    mv[torch.as_tensor(pair_idx, dtype=torch.long)] = 1.0
    ml = torch.zeros(P, 1)
    ml[torch.as_tensor(lin_idx, dtype=torch.long)] = 1.0
    V = (torch.randn(P, K * r, generator=g) * 0.1 * mv).requires_grad_(True)
    L = torch.zeros(P, K, requires_grad=True)
    alpha = torch.ones((), requires_grad=True)
    bias = torch.zeros(K, requires_grad=True)
    opt = torch.optim.LBFGS([V, L, alpha, bias], lr=1, max_iter=MAX_STEPS, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        Vm, Lm = V * mv, L * ml
        loss = _loss(alpha * off + bias + _terms(S, Vm, Lm, K, r), y, task) + penalty * (Vm.pow(2).sum() + Lm.pow(2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return (V * mv).detach(), (L * ml).detach(), float(alpha.detach()), bias.detach()


def fit_pathway_start(X: np.ndarray, y: np.ndarray, offset: np.ndarray, membership: np.ndarray, task: str,
                      rank: int, seed: int = 0) -> PathwayStart:
    """Scores, then the pathway terms on top of ``offset`` (the GLM's out-of-fold logits, (n, K))."""
    W, D = factor_loadings(X, membership, seed=seed)
    S_np = (np.asarray(X, np.float32) @ W) @ D
    K = offset.shape[1]
    S = torch.as_tensor(S_np, dtype=torch.float32)
    off = torch.as_tensor(offset, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.int64 if task == "classification" else torch.float32)
    losses = {p: [] for p in PENALTIES}
    base = []
    with torch.random.fork_rng():
        for tr, va in _splits(y, task, seed):
            lin, pairs = screen(S_np[tr], y[tr], offset[tr], task)
            tr_t, va_t = torch.as_tensor(tr), torch.as_tensor(va)
            base.append(float(_loss(off[va_t], yt[va_t], task)))
            for p in PENALTIES:
                V, L, a, c = _fit(S[tr_t], yt[tr_t], off[tr_t], task, K, rank, p, lin, pairs, seed)
                with torch.no_grad():
                    z = a * off[va_t] + c + _terms(S[va_t], V, L, K, rank)
                    losses[p].append(float(_loss(z, yt[va_t], task)))
        best_p = min(PENALTIES, key=lambda p: np.mean(losses[p]))
        best_loss, offset_loss = float(np.mean(losses[best_p])), float(np.mean(base))
        lin, pairs = screen(S_np, y, offset, task)
        if best_loss > offset_loss * (1 - MIN_GAIN) or not (len(lin) or len(pairs)):
            return PathwayStart(W, D, None, None, None, 1.0, best_loss, offset_loss, lin, pairs)
        V, L, a, c = _fit(S, yt, off, task, K, rank, best_p, lin, pairs, seed)
    return PathwayStart(W, D, V.numpy(), L.numpy(), best_p, a, best_loss, offset_loss, lin, pairs, c.numpy())


def _splits(y: np.ndarray, task: str, seed: int):
    if task == "classification":
        k = inner_folds(y)
        if k >= 2:
            return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    return list(KFold(3, shuffle=True, random_state=seed).split(np.zeros(len(y))))


def oof_logits(est, X: np.ndarray, y: np.ndarray, task: str, n_outputs: int, seed: int = 0) -> np.ndarray:
    """Out-of-fold logits (n, K) of a fitted GLM ``est``'s family at its chosen strength (3 inner folds)."""
    X = np.asarray(X, np.float64)
    out = np.zeros((len(X), n_outputs), np.float32)
    fixed = _fixed_strength(est)
    for tr, va in _splits(y, task, seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e = clone(fixed).fit(X[tr], y[tr])
        W, b = glm_logits(e, X.shape[1], n_outputs, task)
        out[va] = X[va] @ W.T + b
    return out


def _fixed_strength(est):
    """The estimator's family with its cross-validated strength fixed (no inner CV on the inner folds)."""
    p = est.get_params()
    if hasattr(est, "C_"):
        C = float(np.ravel(est.C_)[0])
        l1 = float(np.ravel(getattr(est, "l1_ratio_", [0.0]))[0])
        return LogisticRegression(C=C, l1_ratio=l1, solver=p.get("solver", "lbfgs"), max_iter=p.get("max_iter", 3000),
                                  tol=p.get("tol", 1e-4), random_state=p.get("random_state"))
    if hasattr(est, "alpha_"):
        if hasattr(est, "l1_ratio_"):
            return ElasticNet(alpha=float(est.alpha_), l1_ratio=float(est.l1_ratio_), max_iter=5000)
        return Ridge(alpha=float(est.alpha_))
    return est


def init_crosstalk(module, X: np.ndarray, y: np.ndarray, glm, task: str, seed: int = 0) -> PathwayStart | None:
    """Fit the pathway start over the GLM ``glm``'s out-of-fold logits and load it into ``module``'s
    crosstalk parameters (member weights, ``fm_mix``, ``fm_factors``, ``fm_linear``, gate 1) and scale
    the wide path by α.

    When the terms are not kept, or on fewer than :data:`MIN_ROWS` training rows (an interaction among
    P(P-1)/2 pathway pairs cannot be told from noise on tens of samples), the module is left as built and
    ``fm_mix`` / ``fm_linear`` are frozen at identity / zero: the network is then exactly the one without
    this start. Returns the start (None when not fitted).
    """
    if getattr(module, "fm_factors", None) is None or getattr(module, "fm_mix", None) is None:
        return None
    start = None
    if len(X) >= MIN_ROWS:
        K = module.config.n_outputs
        offset = oof_logits(glm, X, y, task, K, seed)
        start = fit_pathway_start(X, y, offset, module.membership.detach().cpu().numpy(), task,
                                  module.config.pathway_interactions, seed)
    if start is None or not start.kept:
        module.fm_mix.requires_grad_(False)
        module.fm_linear.requires_grad_(False)
        return start
    with torch.no_grad():
        set_member_weights(module, start.gene_weights)
        module.fm_mix.copy_(torch.as_tensor(start.mix))
        module.fm_factors.copy_(torch.as_tensor(start.factors))
        module.fm_linear.copy_(torch.as_tensor(start.linear))
        module.fm_gate.fill_(1.0)
        wide = getattr(module, "wide", None)
        if wide is not None:
            wide.weight.mul_(start.glm_scale)
            wide.bias.mul_(start.glm_scale).add_(torch.as_tensor(start.bias))
    return start


def set_member_weights(module, dense: np.ndarray) -> None:
    """Set the crosstalk's member-gene weights from a dense (G, P) matrix (entries off the membership are
    ignored), whichever way the module stores them."""
    t = torch.as_tensor(np.asarray(dense, np.float32))
    if hasattr(module, "fm_member_weights"):
        module.fm_member_weights.copy_(t.reshape(-1)[module.fm_flat_index.cpu()].to(module.fm_member_weights))
    else:
        module.fm_gene_weights.copy_(t.to(module.fm_gene_weights) * (module.membership > 0))
