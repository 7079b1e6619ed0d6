"""Drift scenarios built from simulated (or real) cohorts, for tests, demos and benchmarks.

The simulator draws genes, pathways and batch effects from its seed, so two seeds are two different
worlds. "Same distribution" therefore means two random halves of ONE cohort (:func:`split`); the drift
scenarios change one thing relative to such a half:

* batch shift: samples of a batch the reference never saw (simulate with an extra batch label and keep it
  out of the reference), or the same samples relabelled as a known batch (pure location/scale shift);
* covariate shift: :func:`resample_by` draws rows with weights (e.g. mostly men, mostly old);
* a new subtype: :func:`add_subtype` activates pathway programs far beyond the reference range in a share
  of samples, as the simulator's pathway activities do (member genes respond with their own loadings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from genexflow.cohort import Cohort, ValueType
from genexflow.errors import InputError


def split(cohort: Cohort, fraction: float = 0.5, seed: int = 0) -> tuple[Cohort, Cohort]:
    """Two disjoint random parts of one cohort (same distribution): ``fraction`` of rows, the rest."""
    if not 0 < fraction < 1:
        raise InputError(f"fraction must be in (0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(cohort.n_samples)
    k = int(round(fraction * cohort.n_samples))
    return cohort.subset(np.sort(perm[:k])), cohort.subset(np.sort(perm[k:]))


def resample_by(cohort: Cohort, weight: Callable[[pd.DataFrame], np.ndarray] | np.ndarray, n: int,
                seed: int = 0) -> Cohort:
    """Draw ``n`` rows without replacement with probability proportional to ``weight`` (covariate shift).

    Examples
    --------
    >>> from genexflow.simulate import simulate_cohort
    >>> c, _ = simulate_cohort(n_samples=100, n_genes=100, seed=0)
    >>> men = resample_by(c, lambda s: np.where(s["sex"] == "M", 9.0, 1.0), 40)
    >>> (men.samples["sex"] == "M").mean() > 0.6
    True
    """
    w = np.asarray(weight(cohort.samples) if callable(weight) else weight, np.float64)
    if w.shape != (cohort.n_samples,) or (w < 0).any() or w.sum() <= 0:
        raise InputError("weights must be non-negative, one per sample, not all zero")
    if n > int((w > 0).sum()):
        raise InputError(f"cannot draw {n} rows from {(w > 0).sum()} with positive weight")
    rows = np.random.default_rng(seed).choice(cohort.n_samples, size=n, replace=False, p=w / w.sum())
    return cohort.subset(np.sort(rows))


def add_subtype(
    cohort: Cohort,
    pathways: dict[str, Sequence[str]],
    *,
    shift: float = 3.0,
    fraction: float = 0.5,
    label: str = "subtype_NEW",
    label_column: str = "label",
    seed: int = 0,
) -> Cohort:
    """Turn a share of samples into a new subtype by activating pathway programs.

    Every member gene ``g`` of the given pathways gets a loading ``w_g ~ N(0.8, 0.25)`` (sign flipped with
    probability 0.2, as in :func:`genexflow.simulate.simulate_cohort`) and its log-scale expression moves
    by ``shift * w_g`` in the chosen samples: ``shift`` is in SDs of the simulator's pathway activity, so
    3 places the subtype where almost no reference sample lies. Counts are scaled and redrawn (Poisson)
    so they stay counts.

    Parameters
    ----------
    cohort : Cohort
    pathways : mapping of str to sequence of str
        Gene sets to activate (e.g. ``{k: truth.pathways[k] for k in truth.informative_pathways[2:]}``).
    shift : float
    fraction : float
        Share of samples that become the new subtype (chosen at random).
    label, label_column : str
        The new subtype's label (written when ``label_column`` exists).
    seed : int

    Returns
    -------
    Cohort
        A copy; ``meta["new_subtype_samples"]`` lists the changed samples.
    """
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    members = sorted({g for genes in pathways.values() for g in genes} & set(cohort.genes))
    if not members:
        raise InputError("none of the pathway genes are in the cohort")
    cols = cohort.genes.get_indexer(members)
    w = rng.normal(0.8, 0.25, len(cols)) * rng.choice([1, -1], size=len(cols), p=[0.8, 0.2])
    rows = np.sort(rng.choice(cohort.n_samples, size=max(1, int(round(fraction * cohort.n_samples))), replace=False))
    X = cohort.X.copy()
    block = X[np.ix_(rows, cols)].astype(np.float64)
    if cohort.value_type is ValueType.COUNTS:
        X[np.ix_(rows, cols)] = rng.poisson(block * np.exp(shift * w)[None, :]).astype(X.dtype)
    elif cohort.value_type is ValueType.LOG:
        X[np.ix_(rows, cols)] = (block + shift * w[None, :] / np.log(2)).astype(X.dtype)
    else:
        X[np.ix_(rows, cols)] = (block * np.exp(shift * w)[None, :]).astype(X.dtype)
    samples = cohort.samples.copy()
    if label_column in samples.columns:
        samples[label_column] = samples[label_column].astype(object)
        samples.iloc[rows, samples.columns.get_loc(label_column)] = label
    meta = dict(cohort.meta, new_subtype_samples=list(cohort.sample_ids[rows]), new_subtype_pathways=list(pathways))
    return Cohort(X=X, genes=cohort.genes, samples=samples, value_type=cohort.value_type, name=cohort.name, meta=meta)


def relabel(cohort: Cohort, column: str, mapping: dict[str, str]) -> Cohort:
    """Copy of ``cohort`` with values of ``column`` renamed (e.g. an unseen batch called a known one)."""
    samples = cohort.samples.copy()
    samples[column] = samples[column].astype(str).replace(mapping)
    return Cohort(X=cohort.X, genes=cohort.genes, samples=samples, value_type=cohort.value_type, name=cohort.name,
                  meta=dict(cohort.meta))
