"""Input checks shared by the preprocessing estimators (one place for the error wording)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from genexflow.errors import InputError, NotFittedError


def as_matrix(X: Any, what: str = "expression matrix", allow_nan: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(float64 ndarray of shape (n_samples, n_genes), gene names or None)``.

    A DataFrame keeps its column names (used in error messages and as ``feature_names_in_``).
    """
    names = None
    if isinstance(X, pd.DataFrame):
        names = np.asarray(X.columns.astype(str), dtype=object)
        X = X.to_numpy()
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be numeric: {exc}") from exc
    if arr.ndim != 2:
        raise InputError(f"{what} must be 2-D (samples x genes), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{what} is empty (shape {arr.shape})")
    if not allow_nan:
        check_finite(arr, what, names)
    elif np.isinf(arr).any():
        raise InputError(f"{what} contains infinite values; fix or remove them before preprocessing")
    return arr, names


def check_finite(X: np.ndarray, what: str, names: Sequence[str] | None = None, hint: str = "") -> None:
    """Raise an :class:`InputError` naming the genes that hold NaN/inf values."""
    bad = ~np.isfinite(X)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        hint = hint or "impute them first (genexflow impute) or drop those genes"
        raise InputError(
            f"{what} has {int(bad.sum())} missing/non-finite values in {len(cols)} genes "
            f"(e.g. {gene_list(names, cols)}); {hint}"
        )


def gene_list(names: Sequence[str] | None, cols: np.ndarray, limit: int = 5) -> str:
    """``"TP53, MYC, … (+3 more)"`` or column positions when no names are known."""
    cols = np.asarray(cols)
    if names is None:
        shown = [f"column {int(c)}" for c in cols[:limit]]
    else:
        shown = [str(names[int(c)]) for c in cols[:limit]]
    more = f" (+{len(cols) - limit} more)" if len(cols) > limit else ""
    return ", ".join(shown) + more


def as_labels(values: Any, n: int, what: str = "batch") -> np.ndarray:
    """1-D array of labels of length ``n`` (no missing values)."""
    if values is None:
        raise InputError(f"{what} labels are required (one per sample)")
    if isinstance(values, pd.Series | pd.Index):
        values = values.to_numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if len(arr) != n:
        raise InputError(f"{what} has {len(arr)} labels but the matrix has {n} samples")
    if pd.isna(pd.Series(arr)).any():
        raise InputError(f"{what} has missing labels; every sample needs a {what}")
    return arr


def check_fitted(est: Any, attribute: str) -> None:
    """Raise :class:`genexflow.errors.NotFittedError` unless ``est`` has the fitted ``attribute``."""
    if not hasattr(est, attribute):
        raise NotFittedError(f"{type(est).__name__} is not fitted yet; call fit() first")


def check_n_genes(est: Any, X: np.ndarray, names: np.ndarray | None) -> None:
    """New data must have the training genes, in the training order."""
    n_in = est.n_features_in_
    if X.shape[1] != n_in:
        raise InputError(
            f"{type(est).__name__} was fitted on {n_in} genes but got {X.shape[1]}; "
            "pass the genes of the training data in the same order"
        )
    trained = getattr(est, "feature_names_in_", None)
    if names is not None and trained is not None and not np.array_equal(names, trained):
        pos = int(np.flatnonzero(names != trained)[0])
        raise InputError(
            f"gene order differs from training at column {pos} ({names[pos]!r} vs {trained[pos]!r}); "
            "reorder the columns to the training gene order"
        )


_CONTROLLER = None


def single_threaded_blas():
    """Context manager: BLAS on one thread.

    The products here are thin (a few design columns times many genes) and memory-bound; on a busy
    2-core machine a second BLAS thread makes them 10x slower through contention, never faster.
    """
    global _CONTROLLER
    # lazy: only needed to pin BLAS threads
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")
