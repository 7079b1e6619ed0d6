"""Start the network's wide (gene-level linear) path from a penalized GLM, then learn the deep residual.

This is the Combined Actuarial Neural Network construction (Wüthrich & Merz 2019, "Editorial: Yes, we
CANN!", ASTIN Bulletin 49(1)): the GLM is nested in the network as a skip connection, the network's own
output layer starts at zero (and the pathway-crosstalk gate), so training begins exactly at the GLM's
predictions and the deep branches
(GCN, pathway transformer, autoencoder latent) only have to explain what the GLM leaves over. Early
stopping keeps the starting point when no epoch improves the validation loss, so on cohorts too small for
the deep branches to add anything the model is the GLM, and where pathway interactions matter the deep
branches add them.

On gene expression this matters because the strongest signals often live in a handful of genes (chrY
genes and XIST for sex, a few markers for a leukemia subtype) that pathway pooling averages away, and
Adam-trained linear layers move every gene's weight at the same rate, which buries sparse signals among
thousands of noise genes before early stopping ends. A coordinate-descent GLM with inner-CV penalties is
the right tool for that part; the network is the right tool for the rest.

GLM choices (``TrainConfig.wide_init``):

``"auto"`` (default)
    Classification: an L2 logistic regression (lbfgs, C over 1e-3..10) and an elastic net (saga,
    l1_ratio 0.5, C 0.05 / 0.5 / 5), each with its strength chosen by inner 3-fold CV on log-loss; the one
    with the better inner-CV log-loss (same folds) is used. L2 wins where many genes carry the signal
    (golub), the elastic net where a few do (GEUVADIS sex). Regression: ``ElasticNetCV`` over l1_ratio
    0.1 / 0.5 / 0.9.
``"l2"``
    L2 logistic regression (lbfgs) / ridge, strength by inner CV.
``"elasticnet"``
    Elastic net only (l1_ratio 0.5).
``"none"``
    Zeros: the wide path is then trained by the optimizer with the rest of the network.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.linear_model import ElasticNetCV

from genexflow.errors import InputError
from genexflow.training.baselines import _inner_cv, make_baseline

WIDE_INITS = ("auto", "l2", "elasticnet", "none")


def fit_glm(X: np.ndarray, y: np.ndarray, task: str, kind: str = "auto", seed: int = 0,
            n_outputs: int | None = None, return_estimator: bool = False):
    """Fit the penalized GLM of ``kind`` and return its weights as logits of every output.

    Parameters
    ----------
    X : ndarray of shape (n, G)
        Preprocessed training rows (the network's input).
    y : ndarray of shape (n,)
        Class indices, or (standardized) regression targets.
    task : {"classification", "regression"}
    kind : {"auto", "l2", "elasticnet"}
    n_outputs : int
        K classes (classes absent from ``y`` get weight 0 and a bias of -10).
    return_estimator : bool
        Also return the fitted scikit-learn estimator (third item).

    Returns
    -------
    W : ndarray of shape (K, G), float32
    b : ndarray of shape (K,), float32
        ``X @ W.T + b`` are the GLM's logits (softmax gives its probabilities exactly; for two classes the
        binary logit z is split as -z/2, +z/2) or its regression predictions (K = 1).
    """
    if kind not in WIDE_INITS or kind == "none":
        raise InputError(f"wide_init must be one of {', '.join(WIDE_INITS[:-1])} to fit a GLM, got {kind!r}")
    X = np.asarray(X, np.float64)
    G = X.shape[1]
    clf = task == "classification"
    # The same estimators as the baselines of those names (one definition of each penalized GLM).
    names = {"l2": ["logreg_l2" if clf else "ridge"], "elasticnet": ["elasticnet"],
             "auto": ["logreg_l2", "elasticnet"] if clf else []}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds is not actionable
        if not clf:
            est = (make_baseline(names[0], task, seed) if names else
                   ElasticNetCV(l1_ratio=[0.1, 0.5, 0.9], alphas=30, cv=3, max_iter=5000, random_state=seed))
            est.fit(X, y)
        else:
            y = np.asarray(y, np.int64)
            cv = _inner_cv(y, seed, task)  # the baselines' inner folds, shared by both families
            fits = [make_baseline(n, task, seed).set_params(cv=cv).fit(X, y) for n in names]
            # auto: the family with the better inner-CV log-loss at its best strength (same folds for both)
            est = max(fits, key=lambda e: float(np.asarray(e.scores_).mean(0).max()))
    k = 1 if not clf else int(n_outputs or y.max() + 1)
    W, b = glm_logits(est, G, k, task)
    return (W, b, est) if return_estimator else (W, b)


def glm_logits(est, n_genes: int, n_outputs: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """A fitted linear estimator's weights as (K, G) logits of every output and (K,) biases."""
    if task != "classification":
        return (np.asarray(est.coef_, np.float32).reshape(1, n_genes),
                np.asarray([est.intercept_], np.float32).reshape(1))
    coef = np.asarray(est.coef_, np.float64)
    icpt = np.asarray(est.intercept_, np.float64).reshape(-1)
    W = np.zeros((n_outputs, n_genes))
    b = np.full(n_outputs, -10.0)  # a class never seen in training gets a vanishing probability
    cls = np.asarray(est.classes_, dtype=int)
    if len(cls) == 2:
        W[cls[0]], W[cls[1]] = -coef[0] / 2, coef[0] / 2
        b[cls[0]], b[cls[1]] = -icpt[0] / 2, icpt[0] / 2
    else:
        W[cls], b[cls] = coef, icpt
    return W.astype(np.float32), b.astype(np.float32)


def init_wide(module, X: np.ndarray, y: np.ndarray, task: str, kind: str = "auto", seed: int = 0,
              trainable: bool = False):
    """Load the GLM into ``module.wide`` and zero the head's output layer (the CANN start).

    Returns the fitted scikit-learn GLM, or None (leaving the module alone) when the module has no wide
    path or ``kind`` is ``"none"``. With ``trainable=False`` the wide weights are frozen: the deep branches
    learn the residual.
    """
    wide = getattr(module, "wide", None)
    if wide is None or kind == "none":
        return None
    W, b, est = fit_glm(X, y, task, kind, seed, n_outputs=wide.out_features, return_estimator=True)
    with torch.no_grad():
        wide.weight.copy_(torch.as_tensor(W))
        wide.bias.copy_(torch.as_tensor(b))
        head = getattr(module, "head", None)
        last = head[-1] if isinstance(head, torch.nn.Sequential) else None
        if isinstance(last, torch.nn.Linear):
            last.weight.zero_()
            last.bias.zero_()
    wide.weight.requires_grad_(trainable)
    wide.bias.requires_grad_(trainable)
    return est
