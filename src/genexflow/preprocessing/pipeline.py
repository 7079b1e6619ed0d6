"""One fitted, picklable preprocessing pipeline, also available as a frozen torch module.

Steps (each optional, chosen by :class:`PreprocessingConfig` and the cohort's value type):

1. gene filter on the raw values: counts -> :class:`LowCountFilter` (or ``filterByExpr``); other value
   types -> :class:`VarianceFilter` (drops genes constant in training, or within a batch when ComBat
   runs, since ComBat cannot scale them);
2. normalization: counts -> TMM log-CPM (edgeR); TPM/FPKM -> log2(x + 1); log-expression -> none;
3. missing values: KNN imputation (impute.knn; frozen neighbour genes for new samples) or, without an
   imputer, the training gene means (so no NaN reaches a model, in numpy or ONNX);
4. batch correction with a batch column (``batch_method``): ComBat with sample-sheet covariates (frozen
   parameters), Harmony on the top PCs with the batch and the categorical covariates (frozen map, see
   :mod:`.harmony`), or ComBat-seq on the filtered counts before normalization (numpy only: not in
   the ONNX graph);
5. per-gene standardization (training mean and standard deviation, ddof 0, as StandardScaler).

:meth:`PreprocessingPipeline.to_torch` returns the same transform as a torch module for the ONNX
graph (see :mod:`.torch_ops`). At inference the label is unknown, so ComBat covariates in a serving
pipeline must be sample-sheet columns known at inference (sex, tissue, site), never the outcome.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from genexflow.bundle import batch_codes, encode_covariates, fit_covariates
from genexflow.cohort import Cohort, ValueType
from genexflow.errors import InputError
from genexflow.preprocessing import torch_ops as T
from genexflow.preprocessing._utils import as_matrix, check_fitted
from genexflow.preprocessing.combat import ComBat
from genexflow.preprocessing.combat_seq import ComBatSeq
from genexflow.preprocessing.filtering import FilterByExpr, LowCountFilter, VarianceFilter
from genexflow.preprocessing.harmony import Harmony, HarmonyStep
from genexflow.preprocessing.impute import KNNImputer
from genexflow.preprocessing.normalize import CPMNormalizer, Log2p1
from genexflow.preprocessing.torch_ops import batch_status, unseen_batch_parameters

#: Batch-correction choices (``--batch-method``).
BATCH_METHODS = ("combat", "combat-seq", "harmony", "none")


@dataclass
class PreprocessingConfig:
    """Settings of :class:`PreprocessingPipeline`. ``"auto"`` picks by value type.

    Attributes
    ----------
    value_type : {"auto", "counts", "tpm", "fpkm", "log-expression"}
        ``"auto"`` takes the cohort's value type.
    filter : {"auto", "low-count", "filter-by-expr", "variance", "none"}
        ``"auto"``: counts -> low-count, others -> variance.
    min_count, max_fraction_below : low-count rule (drop genes with < 5 counts in > 80% of samples).
    normalization : {"auto", "tmm-logcpm", "logcpm", "cpm", "log2p1", "none"}
        ``"auto"``: counts -> tmm-logcpm, tpm/fpkm -> log2p1, log-expression -> none.
    prior_count : edgeR prior count for log-CPM.
    impute : {"auto", "knn", "mean"}
        ``"auto"``: KNN when the training data has missing values, else training means.
    knn_k : neighbours for KNN.
    max_genes : keep only the most variable genes (training variance after normalization and
        imputation), in input order; None keeps all.
    combat : correct batches when a batch column is given (False: the batch column is only bookkeeping,
        e.g. for grouped cross-validation; the same as ``batch_method="none"``).
    batch_method : {"combat", "combat-seq", "harmony", "none"}
        How to correct batches. ``combat-seq`` needs raw counts and cannot be exported to ONNX.
    harmony_components, harmony_theta, harmony_seed : Harmony's PCs, diversity penalty (one value, or
        one per variable: batch, then each categorical covariate) and random seed.
    batch_column : sample-sheet column for ComBat (None: no ComBat).
    covariates : sample-sheet columns kept in ComBat's design (must be known at inference).
    combat_parametric, combat_mean_only, reference_batch : ComBat options.
    unseen_batch : {"error", "estimate"}
        A batch not seen in training: refuse it, or (``"estimate"``) apply the served rule -- a batch with
        at least ``unseen_min_samples`` samples among the rows transformed together is corrected with
        ComBat parameters estimated from those rows, a smaller one passes through uncorrected and is
        flagged (:meth:`PreprocessingPipeline.batch_status`). Harmony leaves unseen batches uncorrected.
    unseen_min_samples : samples of an unseen batch needed to estimate it (>= 2; 0 never estimates).
    scale : per-gene standardization at the end.
    """

    value_type: str = "auto"
    filter: str = "auto"
    min_count: float = 5
    max_fraction_below: float = 0.8
    normalization: str = "auto"
    prior_count: float = 2.0
    impute: str = "auto"
    knn_k: int = 10
    max_genes: int | None = None
    combat: bool = True
    batch_method: str = "combat"
    harmony_components: int = 20
    harmony_theta: Any = 2.0
    harmony_seed: int = 0
    batch_column: str | None = None
    covariates: list[str] = field(default_factory=list)
    combat_parametric: bool = True
    combat_mean_only: bool = False
    reference_batch: Any = None
    unseen_batch: str = "error"
    unseen_min_samples: int = 3
    scale: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class PreprocessingPipeline:
    """Filter -> normalize -> impute -> ComBat -> scale, fitted on training samples.

    Parameters
    ----------
    config : PreprocessingConfig, optional

    Attributes
    ----------
    genes_in_ : ndarray of str
        Training input genes, in the order ``transform`` and the torch module expect.
    genes_out_ : ndarray of str
        Genes kept, in output order.
    value_type_ : ValueType
    filter_, normalizer_, imputer_, combat_ : fitted estimators (or None)
    fill_means_ : ndarray or None
        Training gene means used for missing values when there is no imputer.
    scale_mean_, scale_sd_ : ndarray or None
    batch_column_, covariates_ : the sample-sheet columns ComBat uses

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from genexflow.cohort import Cohort
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(8, 1, size=(12, 30)) + np.repeat([0, 1.5], 6)[:, None]
    >>> samples = pd.DataFrame({"batch": np.repeat(["a", "b"], 6)}, index=[f"s{i}" for i in range(12)])
    >>> c = Cohort(X.astype(np.float32), [f"g{i}" for i in range(30)], samples, value_type="log-expression")
    >>> pipe = PreprocessingPipeline().fit(c, batch_column="batch")
    >>> pipe.transform(c).shape
    (12, 30)
    """

    def __init__(self, config: PreprocessingConfig | None = None):
        self.config = config or PreprocessingConfig()

    # ------------------------------------------------------------------ helpers
    def _resolve(self, cohort_vt: ValueType) -> dict:
        cfg = self.config
        vt = cohort_vt if cfg.value_type == "auto" else ValueType.parse(cfg.value_type)
        flt = cfg.filter
        if flt == "auto":
            flt = "low-count" if vt == ValueType.COUNTS else "variance"
        norm = cfg.normalization
        if norm == "auto":
            norm = {ValueType.COUNTS: "tmm-logcpm", ValueType.TPM: "log2p1", ValueType.FPKM: "log2p1"}.get(vt, "none")
        if flt not in ("low-count", "filter-by-expr", "variance", "none"):
            raise InputError(f"unknown filter {flt!r}; use auto, low-count, filter-by-expr, variance or none")
        if norm not in ("tmm-logcpm", "logcpm", "cpm", "log2p1", "none"):
            raise InputError(f"unknown normalization {norm!r}; use auto, tmm-logcpm, logcpm, cpm, log2p1 or none")
        if norm in ("tmm-logcpm", "logcpm", "cpm") and vt != ValueType.COUNTS:
            raise InputError(f"normalization {norm} needs raw counts but the value type is {vt.value}")
        if cfg.batch_method not in BATCH_METHODS:
            raise InputError(f"unknown batch_method {cfg.batch_method!r}; use {', '.join(BATCH_METHODS)}")
        if cfg.batch_method == "combat-seq" and vt != ValueType.COUNTS:
            raise InputError(f"batch_method combat-seq needs raw counts but the value type is {vt.value}")
        if cfg.impute not in ("auto", "knn", "mean"):
            raise InputError(f"unknown impute {cfg.impute!r}; use auto, knn or mean")
        return {"value_type": vt, "filter": flt, "normalization": norm}

    @staticmethod
    def _sheet_columns(samples: pd.DataFrame | None, columns: list[str], what: str) -> pd.DataFrame | None:
        if not columns:
            return None
        if samples is None:
            raise InputError(f"{what} {', '.join(columns)} need a sample sheet (pass a Cohort)")
        missing = [c for c in columns if c not in samples.columns]
        if missing:
            raise InputError(f"sample sheet has no column {', '.join(missing)}; available: "
                             f"{', '.join(map(str, samples.columns))}")
        return samples[columns].reset_index(drop=True)

    # ------------------------------------------------------------------ fit
    def fit(self, cohort: Cohort, batch_column: str | None = None, covariates: list[str] | None = None
            ) -> PreprocessingPipeline:
        """Fit every step on the training cohort (samples x genes)."""
        self.fit_transform(cohort, batch_column, covariates)
        return self

    def fit_transform(self, cohort: Cohort, batch_column: str | None = None,
                      covariates: list[str] | None = None) -> np.ndarray:
        """Fit and return the preprocessed training matrix, shape (n_samples, n_genes_out), float64."""
        if not isinstance(cohort, Cohort):
            raise InputError("PreprocessingPipeline.fit needs a Cohort (matrix + sample sheet + value type)")
        cfg = self.config
        plan = self._resolve(cohort.value_type)
        self.value_type_ = plan["value_type"]
        self.plan_ = plan
        self.batch_column_ = batch_column if batch_column is not None else cfg.batch_column
        self.batch_method_ = cfg.batch_method if cfg.combat else "none"
        if self.batch_method_ == "none":
            self.batch_column_ = None
        self.covariates_ = list(covariates if covariates is not None else cfg.covariates)
        X, _ = as_matrix(cohort.X)
        self.genes_in_ = np.asarray(cohort.genes.astype(str), dtype=object)
        batch = None if self.batch_column_ is None else cohort.column(self.batch_column_).to_numpy()
        cov = self._sheet_columns(cohort.samples, self.covariates_, "covariates")
        if cov is not None and self.batch_column_ is None:
            if self.batch_method_ == "none":
                cov = None
                self.covariates_ = []
            else:
                raise InputError("covariates are used by ComBat only; give a batch column too")

        # 1. filter
        flt = plan["filter"]
        if flt == "low-count":
            self.filter_ = LowCountFilter(cfg.min_count, cfg.max_fraction_below).fit(X)
        elif flt == "filter-by-expr":
            self.filter_ = FilterByExpr().fit(np.nan_to_num(X))
        elif flt == "variance":
            self.filter_ = VarianceFilter().fit(X, batch=batch)
        else:
            self.filter_ = None
        H = X if self.filter_ is None else self.filter_.transform(X)
        self.combat_seq_ = None
        if self.batch_column_ is not None and self.batch_method_ == "combat-seq":  # on counts, before normalizing
            self.combat_seq_ = ComBatSeq()
            H = self.combat_seq_.fit_transform(H, batch=batch, covariates=cov)
        self.keep_index_ = (np.arange(X.shape[1]) if self.filter_ is None
                            else self.filter_.get_support(indices=True))
        self.genes_out_ = self.genes_in_[self.keep_index_]

        # 2. normalize
        norm = plan["normalization"]
        if norm in ("tmm-logcpm", "logcpm", "cpm"):
            self.normalizer_ = CPMNormalizer(log=norm != "cpm", prior_count=cfg.prior_count, tmm=norm == "tmm-logcpm")
        elif norm == "log2p1":
            self.normalizer_ = Log2p1()
        else:
            self.normalizer_ = None
        if self.normalizer_ is not None:
            H = self.normalizer_.fit_transform(H)

        # 3. missing values
        use_knn = cfg.impute == "knn" or (cfg.impute == "auto" and np.isnan(H).any())
        self.imputer_ = None
        self.fill_means_ = None
        if use_knn:
            self.imputer_ = KNNImputer(k=cfg.knn_k)
            H = self.imputer_.fit_transform(H)
        else:
            means = np.nanmean(H, axis=0)
            if np.isnan(means).any():
                raise InputError("some genes have no observed value in training; filter them out first")
            self.fill_means_ = means
            H = np.where(np.isnan(H), means, H)

        # optional: most variable genes only
        self.top_index_ = None
        if cfg.max_genes is not None and cfg.max_genes < H.shape[1]:
            if cfg.max_genes < 1:
                raise InputError(f"max_genes must be positive, got {cfg.max_genes}")
            var = H.var(axis=0)
            top = np.sort(np.argsort(-var, kind="stable")[: cfg.max_genes])
            self.top_index_ = top
            H = H[:, top]
            if self.imputer_ is None:
                self.fill_means_ = self.fill_means_[top]
            self.genes_out_ = self.genes_out_[top]
        # 4. ComBat
        self.combat_ = None
        self.harmony_ = None
        self.batch_levels_ = []
        self.covariate_specs_ = []
        if self.batch_column_ is not None and self.batch_method_ in ("harmony", "combat-seq"):
            H = self._fit_harmony(H, cohort, batch, cov)
        elif self.batch_column_ is not None:
            self.combat_ = ComBat(parametric=cfg.combat_parametric, mean_only=cfg.combat_mean_only,
                                  ref_batch=cfg.reference_batch, unseen_batch=cfg.unseen_batch)
            H = self.combat_.fit_transform(H, batch=batch, covariates=cov)
            # serving conventions (genexflow.bundle): batch levels sorted as strings, covariates encoded
            # by encode_covariates (numeric standardized, categorical one-hot over sorted categories)
            self.batch_levels_ = sorted(str(b) for b in self.combat_.batches_)
            if self.covariates_:
                self.covariate_specs_ = fit_covariates(cohort.samples, self.covariates_)

        # 5. scale
        if cfg.scale:
            self.scale_mean_ = H.mean(axis=0)
            sd = H.std(axis=0)
            self.scale_sd_ = np.where(sd > 0, sd, 1.0)
            H = (H - self.scale_mean_) / self.scale_sd_
        else:
            self.scale_mean_ = self.scale_sd_ = None
        return H

    def _fit_harmony(self, H: np.ndarray, cohort: Cohort, batch: np.ndarray, cov: pd.DataFrame | None) -> np.ndarray:
        """Harmony over the batch and the categorical covariates (numeric ones go to the model only);
        ComBat-seq (already applied) only records the serving conventions here."""
        cfg = self.config
        self.batch_levels_ = sorted(str(b) for b in np.unique(batch.astype(str)))
        if self.covariates_:
            self.covariate_specs_ = fit_covariates(cohort.samples, self.covariates_)
        if self.batch_method_ != "harmony":
            return H
        cats = [s.name for s in self.covariate_specs_ if s.kind == "categorical"]
        self.harmony_ = Harmony(n_components=cfg.harmony_components, theta=cfg.harmony_theta,
                                unseen_batch="error" if cfg.unseen_batch == "error" else "ignore",
                                random_state=cfg.harmony_seed)
        return self.harmony_.fit_transform(H, batch=batch, covariates=cov[cats] if cats else None)

    # ------------------------------------------------------------------ transform
    def _matrix(self, data: Any) -> np.ndarray:
        if isinstance(data, Cohort):
            idx = pd.Index(data.genes).get_indexer(pd.Index(self.genes_in_))
            missing = self.genes_in_[idx < 0]
            if len(missing):
                raise InputError(f"{len(missing)} training genes are missing from the cohort (e.g. "
                                 f"{', '.join(map(str, missing[:5]))}); add them (NaN is allowed) or refit")
            return np.asarray(data.X, dtype=np.float64)[:, idx]
        X, names = as_matrix(data)
        if names is not None:
            return self._matrix_from_frame(pd.DataFrame(X, columns=names))
        if X.shape[1] != len(self.genes_in_):
            raise InputError(f"expected {len(self.genes_in_)} genes in training order, got {X.shape[1]}")
        return X

    def _matrix_from_frame(self, df: pd.DataFrame) -> np.ndarray:
        missing = [g for g in self.genes_in_ if g not in df.columns]
        if missing:
            raise InputError(f"{len(missing)} training genes missing (e.g. {', '.join(missing[:5])})")
        return df[list(self.genes_in_)].to_numpy(np.float64)

    def batch_index(self, batch: Any, unseen: str = "error") -> np.ndarray:
        """The torch/ONNX ``batch_index`` input (int64, :func:`genexflow.bundle.batch_codes`): positions of
        batch labels in ``batch_levels_``.

        ``unseen="error"`` raises for a batch not seen in training; ``unseen="code"`` gives the k-th
        distinct unseen batch the code ``-1 - k`` (see ``docs/preprocessing.md``: unseen batches).
        """
        check_fitted(self, "genes_out_")
        if not self.needs_batch:
            raise InputError("this pipeline has no batch-correction step")

        idx = batch_codes(batch, self.batch_levels_)
        if (idx < 0).any() and unseen == "error":
            labels = np.asarray(batch).astype(str)
            raise InputError(f"batch {', '.join(sorted(set(labels[idx < 0]))[:5])} was not in training "
                             f"(known: {', '.join(self.batch_levels_)})")
        return idx

    @property
    def unseen_min_samples_(self) -> int:
        """Samples of an unseen batch needed to estimate its correction (0: never estimated)."""
        cfg = self.config
        if self.combat_ is None or cfg.unseen_batch != "estimate":
            return 0
        n = int(getattr(cfg, "unseen_min_samples", 3))  # pipelines pickled before the option: 3
        return 0 if n <= 0 else max(n, 1 if self.combat_.mean_only else 2)

    def batch_status(self, batch: Any) -> np.ndarray:
        """How each row's batch is corrected when these rows are transformed (or sent to the served graph)
        together: 1 training parameters, 2 estimated from these rows (an unseen batch with at least
        :attr:`unseen_min_samples_` of them), 0 passed through uncorrected (an unseen batch)."""
        return batch_status(torch.as_tensor(self.batch_index(batch, unseen="code")),
                            self.unseen_min_samples_).numpy()

    def _combat_transform(self, H: np.ndarray, batch: Any, covariates: Any) -> np.ndarray:
        """ComBat with the training parameters; rows of unseen batches by the served rule
        (:func:`~genexflow.preprocessing.torch_ops.unseen_batch_parameters`, the graph's own code)."""
        codes = self.batch_index(batch, unseen="error" if self.config.unseen_batch == "error" else "code")
        seen = codes >= 0
        if seen.all():
            return self.combat_.transform(H, batch=batch, covariates=covariates)

        cb = self.combat_
        out = np.empty_like(H)
        cov = None if covariates is None else pd.DataFrame(covariates).reset_index(drop=True)
        if seen.any():
            out[seen] = cb.transform(H[seen], batch=np.asarray(batch)[seen],
                                     covariates=None if cov is None else cov[seen])
        rows = ~seen
        s, stand = cb.standardize(H[rows], None if cov is None else cov[rows])
        gamma, delta, _ = unseen_batch_parameters(
            torch.as_tensor(s), torch.as_tensor(codes[rows]), self.unseen_min_samples_, bool(cb.mean_only),
            torch.as_tensor(cb.adjusted_genes_))
        sd = np.sqrt(cb.var_pooled_)
        adj = (s - gamma.numpy()) / np.sqrt(delta.numpy()) * sd + stand
        out[rows] = np.where(cb.adjusted_genes_, adj, H[rows])
        return out

    def covariate_design(self, covariates: pd.DataFrame | None, n: int) -> np.ndarray:
        """Covariates (n, C) float32 for the torch/ONNX ``covariates`` input, encoded as
        :func:`genexflow.bundle.encode_covariates` does with the specs of ``covariate_specs_``."""
        check_fitted(self, "genes_out_")
        if not self.covariate_specs_:
            return np.zeros((n, 0), np.float32)

        if covariates is None:
            raise InputError(f"covariates {', '.join(self.covariates_)} are needed")
        return encode_covariates(pd.DataFrame(covariates).reset_index(drop=True), self.covariate_specs_)

    def _covariate_map(self) -> tuple[np.ndarray, np.ndarray]:
        """Affine map from the serving covariate encoding to ComBat's design columns: ``cov @ A + b``.

        ComBat's correction only depends on the column space of [batch indicators, covariates], so a
        per-column affine re-encoding gives the same result; this map makes it exact column by column.
        """
        enc = self.combat_.covariate_encoder_
        keep = self.combat_._cov_keep
        blocks_a, blocks_b = [], []
        for spec in self.covariate_specs_:
            levels = enc.levels_[spec.name]
            if spec.kind == "numeric":  # z = (v - mean) / std, ComBat column v
                a = np.array([[spec.std]])
                b = np.array([spec.mean])
                if levels is not None:
                    raise InputError(f"covariate {spec.name!r} is numeric for serving but categorical for ComBat")
            elif levels is None:  # one-hot over categories, ComBat column = the numeric value
                a = np.array([[float(c)] for c in spec.categories])
                b = np.zeros(1)
            else:  # one-hot over all categories, ComBat dummies for levels[1:]
                a = np.array([[1.0 if c == lv else 0.0 for lv in levels[1:]] for c in spec.categories])
                a = a.reshape(len(spec.categories), len(levels) - 1)
                b = np.zeros(len(levels) - 1)
            blocks_a.append(a)
            blocks_b.append(b)
        width_in = sum(a.shape[0] for a in blocks_a)
        width_out = sum(a.shape[1] for a in blocks_a)
        A = np.zeros((width_in, width_out))
        r = c = 0
        for a in blocks_a:
            A[r:r + a.shape[0], c:c + a.shape[1]] = a
            r += a.shape[0]
            c += a.shape[1]
        b = np.concatenate(blocks_b) if blocks_b else np.zeros(0)
        return A[:, keep], b[keep]

    def transform(self, data: Cohort | Any, batch: Any = None, covariates: Any = None) -> np.ndarray:
        """Preprocess new samples with the frozen steps.

        Parameters
        ----------
        data : Cohort or array-like of shape (n_samples, n_genes_in)
            A Cohort is aligned to the training genes by ID and supplies batch and covariates from its
            sample sheet; an array must be in training gene order (``genes_in_``).
        batch : array-like of shape (n_samples,), optional (arrays only; needed with ComBat)
        covariates : DataFrame, optional (arrays only; the ComBat covariate columns)

        Returns
        -------
        ndarray of shape (n_samples, len(genes_out_)), float64
        """
        check_fitted(self, "genes_out_")
        X = self._matrix(data)
        if isinstance(data, Cohort):
            if self.needs_batch:
                batch = data.column(self.batch_column_).to_numpy() if batch is None else batch
                if covariates is None:
                    covariates = self._sheet_columns(data.samples, self.covariates_, "covariates")
        if self.needs_batch and batch is None:
            raise InputError(f"this pipeline corrects batches; pass batch= (sample-sheet column "
                             f"{self.batch_column_!r})")
        H = X[:, self.keep_index_]
        if getattr(self, "combat_seq_", None) is not None:
            H = self._combat_seq(H, batch, covariates)
        if self.normalizer_ is not None:
            H = self.normalizer_.transform(H)
        if self.imputer_ is not None:
            H = self.imputer_.transform(H)
            if self.top_index_ is not None:
                H = H[:, self.top_index_]
        else:
            if self.top_index_ is not None:
                H = H[:, self.top_index_]
            H = np.where(np.isnan(H), self.fill_means_, H)
        if self.combat_ is not None:
            if batch is None:
                raise InputError(f"this pipeline corrects batches; pass batch= (sample-sheet column "
                                 f"{self.batch_column_!r})")
            H = self._combat_transform(H, batch, covariates)
        if getattr(self, "harmony_", None) is not None:
            cats = self.harmony_.variables_[1:]
            H = self.harmony_.transform(H, batch=batch, covariates=pd.DataFrame(covariates)[cats] if cats else None)
        if self.scale_mean_ is not None:
            H = (H - self.scale_mean_) / self.scale_sd_
        return H

    def _combat_seq(self, H: np.ndarray, batch: Any, covariates: Any) -> np.ndarray:
        """Frozen ComBat-seq; rows of a batch unseen in training stay uncorrected (as an unseen batch is
        everywhere else) unless ``unseen_batch="error"``, where ComBat-seq names the batch."""
        seen = np.isin(np.asarray(batch).astype(str), self.batch_levels_)
        if seen.all() or self.config.unseen_batch == "error":
            return self.combat_seq_.transform(H, batch=batch, covariates=covariates)
        out = H.copy()
        if seen.any():
            cov = None if covariates is None else pd.DataFrame(covariates).reset_index(drop=True)[seen]
            out[seen] = self.combat_seq_.transform(H[seen], batch=np.asarray(batch)[seen], covariates=cov)
        return out

    # ------------------------------------------------------------------ torch
    def to_torch(self):
        """The fitted transform as a frozen ``torch.nn.Module`` (ONNX-exportable).

        ``module(x, batch_index=None, covariates=None)``: ``x`` (B, len(genes_in_)) float32 raw values in
        training gene order (NaN allowed), ``batch_index`` (B,) int64 from :meth:`batch_index` (positions
        in ``batch_levels_``; negative = an unseen batch, see :meth:`batch_index`) and ``covariates``
        (B, C) from :meth:`covariate_design` (the :func:`genexflow.bundle.encode_covariates` encoding)
        when ComBat uses covariates. Returns (B, len(genes_out_)) float32. The module's
        ``takes_batch``/``takes_covariates`` flags tell :mod:`genexflow.export` which inputs to wire.
        """
        check_fitted(self, "genes_out_")
        steps = []
        if self.filter_ is not None:
            steps.append(T.SelectGenes(self.keep_index_))
        if isinstance(self.normalizer_, CPMNormalizer):
            steps.append(T.LogCPM(self.normalizer_))
        elif isinstance(self.normalizer_, Log2p1):
            steps.append(T.Log2p1())
        if self.imputer_ is not None:
            steps.append(T.KNNFill(self.imputer_))
            if self.top_index_ is not None:
                steps.append(T.SelectGenes(self.top_index_))
        else:
            if self.top_index_ is not None:
                steps.append(T.SelectGenes(self.top_index_))
            steps.append(T.MeanFill(self.fill_means_))
        combat_at = None
        n_cov = 0
        if self.combat_ is not None:
            combat_at = len(steps)
            order = np.array([int(np.flatnonzero(self.combat_.batches_.astype(str) == b)[0])
                              for b in self.batch_levels_])
            if self.covariate_specs_:
                A, b = self._covariate_map()
            else:
                A, b = np.zeros((0, len(self.combat_.covariate_encoder_.names_)))[:, self.combat_._cov_keep], \
                    np.zeros(int(self.combat_._cov_keep.sum()))
            steps.append(T.ComBatOp(self.combat_, order, A, b, min_samples=self.unseen_min_samples_))
            n_cov = steps[-1].n_cov
        elif getattr(self, "harmony_", None) is not None:
            combat_at = len(steps)
            steps.append(HarmonyStep(self.harmony_, self.covariate_specs_))
            n_cov = steps[-1].n_cov
        elif getattr(self, "combat_seq_", None) is not None:
            raise InputError("ComBat-seq maps counts through negative-binomial quantiles, which the ONNX graph "
                             "cannot express; export a model trained with --batch-method combat or harmony")
        if self.scale_mean_ is not None:
            steps.append(T.Scale(self.scale_mean_, self.scale_sd_))
        module = T.PreprocessingModule(steps, combat_at, n_cov,
                                       unseen_min_samples=self.unseen_min_samples_ if self.combat_ is not None else 0)
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    @property
    def needs_batch(self) -> bool:
        return any(getattr(self, a, None) is not None for a in ("combat_", "harmony_", "combat_seq_"))

    @property
    def n_covariate_columns(self) -> int:
        """Width C of the torch/ONNX ``covariates`` input (0 without ComBat covariates)."""
        return sum(s.width for s in getattr(self, "covariate_specs_", []))

    def __repr__(self) -> str:
        if not hasattr(self, "genes_out_"):
            return f"PreprocessingPipeline({self.config!r})"
        steps = [self.plan_["filter"], self.plan_["normalization"],
                 "knn" if self.imputer_ is not None else "mean-fill",
                 f"{self.batch_method_}({self.batch_column_})" if self.needs_batch else None,
                 "scale" if self.scale_mean_ is not None else None]
        return (f"PreprocessingPipeline({' -> '.join(s for s in steps if s and s != 'none')}; "
                f"{len(self.genes_in_)} -> {len(self.genes_out_)} genes)")
