"""Checks that a cohort can train a model, run before any fold is fitted: enough genes, every class
with at least two labelled samples, and no covariate or batch column without a single value.

Each failure is an :class:`~genexflow.errors.InputError` that names the class, column or samples and says
what to change; nothing is dropped or guessed silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from genexflow.cohort import Cohort
from genexflow.errors import InputError

#: Fewest genes a model is trained on (the pathway tokens of unannotated genes come from k-means with at
#: least 4 gene clusters).
MIN_GENES = 4
#: Fewest labelled samples per class: one sample cannot be both trained on and evaluated.
MIN_CLASS_SIZE = 2


def _missing(col: pd.Series) -> pd.Series:
    """True where a sheet value is absent (NaN/None or an empty string)."""
    return col.isna() | col.astype("string").str.strip().eq("").fillna(True)


def check_trainable(cohort: Cohort, label: str, task: str = "classification",
                    covariates: Sequence[str] = (), batch_column: str | None = None) -> None:
    """Raise an :class:`InputError` when ``cohort`` cannot train a ``task`` model on ``label``.

    Parameters
    ----------
    cohort : Cohort of shape (n_samples, n_genes)
    label : sample-sheet column to predict
    task : {"classification", "regression"}
    covariates : sample-sheet columns given to the model
    batch_column : sample-sheet column with the batch, optional

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> sheet = pd.DataFrame({"y": ["a", "a", "b"]}, index=["s1", "s2", "s3"])
    >>> check_trainable(Cohort(np.zeros((3, 5), np.float32), list("ABCDE"), sheet), "y")
    Traceback (most recent call last):
    ...
    genexflow.errors.InputError: class 'b' of 'y' has 1 labelled sample (s3); every class needs at least 2: ...
    """
    if cohort.n_genes < MIN_GENES:
        raise InputError(
            f"cohort {cohort.name!r} has {cohort.n_genes} gene(s); training needs at least {MIN_GENES} "
            "(is the matrix transposed? pass --orientation samples|genes, or check the gene filter)")
    col = cohort.column(label)
    for name in [*covariates, *([batch_column] if batch_column else [])]:
        values = cohort.column(name)
        if _missing(values).all():
            what = "batch column" if name == batch_column else "covariate"
            raise InputError(f"{what} {name!r} has no value in any of the {cohort.n_samples} samples; fill it in "
                             f"the sample sheet or leave it out (drop it from --covariates / --batch-column)")
    if task != "classification":
        return
    labelled = col[~_missing(col)].astype(str)
    sizes = labelled.value_counts()
    small = sizes[sizes < MIN_CLASS_SIZE]
    if len(small):
        cls = str(small.index[0])
        ids = ", ".join(map(str, labelled.index[labelled == cls][:5]))
        more = f" (and {len(small) - 1} more small class(es): {', '.join(map(str, small.index[1:4]))})" \
            if len(small) > 1 else ""
        raise InputError(
            f"class {cls!r} of {label!r} has {int(small.iloc[0])} labelled sample ({ids}); every class needs at "
            f"least {MIN_CLASS_SIZE}: add samples, merge it into another class, or blank its label to leave it "
            f"out{more}")
