"""The reference profile: what drift monitoring needs to know about the training cohort.

Training builds it with :func:`build_reference_profile` and saves it in the model bundle under
``reference/``; every drift check compares a new cohort against it. It holds

* per-gene summaries sufficient for fast two-sample tests: on a probability grid of ``m`` points, the
  reference quantiles ``q_j`` and the exact reference ECDF just at and just below each ``q_j`` (so the
  KS statistic, PSI bins and a quantile Wasserstein distance are read without the raw matrix), plus
  mean, SD and missing fraction;
* per-sample compact features (the only thing Evidently sees): QC (library size, detected genes, missing
  fraction, mean / SD of log expression), pathway scores, PCA coordinates of the top-variance genes, the
  model's latent dimensions and predictions when given;
* the sample-sheet covariates, batch levels and labels; reference performance when labels and
  predictions are given.

On disk (a few MB for 20,000 genes)::

    reference/
      profile.json        metadata, gene sets, performance
      genes.parquet       per-gene stats + quantile sketch (m quantiles, ECDF at/below them as uint16)
      features.parquet    per-sample compact features (n_ref rows, capped)
      samples.parquet     covariates / batch / label columns for the same rows
      pca.parquet         PCA loadings of the built-in latent space (top-variance genes)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.utils.extmath import randomized_svd

from genexflow import drift_kernels as K
from genexflow.cohort import Cohort, ValueType
from genexflow.errors import InputError
from genexflow.io import json_default
from genexflow.metrics import evaluate_labels
from genexflow.priors.genesets import load_gene_sets, membership_matrix, restrict_gene_sets

PROFILE_VERSION = 1
QC_COLUMNS = ("qc_log10_library_size", "qc_detected_fraction", "qc_missing_fraction", "qc_mean_log_expression",
              "qc_sd_log_expression")
FEATURE_GROUPS = {"qc": "qc_", "pathway": "pw_", "pca": "pc_", "latent": "latent_", "prediction": "pred_"}
_U16 = 65535.0
STAT_COLUMNS = ("mean", "sd", "n_valid", "missing_fraction", "anchor_mean")


@dataclass
class ReferenceProfile:
    """Reference statistics of a training cohort (see the module docstring for the contents).

    Attributes
    ----------
    meta : dict
        value_type, n_samples, label/batch columns, covariates, class names, task, sources, grid size...
    genes : list of str, length G
    gene_stats : DataFrame of shape (G, 5)
        ``mean``, ``sd``, ``n_valid``, ``missing_fraction`` of log-scale expression, and ``anchor_mean``
        (finite for the anchor genes of the per-sample scale offset, see ``_kernels.sample_offsets``).
    probs : ndarray of shape (m,)
        Probability grid of the sketch.
    quantiles, ecdf_le, ecdf_lt : ndarray of shape (G, m)
        Reference quantiles at ``probs`` and the reference ECDF at (``<=``) and below (``<``) them.
    features : DataFrame of shape (n_ref, F)
        Compact per-sample features (prefixes ``qc_``, ``pw_``, ``pc_``, ``latent_``, ``pred_``).
    samples : DataFrame of shape (n_ref, C)
        Covariate, batch and label columns of the same rows, plus bool ``_latent_fit`` (rows used to fit
        the built-in PCA; the others calibrate novelty scores out of sample).
    gene_sets : dict of str to list of str
        Gene sets restricted to ``genes`` (pathway scores and enrichment of drifted genes).
    pca : DataFrame of shape (n_top_genes, 2 + k)
        ``center``, ``scale`` and loadings ``pc_0..`` indexed by gene.
    """

    meta: dict[str, Any]
    genes: list[str]
    gene_stats: pd.DataFrame
    probs: np.ndarray
    quantiles: np.ndarray
    ecdf_le: np.ndarray
    ecdf_lt: np.ndarray
    features: pd.DataFrame
    samples: pd.DataFrame
    gene_sets: dict[str, list[str]] = field(default_factory=dict)
    pca: pd.DataFrame | None = None

    # ------------------------------------------------------------------ views
    @property
    def value_type(self) -> ValueType:
        return ValueType.parse(self.meta["value_type"])

    @property
    def n_samples(self) -> int:
        return int(self.meta["n_samples"])

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def columns(self, group: str) -> list[str]:
        """Feature columns of one group: ``qc``, ``pathway``, ``pca``, ``latent`` or ``prediction``."""
        prefix = FEATURE_GROUPS[group]
        return [c for c in self.features.columns if c.startswith(prefix)]

    def compute_features(
        self,
        cohort: Cohort,
        *,
        pathway_scores: Any = None,
        latent: Any = None,
        predictions: Any = None,
    ) -> pd.DataFrame:
        """Compact features of a new cohort, computed exactly as for the reference rows.

        QC, built-in pathway scores and PCA coordinates come from the expression matrix; model latent
        dimensions, model pathway scores and predictions must be passed (they need the model). Groups the
        reference has but the caller did not give are left out.

        Returns
        -------
        DataFrame of shape (n_samples, F') indexed by sample_id
        """
        frame = _expression_features(cohort, self)
        parts = [frame]
        if self.meta.get("pathway_source") == "provided":
            if pathway_scores is not None:
                parts.append(_prefixed(pathway_scores, "pw_", cohort.sample_ids, "pathway_scores"))
        if latent is not None:
            parts.append(_prefixed(latent, "latent_", cohort.sample_ids, "latent"))
        if predictions is not None:
            parts.append(prediction_frame(predictions, cohort.sample_ids, self.meta.get("class_names") or None))
        return pd.concat(parts, axis=1)

    # ------------------------------------------------------------------ IO
    def save(self, folder: str | Path) -> Path:
        """Write the profile to ``folder`` (created); returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        m = len(self.probs)
        table = self.gene_stats.copy()
        q = pd.DataFrame(self.quantiles.astype(np.float32), index=table.index,
                         columns=[f"q{j:03d}" for j in range(m)])
        le = pd.DataFrame(np.round(self.ecdf_le * _U16).astype(np.uint16), index=table.index,
                          columns=[f"le{j:03d}" for j in range(m)])
        lt = pd.DataFrame(np.round(self.ecdf_lt * _U16).astype(np.uint16), index=table.index,
                          columns=[f"lt{j:03d}" for j in range(m)])
        pd.concat([table, q, le, lt], axis=1).to_parquet(folder / "genes.parquet", compression="zstd")
        self.features.to_parquet(folder / "features.parquet", compression="zstd")
        samples = self.samples.copy()
        for col in samples.columns:  # parquet wants one type per column
            if samples[col].dtype == object:
                samples[col] = samples[col].astype("string")
        samples.to_parquet(folder / "samples.parquet")
        if self.pca is not None:
            self.pca.to_parquet(folder / "pca.parquet", compression="zstd")
        meta = dict(self.meta, probs=self.probs.tolist(), gene_sets=self.gene_sets,
                    profile_version=PROFILE_VERSION)
        (folder / "profile.json").write_text(json.dumps(meta, indent=1, default=json_default))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ReferenceProfile:
        """Read a profile written by :meth:`save` (``folder`` or a bundle folder holding ``reference/``)."""
        folder = Path(folder)
        if not (folder / "profile.json").exists() and (folder / "reference" / "profile.json").exists():
            folder = folder / "reference"
        if not (folder / "profile.json").exists():
            raise InputError(f"{folder}: no reference profile (profile.json); build one with "
                             "genexflow.profile.build_reference_profile or pass a model bundle")
        meta = json.loads((folder / "profile.json").read_text())
        if meta.get("profile_version", 0) > PROFILE_VERSION:
            raise InputError(f"{folder}: profile version {meta['profile_version']} is newer than this "
                             f"genexflow understands ({PROFILE_VERSION}); upgrade genexflow")
        probs = np.asarray(meta.pop("probs"), np.float64)
        gene_sets = meta.pop("gene_sets", {})
        table = pd.read_parquet(folder / "genes.parquet")
        m = len(probs)
        q = table[[f"q{j:03d}" for j in range(m)]].to_numpy(np.float32)
        le = table[[f"le{j:03d}" for j in range(m)]].to_numpy(np.float32) / _U16
        lt = table[[f"lt{j:03d}" for j in range(m)]].to_numpy(np.float32) / _U16
        stats = table[[c for c in STAT_COLUMNS if c in table.columns]].copy()
        samples = pd.read_parquet(folder / "samples.parquet")
        for col in samples.columns:
            if isinstance(samples[col].dtype, pd.StringDtype):
                samples[col] = samples[col].astype(object)
        pca = pd.read_parquet(folder / "pca.parquet") if (folder / "pca.parquet").exists() else None
        return cls(meta=meta, genes=[str(g) for g in table.index], gene_stats=stats, probs=probs, quantiles=q,
                   ecdf_le=le, ecdf_lt=lt, features=pd.read_parquet(folder / "features.parquet"),
                   samples=samples, gene_sets=gene_sets, pca=pca)

    def __repr__(self) -> str:
        groups = {g: len(self.columns(g)) for g in FEATURE_GROUPS}
        return (f"ReferenceProfile({self.n_samples} samples x {self.n_genes} genes, "
                f"value_type={self.value_type.value}, features={groups})")


# ---------------------------------------------------------------------------------------------- helpers
def _prefixed(values: Any, prefix: str, index: pd.Index, what: str) -> pd.DataFrame:
    """Wrap an array / DataFrame of per-sample values as prefixed float columns aligned to ``index``."""
    if isinstance(values, pd.DataFrame):
        if len(values) != len(index):
            raise InputError(f"{what} has {len(values)} rows for {len(index)} samples")
        frame = values.copy()
        if frame.index.isin(index).all() and not isinstance(frame.index, pd.RangeIndex):
            frame = frame.loc[index]
        cols = [c if str(c).startswith(prefix) else f"{prefix}{c}" for c in frame.columns]
        return pd.DataFrame(frame.to_numpy(np.float64), index=index, columns=cols)
    arr = np.asarray(values, np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != len(index):
        raise InputError(f"{what} must have shape (n_samples={len(index)}, k); got {arr.shape}")
    return pd.DataFrame(arr, index=index, columns=[f"{prefix}{i}" for i in range(arr.shape[1])])


def prediction_frame(predictions: Any, index: pd.Index, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Model outputs as features: class probabilities ``pred_prob_<class>`` (+ ``pred_label``), or
    ``pred_value`` for regression / ``pred_label`` for hard labels.

    Parameters
    ----------
    predictions : array-like of shape (n_samples,) or (n_samples, n_classes), or DataFrame
        Probabilities (2-D), predicted values (1-D numeric) or predicted labels (1-D strings).
    """
    if isinstance(predictions, pd.DataFrame):
        names = [str(c).removeprefix("pred_prob_") for c in predictions.columns]
        arr = predictions.to_numpy(np.float64)
    else:
        arr = np.asarray(predictions)
        names = list(class_names) if class_names else None
    if len(arr) != len(index):
        raise InputError(f"predictions have {len(arr)} rows for {len(index)} samples")
    if arr.ndim == 2:
        names = names or [str(i) for i in range(arr.shape[1])]
        if len(names) != arr.shape[1]:
            raise InputError(f"{arr.shape[1]} probability columns for {len(names)} class names")
        out = pd.DataFrame(arr.astype(np.float64), index=index, columns=[f"pred_prob_{c}" for c in names])
        out["pred_label"] = np.asarray(names, dtype=object)[arr.argmax(1)]
        return out
    if arr.dtype.kind in "fiu":
        return pd.DataFrame({"pred_value": arr.astype(np.float64)}, index=index)
    return pd.DataFrame({"pred_label": arr.astype(str).astype(object)}, index=index)


def _gene_positions(cohort: Cohort, genes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Column of each profile gene in ``cohort`` (-1 if absent) and the boolean presence mask."""
    pos = cohort.genes.get_indexer(pd.Index(list(genes)))
    return pos, pos >= 0


def _detection_threshold(X: np.ndarray, value_type: ValueType, seed: int = 0) -> float:
    """Value above which a gene counts as detected: 0 for counts/TPM/FPKM; for log-expression arrays
    (no natural zero) the 10th percentile of a 1e6-entry subsample of the reference."""
    if value_type is not ValueType.LOG:
        return 0.0
    rng = np.random.default_rng(seed)
    flat = X.reshape(-1)
    take = flat if flat.size <= 1_000_000 else flat[rng.integers(0, flat.size, 1_000_000)]
    take = take[np.isfinite(take)]
    return float(np.quantile(take, 0.1)) if take.size else 0.0


def _restricted_sets(gene_sets: Any, genes: Sequence[str], min_size: int, max_size: int) -> dict[str, list[str]]:
    if gene_sets is None:
        return {}

    sets = load_gene_sets(gene_sets) if isinstance(gene_sets, str | Path) else dict(gene_sets)
    return restrict_gene_sets(sets, genes, min_size=min_size, max_size=max_size)


def _expression_features(cohort: Cohort, profile: ReferenceProfile) -> pd.DataFrame:
    """QC, built-in pathway scores and PCA coordinates of ``cohort`` in one chunked pass."""
    vt = profile.value_type
    if cohort.value_type is not vt:
        raise InputError(f"new cohort is {cohort.value_type.value} but the reference is {vt.value}; "
                         "give the same value type the model was trained on")
    pos, present = _gene_positions(cohort, profile.genes)
    cols = pos[present]
    if len(cols) == 0:
        raise InputError("none of the reference genes occur in the new cohort; check the gene ID type "
                         "(harmonize with `genexflow ingest`)")
    mean = profile.gene_stats["mean"].to_numpy(np.float64)[present]
    sd = profile.gene_stats["sd"].to_numpy(np.float64)[present]
    present_genes = np.asarray(profile.genes, dtype=object)[present]
    sets = profile.gene_sets if profile.meta.get("pathway_source") == "builtin" else {}
    lib = K.library_sizes(cohort.X, cols) if vt is ValueType.COUNTS else None
    offset = new_sample_offsets(profile, cohort, pos, lib)
    return _features_pass(cohort.X, cols, present_genes, vt, mean, sd, sets, profile.pca,
                          float(profile.meta.get("detection_threshold", 0.0)), cohort.sample_ids, lib, offset)


def new_sample_offsets(profile: ReferenceProfile, cohort: Cohort, pos: np.ndarray,
                       lib: np.ndarray | None) -> np.ndarray | None:
    """Per-sample scale offsets of a new cohort against the profile's anchor genes (None for log data).

    ``pos`` is the column of each profile gene in ``cohort`` (-1 if absent); ``lib`` the library sizes
    over the profile genes present.
    """
    if "anchor_mean" not in profile.gene_stats.columns or not K.needs_offsets(profile.value_type):
        return None
    am = profile.gene_stats["anchor_mean"].to_numpy(np.float64)
    use = np.isfinite(am) & (pos >= 0)
    return K.sample_offsets(cohort.X, pos[use], am[use], profile.value_type, lib)


def _features_pass(
    X: np.ndarray,
    cols: np.ndarray,
    genes: np.ndarray,
    vt: ValueType,
    mean: np.ndarray,
    sd: np.ndarray,
    gene_sets: Mapping[str, Sequence[str]],
    pca: pd.DataFrame | None,
    detection_threshold: float,
    index: pd.Index,
    lib: np.ndarray | None,
    offset: np.ndarray | None,
) -> pd.DataFrame:
    """One pass over gene chunks accumulating QC sums, pathway-score sums and PCA projections."""
    n = X.shape[0]
    lib_full = K.library_sizes(X) if vt is ValueType.COUNTS else None
    s1 = np.zeros(n)
    s2 = np.zeros(n)
    cnt = np.zeros(n)
    det = np.zeros(n)

    names = list(gene_sets)
    M = membership_matrix(gene_sets, list(genes)) if names else np.zeros((len(genes), 0), np.float32)
    pw_sum = np.zeros((n, len(names)))
    pw_cnt = np.zeros((n, len(names)))
    if pca is not None:
        pca_pos = pd.Index(genes).get_indexer(pca.index)
        load_cols = [c for c in pca.columns if c.startswith("pc_")]
        loadings = pca[load_cols].to_numpy(np.float64)
        center = pca["center"].to_numpy(np.float64)
        scale = pca["scale"].to_numpy(np.float64)
        pc = np.zeros((n, len(load_cols)))
        sq = np.zeros(n)  # squared norm of the standardized top-gene vector, for the residual (SPE)
    safe_sd = np.where(sd > 1e-8, sd, 1.0)
    for sl, Y in K.iter_log_chunks(X, cols, vt, lib, offset):
        ok = ~np.isnan(Y)
        Yz = np.where(ok, Y, 0.0)
        s1 += Yz.sum(0)
        s2 += (Yz.astype(np.float64) ** 2).sum(0)
        cnt += ok.sum(0)
        det += (ok & (Y > detection_threshold)).sum(0)  # offsets keep zeros at zero
        if names:
            Z = np.where(ok, (Y - mean[sl, None]) / safe_sd[sl, None], 0.0).astype(np.float32)
            Mc = M[sl]
            pw_sum += Z.T @ Mc
            pw_cnt += ok.T.astype(np.float32) @ Mc
        if pca is not None:
            # PCA genes in this chunk: the positions of pca rows that fall inside sl.
            sel = np.flatnonzero((pca_pos >= sl.start) & (pca_pos < sl.stop))
            if len(sel):
                rows = pca_pos[sel] - sl.start
                Zp = (Y[rows].astype(np.float64) - center[sel, None]) / scale[sel, None]
                Zp = np.where(np.isnan(Zp), 0.0, Zp)  # missing -> the reference centre
                pc += Zp.T @ loadings[sel]
                sq += (Zp**2).sum(0)
    n_genes = len(cols)
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = s1 / np.maximum(cnt, 1)
        feats = {
            "qc_detected_fraction": det / n_genes,
            "qc_missing_fraction": 1.0 - cnt / n_genes,
            "qc_mean_log_expression": m1,
            "qc_sd_log_expression": np.sqrt(np.maximum(s2 / np.maximum(cnt, 1) - m1**2, 0)),
        }
    frame = pd.DataFrame(feats, index=index)
    if offset is not None:
        frame.insert(0, "qc_size_offset", offset.astype(np.float64))
    if lib_full is not None:
        frame.insert(0, "qc_log10_library_size", np.log10(lib_full + 1.0))
    if names:
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.where(pw_cnt > 0, pw_sum / np.maximum(pw_cnt, 1), np.nan)
        frame = pd.concat([frame, pd.DataFrame(scores, index=index, columns=[f"pw_{p}" for p in names])], axis=1)
    if pca is not None:
        frame = pd.concat([frame, pd.DataFrame(pc, index=index, columns=load_cols)], axis=1)
        # Squared prediction error: distance from the reference PCA subspace (per top gene, so cohorts
        # missing some genes stay comparable). Loadings are orthonormal: |z|^2 - |V'z|^2.
        frame["pc_spe"] = np.maximum(sq - (pc**2).sum(1), 0.0) / max(len(pca), 1)
    return frame


def _fit_pca(Z: np.ndarray, fit_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Loadings (n_genes, k) of a PCA on rows ``fit_rows`` of standardized ``Z`` and their centre."""
    Zf = Z[fit_rows]
    center = Zf.mean(0)
    k = max(1, min(k, Zf.shape[0] - 1, Zf.shape[1]))
    # Randomized SVD: only k components are needed, and it is O(n p k) instead of a full LAPACK SVD.
    _, _, vt = randomized_svd(Zf - center, k, n_iter=7, random_state=0)
    comps = vt[:k].T
    # Deterministic sign: the largest |loading| of each component positive.
    flip = np.sign(comps[np.abs(comps).argmax(0), np.arange(k)])
    return comps * flip, center


def reference_performance(labels: Any, predictions: pd.DataFrame, task: str) -> dict[str, float]:
    """Performance of predictions against labels, scored by :mod:`genexflow.metrics` (the module
    that scores cross-validation and the registry gate, so a bundle's out-of-fold metrics are a like-for-like
    reference): accuracy, balanced accuracy, macro F1 (+ AUCs and log-loss when class probabilities are
    given), or R^2, MAE, RMSE and Pearson r; plus ``n_labelled``."""
    y = pd.Series(labels).to_numpy()
    ok = pd.notna(y)
    if ok.sum() == 0:
        return {}
    if task == "regression":
        out = evaluate_labels(task, y[ok].astype(np.float64), predictions["pred_value"].to_numpy(np.float64)[ok])
        return {**out, "n_labelled": int(ok.sum())}
    yt = y[ok].astype(str)
    probs = [c for c in predictions.columns if str(c).startswith("pred_prob_")]
    names = [str(c).removeprefix("pred_prob_") for c in probs]
    if probs:
        proba = predictions[probs].to_numpy(np.float64)[ok]
    else:  # hard labels only: one-hot (the label-based metrics do not need probabilities)
        names = sorted(set(predictions["pred_label"].astype(str)))
        yhat = predictions["pred_label"].astype(str).to_numpy()[ok]
        proba = (yhat[:, None] == np.asarray(names)[None, :]).astype(np.float64)
    extra = sorted(set(yt) - set(names))  # a class the model never predicts (new in monitoring)
    if extra:
        names = names + extra
        proba = np.hstack([proba, np.zeros((len(proba), len(extra)))])
    out = evaluate_labels(task, yt, proba, names)
    if not probs:  # one-hot "probabilities" give no meaningful AUC, calibration or log-loss
        out = {k: out[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}
    return {**out, "n_labelled": int(ok.sum())}


# ---------------------------------------------------------------------------------------------- builder
def build_reference_profile(
    cohort: Cohort,
    *,
    pathway_scores: Any = None,
    latent: Any = None,
    predictions: Any = None,
    label_column: str | None = None,
    batch_column: str | None = None,
    covariates: Sequence[str] = (),
    gene_sets: str | Path | Mapping[str, Sequence[str]] | None = "kegg",
    class_names: Sequence[str] | None = None,
    task: str | None = None,
    n_quantiles: int = 101,
    n_pcs: int = 10,
    n_top_genes: int = 2000,
    max_rows: int = 5000,
    min_set_size: int = 5,
    max_set_size: int = 500,
    random_state: int = 0,
) -> ReferenceProfile:
    """Summarize a (training) cohort for drift monitoring.

    Parameters
    ----------
    cohort : Cohort of shape (n_samples, n_genes)
        The raw training cohort (same value type the model takes).
    pathway_scores : array-like of shape (n_samples, P), optional
        The model's pathway scores. When omitted, built-in scores (mean z-scored log expression of each
        set in ``gene_sets``) are computed, which later checks recompute from the expression matrix.
    latent : array-like of shape (n_samples, k), optional
        The model's latent coordinates (columns ``latent_*``).
    predictions : array-like of shape (n_samples,) or (n_samples, n_classes), optional
        Model outputs on the reference (out-of-fold preferred): probabilities, values or labels.
    label_column, batch_column : str, optional
        Sample-sheet columns of the label (performance) and the batch (unseen-batch detection).
    covariates : sequence of str
        Sample-sheet columns watched for covariate shift (e.g. ``("age", "sex")``).
    gene_sets : "kegg", "go_bp", "progeny", GMT path, mapping or None
        Sets for built-in pathway scores and for the enrichment of drifted genes.
    class_names : sequence of str, optional
        Class order of probability columns.
    task : {"classification", "regression"}, optional
        Inferred from ``predictions`` when omitted.
    n_quantiles : int
        Size ``m`` of the per-gene quantile grid (101 = every percentile).
    n_pcs, n_top_genes : int
        Built-in latent space: PCA with ``n_pcs`` components of the ``n_top_genes`` most variable genes,
        fitted on a random half of the rows (the other half calibrates novelty scores).
    max_rows : int
        Cap on stored per-sample rows (a random subset); the gene sketch always uses every sample.
    min_set_size, max_set_size : int
        Bounds on gene-set sizes after restriction to the cohort's genes.
    random_state : int

    Returns
    -------
    ReferenceProfile

    Examples
    --------
    >>> from genexflow.simulate import simulate_cohort
    >>> cohort, truth = simulate_cohort(n_samples=60, n_genes=300, seed=0)
    >>> prof = build_reference_profile(cohort, batch_column="batch", covariates=("age", "sex"),
    ...                                gene_sets=truth.pathways)
    >>> prof.quantiles.shape
    (300, 101)
    """
    if not isinstance(cohort, Cohort):
        raise InputError("build_reference_profile needs a genexflow Cohort")
    n, g = cohort.shape
    if n < 10:
        raise InputError(f"a reference profile needs at least 10 samples, got {n}")
    if n_quantiles < 3:
        raise InputError(f"n_quantiles must be >= 3, got {n_quantiles}")
    for col in [c for c in (label_column, batch_column) if c] + list(covariates):
        cohort.column(col)  # clear error when absent
    vt = cohort.value_type
    X = cohort.X
    rng = np.random.default_rng(random_state)
    probs = np.linspace(0.0, 1.0, n_quantiles)
    cols = np.arange(g)
    lib = K.library_sizes(X) if vt is ValueType.COUNTS else None
    offset = None
    anchor_mean = np.full(g, np.nan)
    if K.needs_offsets(vt):
        anchors, am = K.choose_anchors(X, vt, lib)
        anchor_mean[anchors] = am
        offset = K.sample_offsets(X, anchors, am, vt, lib)

    # Pass 1: per-gene sort -> quantiles, then the exact ECDF at/below each quantile from the same sort.
    quant = np.empty((g, n_quantiles), np.float32)
    le = np.empty((g, n_quantiles), np.float32)
    lt = np.empty((g, n_quantiles), np.float32)
    n_valid = np.empty(g, np.int64)
    mean = np.empty(g)
    var = np.empty(g)

    for sl, Y in K.iter_log_chunks(X, cols, vt, lib, offset):
        sk = K.sketch_chunk(Y, probs)  # sorts Y in place (NaN -> inf)
        quant[sl] = sk.quantiles
        St = torch.from_numpy(Y)
        G = torch.from_numpy(np.ascontiguousarray(np.nan_to_num(sk.quantiles, nan=np.inf)))
        nv = np.maximum(sk.n_valid, 1)[:, None]
        le[sl] = torch.searchsorted(St, G, right=True).numpy() / nv
        lt[sl] = torch.searchsorted(St, G, right=False).numpy() / nv
        n_valid[sl], mean[sl], var[sl] = sk.n_valid, sk.mean, sk.var
    sd = np.sqrt(var)
    genes = list(cohort.genes)
    stats = pd.DataFrame({"mean": mean, "sd": sd, "n_valid": n_valid, "missing_fraction": 1.0 - n_valid / n,
                          "anchor_mean": anchor_mean}, index=pd.Index(genes, name="gene_id"))

    # Built-in latent space: PCA on the most variable genes, fitted on half the rows.
    fit_rows = np.zeros(n, bool)
    fit_rows[rng.permutation(n)[: max(n // 2, min(n, 10))]] = True
    top = np.sort(np.argsort(-np.nan_to_num(var))[: min(n_top_genes, g)])
    Ztop = np.empty((n, len(top)), np.float64)
    for sl, Y in K.iter_log_chunks(X, top, vt, lib, offset):
        Ztop[:, sl] = ((Y.astype(np.float64) - mean[top[sl], None]) / np.where(sd[top[sl]] > 1e-8, sd[top[sl]], 1.0)[:, None]).T
    Ztop = np.nan_to_num(Ztop)
    comps, center = _fit_pca(Ztop, fit_rows, n_pcs)
    pca = pd.DataFrame(comps, index=pd.Index([genes[i] for i in top], name="gene_id"),
                       columns=[f"pc_{i}" for i in range(comps.shape[1])])
    # Fold the PCA centre into per-gene centre/scale so new data is projected with one affine map.
    pca.insert(0, "scale", np.where(sd[top] > 1e-8, sd[top], 1.0))
    pca.insert(0, "center", mean[top] + center * pca["scale"].to_numpy())
    del Ztop

    sets = _restricted_sets(gene_sets, genes, min_set_size, max_set_size)
    detection = _detection_threshold(np.asarray(X), vt, random_state)
    builtin_sets = sets if pathway_scores is None else {}
    feats = _features_pass(X, cols, np.asarray(genes, dtype=object), vt, mean, sd, builtin_sets, pca, detection,
                           cohort.sample_ids, lib, offset)
    if pathway_scores is not None:
        feats = pd.concat([feats, _prefixed(pathway_scores, "pw_", cohort.sample_ids, "pathway_scores")], axis=1)
    if latent is not None:
        feats = pd.concat([feats, _prefixed(latent, "latent_", cohort.sample_ids, "latent")], axis=1)
    pred = None
    if predictions is not None:
        pred = prediction_frame(predictions, cohort.sample_ids, class_names)
        feats = pd.concat([feats, pred], axis=1)
        if class_names is None and any(c.startswith("pred_prob_") for c in pred.columns):
            class_names = [c.removeprefix("pred_prob_") for c in pred.columns if c.startswith("pred_prob_")]
    if task is None and pred is not None:
        task = "regression" if "pred_value" in pred.columns else "classification"

    keep = [c for c in dict.fromkeys([label_column, batch_column, *covariates]) if c]
    samples = cohort.samples[keep].copy()
    samples["_latent_fit"] = fit_rows
    performance = {}
    if pred is not None and label_column:
        performance = reference_performance(cohort.samples[label_column], pred, task or "classification")
    if n > max_rows:  # cap stored rows; the gene sketch above used all of them
        rows = np.sort(rng.choice(n, max_rows, replace=False))
        feats, samples = feats.iloc[rows], samples.iloc[rows]

    batch_levels = (sorted(map(str, cohort.samples[batch_column].dropna().unique())) if batch_column else [])
    meta = {
        "value_type": vt.value, "n_samples": n, "n_genes": g, "cohort_name": cohort.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "label_column": label_column,
        "batch_column": batch_column, "batch_levels": batch_levels, "covariates": list(covariates),
        "class_names": list(class_names) if class_names else [], "task": task,
        "pathway_source": "provided" if pathway_scores is not None else ("builtin" if sets else "none"),
        "latent_source": "model" if latent is not None else "none", "detection_threshold": detection,
        "performance": performance, "n_pcs": int(comps.shape[1]),
        "transform": ("log2(CPM+1)" if vt is ValueType.COUNTS else
                      "log2(x+1)" if vt in (ValueType.TPM, ValueType.FPKM) else "identity")
                     + (" - median-of-ratios offset" if offset is not None else ""),
    }
    return ReferenceProfile(meta=meta, genes=genes, gene_stats=stats, probs=probs, quantiles=quant, ecdf_le=le,
                            ecdf_lt=lt, features=feats, samples=samples, gene_sets=sets, pca=pca)
