"""Train/test splits: stratified (repeated) k-fold, leave-one-batch-out, external cohort, and the inner
train/validation split used for early stopping.

A split is only row positions; everything fitted (preprocessing, priors, model, baselines) is fitted on
``train`` rows inside :mod:`genexflow.training.cv`, so nothing here can leak.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

from genexflow.errors import InputError

SPLIT_KINDS = ("stratified", "lobo", "kfold")


@dataclass(frozen=True)
class Split:
    """One fold: row positions of the training and test samples.

    Attributes
    ----------
    name : str
        ``"r0f3"`` (repeat 0, fold 3) or ``"batch=2"`` (held-out batch).
    train, test : ndarray of int
        Row positions into the cohort.
    repeat : int
    group : str or None
        The held-out group (batch) in leave-one-batch-out.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    repeat: int = 0
    group: str | None = None


def stratified_kfold(y: np.ndarray, n_splits: int = 5, n_repeats: int = 1, seed: int = 0,
                     stratify: bool = True) -> list[Split]:
    """Stratified k-fold, repeated ``n_repeats`` times with different shuffles.

    Parameters
    ----------
    y : array of shape (n_samples,)
        Class labels (stratification) or a continuous target (then stratified on its quintiles).
    n_splits, n_repeats, seed : int
    stratify : bool
        False gives plain shuffled k-fold.

    Returns
    -------
    list of Split, ``n_splits * n_repeats`` long
    """
    y = np.asarray(y)
    n = len(y)
    if n_splits < 2:
        raise InputError(f"cross-validation needs at least 2 folds, got {n_splits}")
    strata = _strata(y) if stratify else np.zeros(n, int)
    counts = np.bincount(strata)
    if stratify and counts.min() < n_splits:
        small = int(counts.min())
        raise InputError(
            f"the smallest class has {small} samples, fewer than the {n_splits} folds; use --cv {max(small, 2)} "
            "or merge rare classes"
        )
    out = []
    for r in range(n_repeats):
        skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed + r)
        for f, (tr, te) in enumerate(skf.split(np.zeros(n), strata)):
            out.append(Split(f"r{r}f{f}", tr, te, repeat=r))
    return out


def leave_one_batch_out(batches: np.ndarray | pd.Series, y: np.ndarray | None = None,
                        min_test: int = 1) -> list[Split]:
    """One split per batch: train on every other batch, test on the held-out one.

    Batches with fewer than ``min_test`` samples are not held out (they stay in training). When ``y`` is
    given, a split whose training rows lack a class is refused with a clear message, since the model
    could never predict it.
    """
    b = pd.Series(np.asarray(batches)).astype(str).to_numpy()
    levels = sorted(pd.unique(b), key=_natural)
    if len(levels) < 2:
        raise InputError("leave-one-batch-out needs at least 2 batches; use --split stratified")
    out = []
    for lv in levels:
        te = np.flatnonzero(b == lv)
        if len(te) < min_test:
            continue
        tr = np.flatnonzero(b != lv)
        if y is not None:
            missing = set(np.unique(np.asarray(y)[te])) - set(np.unique(np.asarray(y)[tr]))
            if missing:
                raise InputError(
                    f"holding out batch {lv!r} leaves no training sample of class(es) {sorted(map(str, missing))}; "
                    "leave-one-batch-out cannot evaluate it — use --split stratified"
                )
        out.append(Split(f"batch={lv}", tr, te, group=lv))
    return out


def train_val_split(y: np.ndarray, val_fraction: float = 0.15, seed: int = 0,
                    stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Inner split of training rows into fit and early-stopping validation positions.

    Stratified when every stratum has at least 2 members; always leaves at least one validation row
    and one training row per stratum where possible.
    """
    y = np.asarray(y)
    n = len(y)
    if not 0 < val_fraction < 1:
        raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, int(round(val_fraction * n)))
    strata = _strata(y) if stratify else np.zeros(n, int)
    k = len(np.unique(strata))
    if stratify and np.bincount(strata).min() >= 2 and k <= n_val <= n - k:
        sss = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        tr, va = next(sss.split(np.zeros(n), strata))
    else:
        perm = np.random.default_rng(seed).permutation(n)
        va, tr = perm[:n_val], perm[n_val:]
    return np.sort(tr), np.sort(va)


def make_splits(kind: str, y: np.ndarray, batches: np.ndarray | None = None, n_splits: int = 5,
                n_repeats: int = 1, seed: int = 0, task: str = "classification") -> list[Split]:
    """Build splits by name: ``stratified`` (repeated k-fold), ``kfold`` (unstratified) or ``lobo``."""
    if kind == "stratified":
        return stratified_kfold(y, n_splits, n_repeats, seed, stratify=True)
    if kind == "kfold":
        return stratified_kfold(y, n_splits, n_repeats, seed, stratify=False)
    if kind == "lobo":
        if batches is None:
            raise InputError("leave-one-batch-out needs a batch column; pass --batch-column")
        return leave_one_batch_out(batches, y if task == "classification" else None)
    raise InputError(f"unknown split {kind!r}; use one of {', '.join(SPLIT_KINDS)}")


def _strata(y: np.ndarray) -> np.ndarray:
    """Integer strata: the classes, or quintiles of a continuous target."""
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.floating) and len(np.unique(y[~np.isnan(y)])) > 20:
        q = np.nanquantile(y, [0.2, 0.4, 0.6, 0.8])
        return np.searchsorted(q, y)
    return pd.factorize(pd.Series(y).astype(str), sort=True)[0]


def _natural(s: str):
    # "2" < "10" for numeric batch names, lexical otherwise.
    try:
        return (0, float(s), "")
    except ValueError:
        return (1, 0.0, s)
