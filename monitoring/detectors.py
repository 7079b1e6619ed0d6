"""Drift detectors: ``fit(reference_profile)`` keeps reference statistics, ``score(new)`` returns a report.

=========================  ==============================================  ==============================
detector                   compares                                        report
=========================  ==============================================  ==============================
GeneDriftDetector          every gene: KS + PSI + Wasserstein, BH FDR      :class:`GeneDriftReport`
FeatureDriftDetector       compact features with Evidently DataDriftPreset :class:`FeatureDriftReport`
UnseenBatchDetector        batch labels vs the training batch levels       :class:`BatchReport`
CovariateShiftDetector     covariates: KS (numeric) / chi-square (categ.)  :class:`CovariateReport`
LatentNoveltyDetector      kNN distance in latent space, conformal         :class:`NoveltyReport`
PerformanceDecayDetector   metrics once labels arrive vs the reference     :class:`PerformanceReport`
=========================  ==============================================  ==============================

Reports carry numbers, not verdicts: :mod:`genexflow.monitoring.policy` turns them into a decision.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.neighbors import NearestNeighbors

from genexflow import drift_kernels as K
from genexflow.cohort import Cohort, ValueType
from genexflow.errors import InputError, NotFittedError
from genexflow.priors.genesets import membership_matrix
from genexflow.profile import (
    FEATURE_GROUPS,
    ReferenceProfile,
    _gene_positions,
    new_sample_offsets,
    prediction_frame,
    reference_performance,
)


def _check_fitted(est: Any, attr: str) -> None:
    if not hasattr(est, attr):
        raise NotFittedError(f"{type(est).__name__} is not fitted yet; call fit(reference_profile) first")


def _check_profile(reference: Any) -> ReferenceProfile:
    if isinstance(reference, str | Path):
        return ReferenceProfile.load(reference)
    if not isinstance(reference, ReferenceProfile):
        raise InputError(f"fit() needs a ReferenceProfile (or its folder), got {type(reference).__name__}")
    return reference


def _samples_of(new: Any) -> pd.DataFrame:
    if isinstance(new, Cohort):
        return new.samples
    if isinstance(new, pd.DataFrame):
        return new
    raise InputError(f"score() needs a Cohort or a sample-sheet DataFrame, got {type(new).__name__}")


@dataclass
class DriftReport:
    """Base of all reports: ``kind`` names the detector, :meth:`summary` is the JSON-able evidence."""

    kind: ClassVar[str] = "base"

    def summary(self) -> dict[str, Any]:
        raise NotImplementedError


# ================================================================================================ genes
@dataclass
class GeneDriftReport(DriftReport):
    """Per-gene two-sample tests of a new cohort against the reference sketch.

    Attributes
    ----------
    table : DataFrame of shape (G, 12)
        Indexed by gene: ``present``, ``n_new``, ``ks_stat``, ``pvalue``, ``qvalue`` (BH), ``psi``,
        ``wasserstein`` (log2 units), ``wasserstein_sd`` (in reference SDs), ``mean_ref``, ``mean_new``,
        ``mean_shift_sd``, ``missing_fraction_new``, ``drifted``.
    n_tested, n_drifted : int
    drift_share : float
        ``n_drifted / n_tested``.
    n_missing_genes : int
        Reference genes absent from the new cohort (not tested).
    top_pathways : DataFrame
        Gene sets ranked by enrichment of drifted genes (hypergeometric p, BH q).
    """

    kind: ClassVar[str] = "gene"
    table: pd.DataFrame
    n_tested: int
    n_drifted: int
    drift_share: float
    n_missing_genes: int
    top_pathways: pd.DataFrame
    fdr: float
    min_ks: float
    n_top: int = 20

    def top_genes(self, n: int | None = None) -> pd.DataFrame:
        """The ``n`` genes with the largest KS statistic among the drifted (all genes if none drifted)."""
        t = self.table[self.table["present"]]
        pool = t[t["drifted"]] if self.n_drifted else t
        return pool.sort_values(["ks_stat", "psi"], ascending=False).head(n or self.n_top)

    def summary(self) -> dict[str, Any]:
        top = self.top_genes()
        cols = ["ks_stat", "qvalue", "psi", "wasserstein_sd", "mean_shift_sd"]
        return {
            "n_tested": self.n_tested, "n_drifted": self.n_drifted, "drift_share": self.drift_share,
            "n_missing_genes": self.n_missing_genes, "fdr": self.fdr, "min_ks": self.min_ks,
            "median_ks": float(np.nanmedian(self.table["ks_stat"])) if self.n_tested else None,
            "top_genes": [{"gene": g, **{c: _f(r[c]) for c in cols}} for g, r in top.iterrows()],
            "top_pathways": [{k: _f(v) for k, v in r.items()} | {"pathway": p}
                             for p, r in self.top_pathways.head(self.n_top).iterrows()],
        }


def _f(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


class GeneDriftDetector:
    """Vectorized per-gene drift of the full expression matrix against the reference quantile sketch.

    For each gene the new cohort's values (log scale, the profile's transform) are sorted once; the KS
    statistic is read at the reference quantile grid (both one-sided limits of the reference ECDF, so ties
    of zero counts are handled), its asymptotic p-value is BH-adjusted across genes, PSI is taken on
    reference quantile bins and the Wasserstein-1 distance is the mean absolute difference of quantiles.
    A gene drifts when ``q < fdr`` and ``D >= min_ks`` (an effect-size floor so huge cohorts do not flag
    negligible shifts).

    Parameters
    ----------
    fdr : float
        Benjamini-Hochberg false-discovery rate.
    min_ks : float
        Minimum KS statistic for a gene to count as drifted.
    n_bins : int
        PSI bins (reference quantile bins).
    n_top : int
        Genes and pathways listed in the summary.
    min_set_drifted : int
        Minimum drifted members for a pathway to be listed as enriched.

    Examples
    --------
    >>> from genexflow.simulate import simulate_cohort
    >>> from genexflow.profile import build_reference_profile
    >>> c, t = simulate_cohort(n_samples=80, n_genes=200, seed=0)
    >>> ref = build_reference_profile(c.subset(range(40)), gene_sets=t.pathways)
    >>> rep = GeneDriftDetector().fit(ref).score(c.subset(range(40, 80)))
    >>> rep.drift_share < 0.05
    True
    """

    def __init__(self, fdr: float = 0.01, min_ks: float = 0.1, n_bins: int = 10, n_top: int = 20,
                 min_set_drifted: int = 3):
        self.fdr = fdr
        self.min_ks = min_ks
        self.n_bins = n_bins
        self.n_top = n_top
        self.min_set_drifted = min_set_drifted

    def fit(self, reference: ReferenceProfile | str | Path) -> GeneDriftDetector:
        ref = _check_profile(reference)
        if not 0 < self.fdr < 1:
            raise InputError(f"fdr must be in (0, 1), got {self.fdr}")
        if self.n_bins < 2:
            raise InputError(f"n_bins must be >= 2, got {self.n_bins}")
        m = len(ref.probs)
        self.reference_ = ref
        self.grid_ = np.nan_to_num(ref.quantiles, nan=np.inf).astype(np.float32)
        self.edge_idx_ = np.unique(np.round(np.arange(1, self.n_bins) / self.n_bins * (m - 1)).astype(int))
        self.p_ref_ = K.bin_proportions(ref.ecdf_le, self.edge_idx_)
        self.n_ref_ = ref.gene_stats["n_valid"].to_numpy(np.int64)
        return self

    def score(self, new: Cohort) -> GeneDriftReport:
        """Test every reference gene of ``new`` (n_samples, n_genes) for drift.

        Returns
        -------
        GeneDriftReport
        """
        _check_fitted(self, "reference_")
        ref = self.reference_
        if not isinstance(new, Cohort):
            raise InputError(f"GeneDriftDetector.score needs a Cohort, got {type(new).__name__}")
        vt = ref.value_type
        if new.value_type is not vt:
            raise InputError(f"new cohort is {new.value_type.value} but the reference is {vt.value}; "
                             "give the same value type the model was trained on")
        pos, present = _gene_positions(new, ref.genes)
        ref_idx = np.flatnonzero(present)
        cols = pos[present]
        if len(cols) == 0:
            raise InputError("none of the reference genes occur in the new cohort; check the gene ID type "
                             "(harmonize with `genexflow ingest`)")
        G = ref.n_genes
        d = np.full(G, np.nan)
        n_new = np.zeros(G, np.int64)
        mean_new = np.full(G, np.nan)
        psi = np.full(G, np.nan)
        wass = np.full(G, np.nan)
        lib = K.library_sizes(new.X, cols) if vt is ValueType.COUNTS else None
        offset = new_sample_offsets(ref, new, pos, lib)
        w = np.diff(ref.probs)  # trapezoid weights of the quantile integral
        for sl, Y in K.iter_log_chunks(new.X, cols, vt, lib, offset):
            r = ref_idx[sl]
            sk = K.sketch_chunk(Y, ref.probs, grid=self.grid_[r])
            d[r] = K.ks_from_grid(ref.ecdf_le[r], ref.ecdf_lt[r], sk.le, sk.lt)
            psi[r] = K.psi(self.p_ref_[r], K.bin_proportions(sk.le, self.edge_idx_))
            diff = np.abs(ref.quantiles[r] - sk.quantiles)
            wass[r] = ((diff[:, 1:] + diff[:, :-1]) * 0.5 * w).sum(1)
            n_new[r] = sk.n_valid
            mean_new[r] = np.where(sk.n_valid > 0, sk.mean, np.nan)
        tested = present & (n_new > 0) & (self.n_ref_ > 0)
        d[~tested] = np.nan
        p = K.ks_pvalue(d, self.n_ref_, n_new)
        q = K.bh_qvalues(p)
        drifted = tested & (q < self.fdr) & (d >= self.min_ks)
        sd = ref.gene_stats["sd"].to_numpy(np.float64)
        safe_sd = np.where(sd > 1e-8, sd, np.nan)
        mean_ref = ref.gene_stats["mean"].to_numpy(np.float64)
        table = pd.DataFrame({
            "present": present, "n_new": n_new, "ks_stat": d, "pvalue": p, "qvalue": q, "psi": psi,
            "wasserstein": wass, "wasserstein_sd": wass / safe_sd, "mean_ref": mean_ref, "mean_new": mean_new,
            "mean_shift_sd": (mean_new - mean_ref) / safe_sd,
            "missing_fraction_new": np.where(present, 1.0 - n_new / max(new.n_samples, 1), np.nan),
            "drifted": drifted,
        }, index=pd.Index(ref.genes, name="gene_id"))
        n_tested = int(tested.sum())
        n_drifted = int(drifted.sum())
        return GeneDriftReport(
            table=table, n_tested=n_tested, n_drifted=n_drifted,
            drift_share=n_drifted / n_tested if n_tested else 0.0, n_missing_genes=int((~present).sum()),
            top_pathways=self._enrichment(table, tested, drifted), fdr=self.fdr, min_ks=self.min_ks,
            n_top=self.n_top,
        )

    def _enrichment(self, table: pd.DataFrame, tested: np.ndarray, drifted: np.ndarray) -> pd.DataFrame:
        """Hypergeometric enrichment of drifted genes in each gene set (among tested genes)."""
        cols = ["size", "n_drifted", "fraction_drifted", "mean_ks", "pvalue", "qvalue"]
        sets = self.reference_.gene_sets
        if not sets or not tested.any():
            return pd.DataFrame(columns=cols, index=pd.Index([], name="pathway"))
        M = membership_matrix(sets, self.reference_.genes)[tested]
        size = M.sum(0)
        hits = drifted[tested].astype(np.float32) @ M
        N, Kd = int(tested.sum()), int(drifted.sum())
        p = stats.hypergeom.sf(hits - 1, N, Kd, size)
        ks = np.nan_to_num(table["ks_stat"].to_numpy()[tested]).astype(np.float32)
        out = pd.DataFrame({
            "size": size.astype(int), "n_drifted": hits.astype(int),
            "fraction_drifted": np.where(size > 0, hits / np.maximum(size, 1), 0.0),
            "mean_ks": (ks @ M) / np.maximum(size, 1), "pvalue": p, "qvalue": K.bh_qvalues(p),
        }, index=pd.Index(list(sets), name="pathway"))
        out = out[(out["size"] > 0)]
        out = out[out["n_drifted"] >= min(self.min_set_drifted, max(Kd, 1))] if Kd else out.iloc[0:0]
        return out.sort_values(["pvalue", "mean_ks"], ascending=[True, False])


# ================================================================================================ features
@dataclass
class FeatureDriftReport(DriftReport):
    """Evidently DataDriftPreset on the compact features.

    Attributes
    ----------
    table : DataFrame
        One row per column: ``group``, ``method``, ``threshold``, ``score``, ``drifted``.
    drift_share : float
        Share of drifted columns (Evidently's ``DriftedColumnsCount``).
    dataset_drift : bool
        ``drift_share >= drift_share_threshold``.
    group_shares : dict of str to float
        Drifted share within each group (qc, pathway, pca, latent, prediction).
    skipped : list of str
        Reference feature groups the new data did not have (e.g. latent without the model).
    """

    kind: ClassVar[str] = "feature"
    table: pd.DataFrame
    drift_share: float
    drift_share_threshold: float
    dataset_drift: bool
    group_shares: dict[str, float]
    skipped: list[str]
    snapshot: Any = field(default=None, repr=False)

    def save_html(self, path: str | Path) -> Path:
        path = Path(path)
        self.snapshot.save_html(str(path))
        return path

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.snapshot.json())
        return path

    def summary(self) -> dict[str, Any]:
        drifted = self.table[self.table["drifted"]]
        return {
            "n_columns": len(self.table), "n_drifted": len(drifted), "drift_share": self.drift_share,
            "drift_share_threshold": self.drift_share_threshold, "dataset_drift": self.dataset_drift,
            "group_shares": self.group_shares, "skipped": self.skipped,
            "drifted_columns": drifted.index.tolist()[:50],
        }


def _group_of(col: str) -> str:
    for g, prefix in FEATURE_GROUPS.items():
        if col.startswith(prefix):
            return g
    return "other"


class FeatureDriftDetector:
    """Evidently ``Report([DataDriftPreset()])`` on QC features, pathway scores, latent / PCA coordinates
    and predictions (never the gene matrix: Evidently takes minutes on thousands of columns).

    Parameters
    ----------
    groups : sequence of str
        Feature groups compared (``qc``, ``pathway``, ``pca``, ``latent``, ``prediction``).
    drift_share : float
        Share of drifted columns at which Evidently declares dataset drift.
    max_pathways : int
        At most this many pathway-score columns (the most variable in the reference) keep Evidently fast.
    method, threshold : optional
        Evidently stat test and threshold for every column (default: Evidently's choice per column).
    """

    def __init__(self, groups: tuple[str, ...] = ("qc", "pathway", "pca", "latent", "prediction"),
                 drift_share: float = 0.5, max_pathways: int = 50, method: str | None = None,
                 threshold: float | None = None):
        self.groups = groups
        self.drift_share = drift_share
        self.max_pathways = max_pathways
        self.method = method
        self.threshold = threshold

    def fit(self, reference: ReferenceProfile | str | Path) -> FeatureDriftDetector:
        ref = _check_profile(reference)

        unknown = set(self.groups) - set(FEATURE_GROUPS)
        if unknown:
            raise InputError(f"unknown feature groups {sorted(unknown)}; use {', '.join(FEATURE_GROUPS)}")
        cols: list[str] = []
        for g in self.groups:
            gc = ref.columns(g)
            if g == "pathway" and len(gc) > self.max_pathways:
                var = ref.features[gc].var().sort_values(ascending=False)
                gc = [c for c in gc if c in set(var.index[: self.max_pathways])]
            cols += gc
        # Columns constant in the reference carry no distribution to compare against.
        ref_feats = ref.features[cols]
        self.columns_ = [c for c in cols if ref_feats[c].nunique(dropna=True) > 1]
        self.reference_ = ref_feats[self.columns_]
        return self

    def score(self, new: pd.DataFrame | Cohort) -> FeatureDriftReport:
        """Run Evidently on the columns the new features share with the reference.

        Parameters
        ----------
        new : DataFrame of shape (n_samples, F) or Cohort
            Features from :meth:`ReferenceProfile.compute_features` (a Cohort gets the expression-derived
            groups only).
        """
        _check_fitted(self, "reference_")
        if isinstance(new, Cohort):
            raise InputError("FeatureDriftDetector.score needs the compact features: "
                             "pass reference.compute_features(cohort, ...)")
        cols = [c for c in self.columns_ if c in new.columns and new[c].notna().any()]
        skipped = sorted({_group_of(c) for c in self.columns_ if c not in cols})
        if not cols:
            raise InputError("the new features share no column with the reference profile")
        # lazy: evidently takes seconds to import
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        cat = [c for c in cols if self.reference_[c].dtype == object or new[c].dtype == object]
        num = [c for c in cols if c not in cat]
        ref = self.reference_[cols].reset_index(drop=True)
        cur = new[cols].reset_index(drop=True)
        for c in cat:
            ref[c], cur[c] = ref[c].astype(str), cur[c].astype(str)
        definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
        report = Report([DataDriftPreset(drift_share=self.drift_share, method=self.method,
                                         threshold=self.threshold)], include_tests=True)
        with np.errstate(all="ignore"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                snap = report.run(current_data=Dataset.from_pandas(cur, data_definition=definition),
                                  reference_data=Dataset.from_pandas(ref, data_definition=definition))
        table, share = _parse_evidently(snap.dict())
        table = table.reindex(cols)
        table.insert(0, "group", [_group_of(c) for c in table.index])
        groups = {g: float(sub["drifted"].mean()) for g, sub in table.groupby("group")}
        return FeatureDriftReport(table=table, drift_share=share, drift_share_threshold=self.drift_share,
                                  dataset_drift=share >= self.drift_share, group_shares=groups, skipped=skipped,
                                  snapshot=snap)


def _parse_evidently(d: dict) -> tuple[pd.DataFrame, float]:
    """Per-column method/threshold/score/drifted and the drifted share from an Evidently snapshot dict."""
    rows: dict[str, dict[str, Any]] = {}
    share = float("nan")
    for m in d.get("metrics", []):
        cfg = m.get("config", {})
        if cfg.get("type", "").endswith("DriftedColumnsCount"):
            share = float(m["value"]["share"])
        elif cfg.get("type", "").endswith("ValueDrift"):
            rows[cfg["column"]] = {"method": cfg.get("method"), "threshold": cfg.get("threshold"),
                                   "score": float(m["value"])}
    for t in d.get("tests", []):
        col = t.get("metric_config", {}).get("params", {}).get("column")
        if col in rows:
            rows[col]["drifted"] = t.get("status") == "FAIL"
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["method", "threshold", "score", "drifted"])
    table["drifted"] = table["drifted"].fillna(False).astype(bool)
    table.index.name = "column"
    return table, share


# ================================================================================================ batches
@dataclass
class BatchReport(DriftReport):
    """Batch labels of the new cohort vs the training batch levels."""

    kind: ClassVar[str] = "batch"
    batch_column: str | None
    known_levels: list[str]
    counts: dict[str, int]
    unseen_levels: list[str]
    n_unseen_samples: int
    unseen_fraction: float
    checked: bool = True

    def summary(self) -> dict[str, Any]:
        return {"batch_column": self.batch_column, "checked": self.checked, "unseen_levels": self.unseen_levels,
                "n_unseen_samples": self.n_unseen_samples, "unseen_fraction": self.unseen_fraction,
                "counts": self.counts, "known_levels": self.known_levels}


class UnseenBatchDetector:
    """Flags batch labels the model never saw (their ComBat parameters do not exist).

    Parameters
    ----------
    batch_column : str, optional
        Defaults to the profile's batch column.
    """

    def __init__(self, batch_column: str | None = None):
        self.batch_column = batch_column

    def fit(self, reference: ReferenceProfile | str | Path) -> UnseenBatchDetector:
        ref = _check_profile(reference)
        self.batch_column_ = self.batch_column or ref.meta.get("batch_column")
        levels = ref.meta.get("batch_levels") or []
        if not levels and self.batch_column_ and self.batch_column_ in ref.samples.columns:
            levels = sorted(map(str, ref.samples[self.batch_column_].dropna().unique()))
        self.levels_ = list(levels)
        return self

    def score(self, new: Cohort | pd.DataFrame) -> BatchReport:
        _check_fitted(self, "levels_")
        samples = _samples_of(new)
        col = self.batch_column_
        if not col or col not in samples.columns:
            return BatchReport(col, self.levels_, {}, [], 0, 0.0, checked=False)
        vals = samples[col].dropna().astype(str)
        counts = {str(k): int(v) for k, v in vals.value_counts().sort_index().items()}
        unseen = sorted(set(counts) - set(self.levels_))
        n_unseen = int(sum(counts[u] for u in unseen))
        return BatchReport(col, self.levels_, counts, unseen, n_unseen, n_unseen / max(len(samples), 1))


# ================================================================================================ covariates
@dataclass
class CovariateReport(DriftReport):
    """Per-covariate two-sample tests (KS for numeric, chi-square for categorical)."""

    kind: ClassVar[str] = "covariate"
    table: pd.DataFrame  # column -> kind, test, statistic, pvalue, effect, drifted, unseen

    def summary(self) -> dict[str, Any]:
        return {"columns": {c: {k: _f(v) for k, v in r.items()} for c, r in self.table.iterrows()},
                "drifted": self.table.index[self.table["drifted"]].tolist() if len(self.table) else []}


class CovariateShiftDetector:
    """Covariate shift (e.g. the age or sex mix of a new cohort).

    Numeric covariates: two-sample KS, effect = KS statistic. Categorical: chi-square test of the
    reference vs new category counts, effect = total-variation distance of the proportions. A covariate
    drifts when ``p < alpha`` and ``effect >= min_effect``.

    Parameters
    ----------
    columns : sequence of str, optional
        Defaults to the profile's covariates.
    alpha : float
        Per-covariate significance level (small: several covariates are tested on every check).
    min_effect : float
        Minimum KS statistic / total-variation distance.
    """

    def __init__(self, columns: tuple[str, ...] | None = None, alpha: float = 1e-3, min_effect: float = 0.1):
        self.columns = columns
        self.alpha = alpha
        self.min_effect = min_effect

    def fit(self, reference: ReferenceProfile | str | Path) -> CovariateShiftDetector:
        ref = _check_profile(reference)
        cols = list(self.columns if self.columns is not None else ref.meta.get("covariates", []))
        missing = [c for c in cols if c not in ref.samples.columns]
        if missing:
            raise InputError(f"the reference profile has no covariate column(s) {missing}")
        self.columns_ = cols
        self.reference_ = ref.samples[cols].copy()
        self.kinds_ = {c: ("numeric" if pd.api.types.is_numeric_dtype(self.reference_[c])
                           and self.reference_[c].nunique() > 2 else "categorical") for c in cols}
        return self

    def score(self, new: Cohort | pd.DataFrame) -> CovariateReport:
        _check_fitted(self, "reference_")
        samples = _samples_of(new)
        rows = {}
        for c in self.columns_:
            if c not in samples.columns:
                continue
            ref = self.reference_[c].dropna()
            cur = samples[c].dropna()
            if len(cur) < 2 or len(ref) < 2:
                continue
            if self.kinds_[c] == "numeric":
                cur_num = pd.to_numeric(cur, errors="coerce").dropna()
                res = stats.ks_2samp(ref.astype(float), cur_num)
                stat, p, effect, unseen = float(res.statistic), float(res.pvalue), float(res.statistic), []
                test = "ks"
            else:
                r, n = ref.astype(str).value_counts(), cur.astype(str).value_counts()
                levels = sorted(set(r.index) | set(n.index))
                table = np.array([r.reindex(levels, fill_value=0), n.reindex(levels, fill_value=0)], float)
                unseen = sorted(set(n.index) - set(r.index))
                if len(levels) < 2:
                    stat, p = 0.0, 1.0
                else:
                    stat, p = (float(v) for v in stats.chi2_contingency(table, correction=False)[:2])
                prop = table / table.sum(1, keepdims=True)
                effect = float(0.5 * np.abs(prop[0] - prop[1]).sum())
                test = "chi2"
            rows[c] = {"kind": self.kinds_[c], "test": test, "statistic": stat, "pvalue": p, "effect": effect,
                       "drifted": bool(p < self.alpha and effect >= self.min_effect),
                       "unseen": ",".join(unseen), "n_new": int(len(cur))}
        cols = ["kind", "test", "statistic", "pvalue", "effect", "drifted", "unseen", "n_new"]
        table = pd.DataFrame.from_dict(rows, orient="index", columns=cols)
        table["drifted"] = table["drifted"].astype(bool)
        table.index.name = "covariate"
        return CovariateReport(table)


# ================================================================================================ novelty
@dataclass
class NoveltyReport(DriftReport):
    """Share of new samples that are far from every reference sample in latent space."""

    kind: ClassVar[str] = "novelty"
    space: str
    scores: pd.Series  # per new sample: mean distance to the k nearest reference samples
    threshold: float
    novel_fraction: float
    expected_fraction: float
    pvalue: float
    n_calibration: int
    checked: bool = True

    def summary(self) -> dict[str, Any]:
        novel = self.scores[self.scores > self.threshold].sort_values(ascending=False)
        return {"space": self.space, "checked": self.checked, "novel_fraction": self.novel_fraction,
                "expected_fraction": self.expected_fraction, "pvalue": self.pvalue, "threshold": self.threshold,
                "n_novel": int(len(novel)), "n_calibration": self.n_calibration,
                "most_novel_samples": novel.head(20).index.tolist()}


class LatentNoveltyDetector:
    """Latent-space novelty (a new subtype): kNN distance to the reference, calibrated conformally.

    Coordinates are standardized by the reference SD of each dimension (for PCA coordinates this makes
    the distance Mahalanobis). A sample's distance score is its mean Euclidean distance to the
    ``n_neighbors`` nearest reference *fit* rows. In the built-in PCA space the residual off the PCA
    subspace (``pc_spe``, the squared prediction error of multivariate process control) is a second
    score, so a new program outside the top components is seen too. Each score is turned into its rank
    among the calibration scores and the novelty score is the larger rank, so neither scale dominates.
    Calibration rows are reference rows held out of the fit (the built-in PCA is fitted on half the
    rows), or leave-one-out scores when the latent space came from the model; the threshold is the
    conformal ``quantile`` of their novelty scores. Under no drift the count of new samples above it is
    beta-binomial (the calibration set is finite), which gives the p-value.

    Parameters
    ----------
    space : {"auto", "latent", "pca"}
        ``auto`` uses the model's latent space when the new features carry it, else the built-in PCA.
    n_neighbors : int
    quantile : float
    """

    def __init__(self, space: str = "auto", n_neighbors: int = 5, quantile: float = 0.95):
        self.space = space
        self.n_neighbors = n_neighbors
        self.quantile = quantile

    def fit(self, reference: ReferenceProfile | str | Path) -> LatentNoveltyDetector:
        ref = _check_profile(reference)
        if self.space not in ("auto", "latent", "pca"):
            raise InputError(f"space must be auto, latent or pca, got {self.space!r}")
        if not 0.5 < self.quantile < 1:
            raise InputError(f"quantile must be in (0.5, 1), got {self.quantile}")
        self.reference_ = ref
        self.spaces_ = {}
        if ref.columns("latent"):
            self.spaces_["latent"] = ref.columns("latent")
        pcs = [c for c in ref.columns("pca") if c[3:].isdigit()]
        if pcs:
            self.spaces_["pca"] = pcs
        if self.space != "auto" and self.space not in self.spaces_:
            raise InputError(f"the reference profile has no {self.space} coordinates")
        self.cal_: dict[str, dict[str, Any]] = {}
        return self

    def _raw_scores(self, cal: dict[str, Any], frame: pd.DataFrame, loo: bool = False) -> np.ndarray:
        """(n, 1 or 2) raw scores: kNN distance (+ SPE residual in PCA space)."""
        Z = np.nan_to_num((frame[cal["cols"]].to_numpy(np.float64) - cal["mu"]) / cal["sd"])
        if loo:  # drop each point's zero distance to itself
            dist = cal["nn_loo"].kneighbors(Z)[0][:, 1:]
        else:
            dist = cal["nn"].kneighbors(Z)[0]
        parts = [dist.mean(1)]
        if cal["spe"]:
            parts.append(np.nan_to_num(frame["pc_spe"].to_numpy(np.float64)))
        return np.column_stack(parts)

    def _calibrate(self, space: str) -> dict[str, Any]:
        ref = self.reference_
        cols = self.spaces_[space]
        Z = ref.features[cols].to_numpy(np.float64)
        fit = (ref.samples["_latent_fit"].to_numpy(bool) if space == "pca" and "_latent_fit" in ref.samples
               else np.ones(len(Z), bool))
        held_out = (~fit).sum() >= 20
        if not held_out:
            fit = np.ones(len(Z), bool)
        mu, sd = Z[fit].mean(0), Z[fit].std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        k = max(1, min(self.n_neighbors, int(fit.sum()) - 1))
        Zf = (Z[fit] - mu) / sd
        cal = {"cols": cols, "mu": mu, "sd": sd, "nn": NearestNeighbors(n_neighbors=k).fit(Zf),
               "spe": space == "pca" and "pc_spe" in ref.features.columns}
        if held_out:  # held-out rows: honest out-of-sample scores
            raw = self._raw_scores(cal, ref.features[~fit])
        else:
            cal["nn_loo"] = NearestNeighbors(n_neighbors=k + 1).fit(Zf)
            raw = self._raw_scores(cal, ref.features[fit], loo=True)
        cal["sorted"] = np.sort(raw, axis=0)
        scores = np.sort(self._combine(cal, raw))
        n_cal = len(scores)
        rank = int(np.ceil(self.quantile * (n_cal + 1)))
        cal["threshold"] = float(scores[rank - 1]) if rank <= n_cal else float("inf")
        cal["n_cal"] = n_cal
        # P(new score > threshold) ~ Beta(n_cal + 1 - rank, rank) under exchangeability.
        cal["beta"] = (max(n_cal + 1 - rank, 1e-9), float(rank))
        return cal

    @staticmethod
    def _combine(cal: dict[str, Any], raw: np.ndarray) -> np.ndarray:
        """Largest calibration rank (fraction of calibration scores strictly below) across the scores."""
        srt = cal["sorted"]
        ranks = [np.searchsorted(srt[:, j], raw[:, j], side="left") / len(srt) for j in range(raw.shape[1])]
        return np.max(ranks, axis=0)

    def score(self, new: pd.DataFrame) -> NoveltyReport:
        """Score new samples; ``new`` are features from :meth:`ReferenceProfile.compute_features`.

        ``scores`` in the report are the combined calibration ranks in [0, 1]."""
        _check_fitted(self, "reference_")
        if not isinstance(new, pd.DataFrame):
            raise InputError("LatentNoveltyDetector.score needs the compact features DataFrame")
        order = ["latent", "pca"] if self.space == "auto" else [self.space]
        space = next((s for s in order if s in self.spaces_ and all(c in new.columns for c in self.spaces_[s])), None)
        if space is None or len(new) == 0:
            return NoveltyReport("none", pd.Series(dtype=float), float("nan"), 0.0, 0.0, 1.0, 0, checked=False)
        if space not in self.cal_:
            self.cal_[space] = self._calibrate(space)
        cal = self.cal_[space]
        if cal["spe"] and "pc_spe" not in new.columns:
            cal = {**cal, "spe": False, "sorted": cal["sorted"][:, :1]}
        scores = self._combine(cal, self._raw_scores(cal, new))
        n_novel = int((scores > cal["threshold"]).sum())
        a, b = cal["beta"]
        p = float(stats.betabinom.sf(n_novel - 1, len(scores), a, b))
        return NoveltyReport(space=space, scores=pd.Series(scores, index=new.index, name="novelty_score"),
                             threshold=cal["threshold"], novel_fraction=n_novel / len(scores),
                             expected_fraction=a / (a + b), pvalue=p, n_calibration=cal["n_cal"])


# ================================================================================================ performance
@dataclass
class PerformanceReport(DriftReport):
    """Performance on newly labelled samples vs the reference performance."""

    kind: ClassVar[str] = "performance"
    metric: str
    reference: float | None
    current: float | None
    decay: float | None  # reference - current for scores (accuracy, F1, R^2); relative increase for RMSE
    n_labelled: int
    metrics: dict[str, float] = field(default_factory=dict)
    checked: bool = True

    def summary(self) -> dict[str, Any]:
        return {"checked": self.checked, "metric": self.metric, "reference": self.reference,
                "current": self.current, "decay": self.decay, "n_labelled": self.n_labelled,
                "metrics": self.metrics}


class PerformanceDecayDetector:
    """Performance decay once labels arrive: the profile's reference metric vs the same metric now.

    Parameters
    ----------
    metric : str, optional
        ``balanced_accuracy`` (default for classification), ``accuracy``, ``macro_f1``, ``rmse`` (default
        for regression), ``r2``.
    reference_value : float, optional
        Overrides the profile's reference value: prefer the bundle's cross-validated metric, since the
        profile's own value comes from predictions on the training rows (optimistic) unless out-of-fold
        predictions were given.
    """

    def __init__(self, metric: str | None = None, reference_value: float | None = None):
        self.metric = metric
        self.reference_value = reference_value

    def fit(self, reference: ReferenceProfile | str | Path) -> PerformanceDecayDetector:
        ref = _check_profile(reference)
        self.task_ = ref.meta.get("task") or "classification"
        self.metric_ = self.metric or ("rmse" if self.task_ == "regression" else "balanced_accuracy")
        perf = ref.meta.get("performance") or {}
        self.reference_value_ = (self.reference_value if self.reference_value is not None
                                 else perf.get(self.metric_))
        self.class_names_ = ref.meta.get("class_names") or None
        return self

    def score(self, labels: Any, predictions: Any) -> PerformanceReport:
        """``labels`` (n,) with NaN for unlabelled samples; ``predictions`` as for the profile."""
        _check_fitted(self, "metric_")
        y = pd.Series(labels)
        pred = prediction_frame(predictions, pd.RangeIndex(len(y)), self.class_names_)
        cur = reference_performance(y.reset_index(drop=True), pred, self.task_)
        n = int(cur.get("n_labelled", 0))
        value = cur.get(self.metric_)
        if value is None or self.reference_value_ is None:
            return PerformanceReport(self.metric_, self.reference_value_, value, None, n, cur,
                                     checked=value is not None and self.reference_value_ is not None)
        ref = float(self.reference_value_)
        if self.metric_ == "rmse":
            decay = (value - ref) / ref if ref > 0 else float("inf")
        else:
            decay = ref - value
        return PerformanceReport(self.metric_, ref, float(value), float(decay), n, cur)
