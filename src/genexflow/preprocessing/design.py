"""Design matrices for batch correction: batch indicators plus sample-sheet covariates.

Follows R's ``model.matrix`` with treatment contrasts, as ``sva::ComBat(mod = model.matrix(~a + b))``
sees it: a categorical column (string, bool or ``category`` dtype) becomes indicator columns for all
levels but the first (levels sorted); a numeric column enters as is. ComBat then drops the
intercept, so the result does not depend on which level is the first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from genexflow.errors import InputError


class CovariateEncoder:
    """Frozen encoding of covariate columns into design-matrix columns.

    Parameters
    ----------
    covariates : DataFrame of shape (n_samples, n_covariates) or array-like, at fit
        Categorical columns are one-hot encoded (first level dropped); numeric columns are kept.

    Attributes
    ----------
    columns_ : list of str
        Covariate names in order.
    levels_ : dict of str -> list or None
        Sorted levels of each categorical column (None for numeric columns).
    names_ : list of str
        Names of the design columns produced by :meth:`transform`.
    """

    def fit(self, covariates: Any, n: int) -> CovariateEncoder:
        df = self._frame(covariates, n)
        self.columns_ = [str(c) for c in df.columns]
        self.levels_: dict[str, list | None] = {}
        self.names_: list[str] = []
        for col in df.columns:
            s = df[col]
            if _is_categorical(s):
                levels = sorted(pd.unique(s.astype(str)))
                self.levels_[str(col)] = levels
                self.names_ += [f"{col}[{lv}]" for lv in levels[1:]]
            else:
                self.levels_[str(col)] = None
                self.names_.append(str(col))
        return self

    def transform(self, covariates: Any, n: int) -> np.ndarray:
        """Design columns of shape (n, len(names_)) for the given covariates."""
        if not self.columns_:
            return np.zeros((n, 0))
        df = self._frame(covariates, n)
        missing = [c for c in self.columns_ if c not in df.columns.astype(str)]
        if missing:
            raise InputError(f"covariates {', '.join(missing)} were used in fit but are missing now")
        df.columns = df.columns.astype(str)
        out = []
        for col in self.columns_:
            s = df[col]
            levels = self.levels_[col]
            if levels is None:
                try:
                    out.append(np.asarray(s, dtype=np.float64)[:, None])
                except (TypeError, ValueError) as exc:
                    raise InputError(f"covariate {col!r} was numeric in fit but is not now: {exc}") from exc
            else:
                vals = s.astype(str).to_numpy()
                unseen = sorted(set(vals) - set(levels))
                if unseen:
                    raise InputError(
                        f"covariate {col!r} has levels not seen in fit: {', '.join(unseen[:5])}; "
                        f"known levels: {', '.join(levels)}"
                    )
                out.append((vals[:, None] == np.asarray(levels[1:], dtype=object)[None, :]).astype(np.float64))
        return np.hstack(out) if out else np.zeros((n, 0))

    @staticmethod
    def _frame(covariates: Any, n: int) -> pd.DataFrame:
        if covariates is None:
            return pd.DataFrame(index=range(n))
        if isinstance(covariates, pd.Series):
            covariates = covariates.to_frame()
        if not isinstance(covariates, pd.DataFrame):
            arr = np.asarray(covariates)
            if arr.ndim == 1:
                arr = arr[:, None]
            covariates = pd.DataFrame(arr, columns=[f"covariate{i}" for i in range(arr.shape[1])])
        if len(covariates) != n:
            raise InputError(f"covariates have {len(covariates)} rows but the matrix has {n} samples")
        na = covariates.isna().any()
        if na.any():
            raise InputError(
                f"covariates {', '.join(map(str, na[na].index))} have missing values; "
                "fill them or drop those samples"
            )
        return covariates.reset_index(drop=True)


def _is_categorical(s: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s) or isinstance(
        s.dtype, pd.CategoricalDtype
    )


def batch_design(batch_index: np.ndarray, n_batch: int, ref: int | None = None) -> np.ndarray:
    """Batch indicator columns (``model.matrix(~ -1 + batch)``); the reference column is all ones."""
    D = np.zeros((len(batch_index), n_batch))
    D[np.arange(len(batch_index)), batch_index] = 1.0
    if ref is not None:
        D[:, ref] = 1.0
    return D


def check_confounding(design: np.ndarray, n_batch: int, names: list[str], tool: str = "ComBat") -> None:
    """sva's confounding checks, with messages that say what to remove."""
    if np.linalg.matrix_rank(design) >= design.shape[1]:
        return
    n_cov = design.shape[1] - n_batch
    if n_cov == 1:
        raise InputError(
            f"the covariate {names[0]} is confounded with batch (it is predictable from the batch); "
            f"remove it from the covariates and rerun {tool}"
        )
    cov = design[:, n_batch:]
    if np.linalg.matrix_rank(cov) < cov.shape[1]:
        raise InputError(
            f"the covariates ({', '.join(names)}) are confounded with each other; remove one or more "
            "so the design has full rank"
        )
    # find which covariate columns make the design rank-deficient, to name them
    culprits = []
    base = design[:, :n_batch]
    for j in range(n_cov):
        if np.linalg.matrix_rank(np.hstack([base, cov[:, [j]]])) < n_batch + 1:
            culprits.append(names[j])
    which = ", ".join(culprits) if culprits else ", ".join(names)
    raise InputError(
        f"at least one covariate is confounded with batch ({which}); remove the confounded covariates "
        f"and rerun {tool}"
    )
