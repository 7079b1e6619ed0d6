"""Turn a user's expression table + sample sheet into the graph inputs of a serving artifact.

Shared by the Triton client, the batch scorer, infra validation and the registry gate, so every path feeds
the model identically: genes aligned by ID to the training order (absent genes -> NaN, filled inside the
graph as training did; too many absent -> clear error), covariates encoded with the training encoding,
batch labels mapped to training batch levels (-1 = unseen).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from genexflow.bundle import BATCH_STATUS_LABELS, BundleInfo, align_genes, encode_covariates
from genexflow.cohort import ValueType
from genexflow.errors import InputError
from genexflow.ingest.values import MAX_MAGNITUDE, check_cells


def build_inputs(info: BundleInfo, frame: pd.DataFrame, samples: pd.DataFrame | None, input_names: list[str],
                 max_missing_fraction: float = 0.2) -> tuple[dict[str, np.ndarray], list[str]]:
    """Graph inputs for ``frame`` (samples x genes, columns = gene IDs).

    Parameters
    ----------
    info : BundleInfo
        The model's input contract.
    frame : DataFrame of shape (n_samples, n_any_genes)
        Raw expression, same value type as training; extra genes are ignored.
    samples : DataFrame with n_samples rows, optional
        Sample sheet in ``frame`` row order (covariate and batch columns). Needed when the graph has
        ``covariates`` or ``batch_index`` inputs.
    input_names : list of str
        The graph's inputs (``expression`` and optionally ``covariates``, ``batch_index``).

    Returns
    -------
    feeds : dict of name -> ndarray
        ``expression`` float32 (n, G_in); ``covariates`` float32 (n, C); ``batch_index`` int64 (n,).
    missing : list of str
        Training genes absent from ``frame``.
    """
    if list(frame.columns) == info.input_genes and frame.dtypes.eq(np.float32).all():
        # already in training order (the batch reader decodes straight into it): no copy; absent genes
        # are NaN columns, counted as align_genes would
        X = frame.to_numpy(np.float32, copy=False)
        absent = np.isnan(X).all(axis=0) if len(X) else np.zeros(X.shape[1], bool)
        missing = [g for g, a in zip(info.input_genes, absent, strict=True) if a]
        if len(missing) > max_missing_fraction * len(info.input_genes):
            align_genes(frame.loc[:, ~absent], info.input_genes, max_missing_fraction)  # raises its message
    else:
        X, missing = align_genes(frame, info.input_genes, max_missing_fraction)
    if not np.isfinite(np.nan_to_num(X, nan=0.0)).all() or (X.size and np.nanmax(np.abs(X), initial=0) >
                                                          MAX_MAGNITUDE[ValueType.parse(info.value_type)]) or (
            info.value_type != ValueType.LOG and (np.nan_to_num(X) < 0).any()):
        # name the cells on the values as sent (float64): a huge finite value overflows float32 to inf,
        # and calling it "infinite" would send the user looking for the wrong thing
        genes = [g for g in info.input_genes if g in frame.columns]
        check_cells(frame[genes].to_numpy(np.float64), info.value_type, frame.index, genes,
                    what=f"expression for a {info.value_type} model")
        raise InputError(f"expression has values beyond float32 for a {info.value_type} model; send raw values "
                         "in the value type the model was trained on")
    feeds: dict[str, np.ndarray] = {"expression": X}
    needs = [n for n in input_names if n in ("covariates", "batch_index")]
    if needs and samples is None:
        raise InputError(f"the model needs a sample sheet for {', '.join(needs)} "
                         f"(columns: {', '.join(required_columns(info)) or 'none'}); pass --samples")
    if samples is not None and len(samples) != len(frame):
        raise InputError(f"sample sheet has {len(samples)} rows but the expression table has {len(frame)}")
    if "covariates" in input_names:
        feeds["covariates"] = encode_covariates(samples, info.covariates)
    if "batch_index" in input_names:
        feeds["batch_index"] = info.batch_index(samples)
    unknown = set(input_names) - set(feeds)
    if unknown:
        raise InputError(f"the model expects inputs {sorted(unknown)} that genexflow does not know how to build")
    return feeds, missing


def required_columns(info: BundleInfo) -> list[str]:
    """Sample-sheet columns a request needs (covariates, then the batch column)."""
    cols = [c.name for c in info.covariates]
    if info.batch_column:
        cols.append(info.batch_column)
    return cols


def output_frame(info: BundleInfo, outputs: dict[str, np.ndarray], sample_ids: pd.Index | list) -> pd.DataFrame:
    """Predictions table: one row per sample, ``prediction`` (label or value) + per-class probabilities."""
    idx = pd.Index(list(map(str, sample_ids)), name="sample_id")
    if "probabilities" in outputs:
        p = outputs["probabilities"]
        df = pd.DataFrame(p, index=idx, columns=[f"p_{c}" for c in info.class_names])
        df.insert(0, "prediction", np.asarray(info.class_names, dtype=object)[p.argmax(axis=1)])
    else:
        df = pd.DataFrame({"prediction": outputs["prediction"][:, 0]}, index=idx)
    if "batch_status" in outputs:  # how each row's batch was corrected (unseen batches are flagged)
        df["batch_correction"] = np.asarray(BATCH_STATUS_LABELS, dtype=object)[np.asarray(outputs["batch_status"]).reshape(-1)]
    return df

