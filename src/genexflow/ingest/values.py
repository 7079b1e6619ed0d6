"""What the numbers are, and which cells cannot be right: value-type detection, plausible magnitudes,
bad and missing cells named by sample and gene.

The rules are written down in ``docs/ingest.md`` ("Value types"); keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from genexflow.cohort import ValueType
from genexflow.errors import InputError

#: Largest plausible absolute value per value type. Counts: no sequencing run puts 1e10 reads on one
#: gene of one sample (whole libraries are ~1e7-1e9). TPM sums to 1e6 per sample by definition.
#: FPKM: all reads on one 100-bp gene gives 1e7. Log expression: log2 of 1e30 is ~100.
MAX_MAGNITUDE: dict[ValueType, float] = {
    ValueType.COUNTS: 1e10,
    ValueType.TPM: 1e6,
    ValueType.FPKM: 1e7,
    ValueType.LOG: 100.0,
}
#: Integer-valued data whose maximum reaches this is counts ("a wide range"); below it, log scale.
COUNTS_MIN_MAX = 50.0
#: Share of whole numbers among the finite cells that makes a matrix integer-valued.
INTEGER_SHARE = 0.99


class Cell(NamedTuple):
    """One matrix cell, named by sample and gene."""

    sample: str
    gene: str
    value: float

    def __str__(self) -> str:
        return f"{self.sample}/{self.gene}={self.value:g}"


def describe(cells: list[Cell], limit: int = 5) -> str:
    """``S03/TP53=-5, S04/EGFR=nan`` (the first ``limit``, then ``… (N in all)``)."""
    text = ", ".join(map(str, cells[:limit]))
    return text + (f", … ({len(cells)} in all)" if len(cells) > limit else "")


def _cells(mask: np.ndarray, X: np.ndarray, samples, genes, limit: int | None = None) -> list[Cell]:
    rows, cols = np.nonzero(mask)
    if limit is not None:
        rows, cols = rows[:limit], cols[:limit]
    s, g = pd.Index(samples).astype(str), pd.Index(genes).astype(str)
    return [Cell(s[i], g[j], float(X[i, j])) for i, j in zip(rows, cols, strict=True)]


def missing_cells(X: np.ndarray, samples, genes, limit: int | None = None) -> list[Cell]:
    """The cells holding NaN (missing values), row by row."""
    X = np.asarray(X)
    if not np.issubdtype(X.dtype, np.floating):
        return []
    return _cells(np.isnan(X), X, samples, genes, limit)


def bad_cells(X: np.ndarray, value_type: str | ValueType, samples, genes,
              limit: int | None = None) -> list[Cell]:
    """Cells that cannot hold a value of ``value_type``: infinite, negative (counts, TPM, FPKM) or beyond
    :data:`MAX_MAGNITUDE` in absolute value."""
    vt = ValueType.parse(value_type)
    X = np.asarray(X)
    Xf = X.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        bad = np.isinf(Xf) | (np.abs(Xf) > MAX_MAGNITUDE[vt])
        if vt != ValueType.LOG:
            bad |= Xf < 0
    return _cells(bad, X, samples, genes, limit)


def implausible_mask(X: np.ndarray, value_type: str | ValueType) -> np.ndarray:
    """Finite cells beyond the plausible magnitude of ``value_type`` (boolean, same shape as ``X``)."""
    Xf = np.asarray(X).astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        return np.isfinite(Xf) & (np.abs(Xf) > MAX_MAGNITUDE[ValueType.parse(value_type)])


@dataclass
class ValueTypeGuess:
    """The value type read off the numbers, the rule that decided it and the cells that break it."""

    value_type: ValueType
    rule: str
    bad: list[Cell] = field(default_factory=list)


def detect_value_type(X: np.ndarray, samples, genes) -> ValueTypeGuess:
    """Read the value type off the numbers (see ``docs/ingest.md``).

    1. Integer-valued (at least 99 % of the finite cells whole numbers) with a maximum of 50 or more:
       **counts**. Negative cells there are bad cells (a stray ``-5`` is a corrupt count, not evidence of
       log data); they are returned in ``bad``, with non-integer and implausibly large cells.
    2. Any negative value, or a maximum below 50: **log-expression**.
    3. Per-sample sums all within 5 % of one million: **tpm**.
    4. Anything else (non-integer, non-negative, wide range, sums not 1e6) could be TPM of a filtered
       gene set or FPKM: an :class:`InputError` asks the user to say.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_genes)
    samples, genes : the row and column IDs (for naming bad cells)

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[10, 200, -5], [3, 0, 120]])
    >>> g = detect_value_type(X, ["s1", "s2"], ["A", "B", "C"])
    >>> g.value_type.value, [str(c) for c in g.bad]
    ('counts', ['s1/C=-5'])
    """
    X = np.asarray(X)
    Xf = X.astype(np.float64, copy=False)
    finite = np.isfinite(Xf)
    vals = Xf[finite]
    if vals.size == 0:
        raise InputError("the matrix has no finite values; cannot tell its value type")
    whole = vals == np.round(vals)
    if whole.mean() >= INTEGER_SHARE and vals.max() >= COUNTS_MIN_MAX:
        with np.errstate(invalid="ignore"):
            broken = ~finite & ~np.isnan(Xf) | (Xf < 0) | (finite & (Xf != np.round(Xf))) | (
                np.abs(Xf) > MAX_MAGNITUDE[ValueType.COUNTS])
        return ValueTypeGuess(ValueType.COUNTS, f"integer-valued ({whole.mean():.1%} whole numbers) with maximum "
                              f"{vals.max():g} >= {COUNTS_MIN_MAX:g}: counts",
                              _cells(broken, X, samples, genes))
    if vals.min() < 0:
        return ValueTypeGuess(ValueType.LOG, f"non-integer values with negatives (minimum {vals.min():g}): "
                              "log-expression")
    if vals.max() < COUNTS_MIN_MAX:
        return ValueTypeGuess(ValueType.LOG, f"maximum {vals.max():g} < {COUNTS_MIN_MAX:g}: log-expression")
    sums = np.nansum(np.where(finite, Xf, 0), axis=1)
    if np.all(np.abs(sums / 1e6 - 1) < 0.05):
        return ValueTypeGuess(ValueType.TPM, "non-integer, every sample sums to 1e6 (within 5%): tpm",
                              bad_cells(X, ValueType.TPM, samples, genes))
    raise InputError("cannot tell TPM from FPKM (non-integer values, samples not summing to 1e6); "
                     "pass --value-type tpm or fpkm")


def check_cells(X: np.ndarray, value_type: str | ValueType, samples, genes, what: str = "matrix") -> None:
    """Raise an :class:`InputError` naming the first bad cells (:func:`bad_cells`) of ``X``."""
    vt = ValueType.parse(value_type)
    cells = bad_cells(X, vt, samples, genes)
    if cells:
        raise InputError(
            f"{what}: {len(cells)} cell(s) cannot be {vt.value} (negative, infinite or beyond "
            f"±{MAX_MAGNITUDE[vt]:g}): {describe(cells)}; fix or remove these samples (genexflow ingest "
            "quarantines them)")
