"""The user-facing trained model: fit on a cohort, predict new cohorts, save/load as a model bundle.

:class:`TrainedModel` wraps the pure ``nn.Module`` (``genexflow.models.PathwayNet``) with what it needs to
take a *raw* cohort: the fitted preprocessing, the covariate encoding, gene order, class names and the
priors. :func:`predict` is the reference prediction path that the ONNX export and the Triton server are
compared against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genexflow.bundle import (
    BATCH_STATUS_LABELS,
    PREPROCESSING_FILE,
    BundleInfo,
    PickledPreprocessing,
    align_genes,
    encode_covariates,
    load_bundle,
    module_from_state,
    save_bundle,
)
from genexflow.cohort import Cohort
from genexflow.errors import InputError
from genexflow.priors import GenePriors
from genexflow.profile import build_reference_profile
from genexflow.training.config import TrainConfig
from genexflow.training.fit import train_deep
from genexflow.training.folds import prepare_fold, transform
from genexflow.training.labels import encode_labels
from genexflow.training.trainer import EpochCallback, TensorData, predict_module

ARCHITECTURE = "PathwayNet"


@dataclass
class TrainedModel:
    """A trained model with its preprocessing and input contract.

    Attributes
    ----------
    info : BundleInfo
        Task, label, classes, raw input genes and value type, covariate encoding, batch levels, metrics.
    preprocessing : fitted preprocessing pipeline
    module : torch.nn.Module
        The network (eval mode), taking preprocessed expression in ``model_genes`` order.
    priors : GenePriors or None
    history : list of dict
        Per-epoch metrics of the final fit.
    pickled : PickledPreprocessing or None
        The bytes ``preprocessing`` was loaded from (its sha256 is ``info.preprocessing_sha256``); the
        bundle stores them unchanged.
    """

    info: BundleInfo
    preprocessing: Any
    module: Any
    priors: Any = None
    history: list[dict[str, float]] = field(default_factory=list)
    pickled: PickledPreprocessing | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, cohort: Cohort, cfg: TrainConfig, callbacks: tuple[EpochCallback, ...] | list = (),
            preprocessing: PickledPreprocessing | None = None) -> TrainedModel:
        """Fit priors and the network on every labeled row of ``cohort`` (early stopping on an inner
        stratified validation split).

        ``preprocessing``: the pipeline fitted on exactly these rows (the ``preprocess-fit`` step), used as
        it is; without it the preprocessing is fitted here first.
        """
        labels = encode_labels(cohort, cfg)
        data = cohort.subset(labels.labeled) if not labels.labeled.all() else cohort
        y = labels.y[labels.labeled]
        pre = None
        if preprocessing is not None:
            pre = preprocessing.load()
            genes = [str(g) for g in getattr(pre, "genes_in_", [])]
            if genes != [str(g) for g in data.genes]:
                raise InputError("the given preprocessing was fitted on other genes than this cohort's; fit it "
                                 "on the training rows of this cohort (the preprocess-fit step)")
        fold = prepare_fold(data, None, y, None, cfg, preprocessing=pre)
        k = labels.n_classes if cfg.task == "classification" else 1
        res = train_deep(fold, cfg, k, callbacks)
        return cls.from_fold(data, fold, res, cfg, labels.class_names, preprocessing)

    @classmethod
    def from_fold(cls, data: Cohort, fold: Any, res: Any, cfg: TrainConfig, class_names: list[str],
                  pickled: PickledPreprocessing | None = None) -> TrainedModel:
        """The model trained on a prepared fold (``training.cv.PreparedFold`` + the trainer's result): the
        final model, or one cross-validation fold's (what that fold's served graph would be)."""
        pickled = pickled or PickledPreprocessing.of(fold.preprocessing)
        pre = fold.preprocessing
        corrects = bool(getattr(pre, "needs_batch", False))  # the batch is model input only when corrected
        info = BundleInfo(
            task=cfg.task, label_column=cfg.label, class_names=list(class_names),
            input_genes=[str(g) for g in data.genes], value_type=data.value_type.value,
            covariates=fold.covariates, batch_column=cfg.batch_column if corrects else None,
            batch_levels=list(map(str, pre.batch_levels_)) if corrects else [],
            extra={
                "architecture": ARCHITECTURE, "train_config": cfg.to_dict(), "model_genes": fold.genes,
                "pathways": list(fold.priors.pathways), "priors_source": getattr(fold.priors, "source", ""),
                "best_epoch": res.best_epoch, "stopped_epoch": res.stopped_epoch, "n_train": int(len(fold.train)),
                "target_mean": res.target_mean, "target_std": res.target_std,
            },
            preprocessing_sha256=pickled.sha256,
        )
        return cls(info, pre, res.module.cpu().eval(), fold.priors, res.history, pickled)

    # ------------------------------------------------------------------ inference
    def align(self, cohort: Cohort) -> Cohort:
        """The cohort reordered to the training genes (absent genes NaN; refuses if too many are absent)."""
        if cohort.value_type.value != self.info.value_type:
            raise InputError(f"the model takes {self.info.value_type} values but the cohort holds "
                             f"{cohort.value_type.value}; convert it as in training")
        if list(cohort.genes) == self.info.input_genes:
            return cohort
        X, _ = align_genes(cohort.frame(), self.info.input_genes)
        return Cohort(X, self.info.input_genes, cohort.samples, cohort.value_type, cohort.name, dict(cohort.meta))

    def inputs(self, cohort: Cohort) -> TensorData:
        """Model inputs for a raw cohort: frozen preprocessing + covariate encoding."""
        c = self.align(cohort)
        X = transform(self.preprocessing, c)
        cov = encode_covariates(c.samples, self.info.covariates)
        return TensorData(X, cov, None, None)

    def predict_arrays(self, cohort: Cohort) -> dict[str, np.ndarray]:
        """``proba`` or ``prediction``, plus ``latent`` and ``attention`` (per pathway) when available."""
        ex = self.info.extra
        return predict_module(self.module, self.inputs(cohort), self.info.task,
                              float(ex.get("target_mean", 0.0)), float(ex.get("target_std", 1.0)))

    def predict(self, cohort: Cohort) -> pd.DataFrame:
        """Probabilities per class (columns = class names) and ``prediction`` (the arg-max class), or the
        regression ``prediction``; with batch correction ``batch_correction`` (how each sample's batch was
        corrected, as the served graph's ``batch_status`` says); indexed by sample_id."""
        out = self.predict_arrays(cohort)
        idx = cohort.sample_ids
        if self.info.task == "classification":
            df = pd.DataFrame(out["proba"], index=idx, columns=self.info.class_names)
            df["prediction"] = np.asarray(self.info.class_names, dtype=object)[out["proba"].argmax(1)]
        else:
            df = pd.DataFrame({"prediction": out["prediction"]}, index=idx)
        if self.info.batch_column and hasattr(self.preprocessing, "batch_status"):
            # the served graph's flag: rows of an unseen batch estimated from this cohort, or left uncorrected
            status = self.preprocessing.batch_status(self.align(cohort).column(self.info.batch_column).to_numpy())
            df["batch_correction"] = np.asarray(BATCH_STATUS_LABELS, dtype=object)[status]
        return df

    # ------------------------------------------------------------------ persistence
    def model_state(self) -> dict:
        return {"config": self.module.config.to_dict(), "state_dict": self.module.state_dict(),
                "extra": {"architecture": ARCHITECTURE}}

    def save(self, folder: str | Path, reference: Cohort | None = None,
             reference_predictions: np.ndarray | None = None) -> Path:
        """Write the bundle (``bundle.json``, ``preprocessing.pkl``, ``model.pt``, ``priors/``) and, given the
        training cohort, the drift-monitoring reference profile (``reference/``)."""
        folder = save_bundle(folder, self.info, self.preprocessing, self.model_state(), self.pickled)
        if self.priors is not None and hasattr(self.priors, "save"):
            self.priors.save(folder / "priors")
        if reference is not None:
            write_reference_profile(self, folder, reference, reference_predictions)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TrainedModel:
        info, pre, state = load_bundle(folder)
        module = module_from_state(state)
        priors = None
        if (Path(folder) / "priors" / "priors.json").is_file():
            priors = GenePriors.load(Path(folder) / "priors")
        return cls(info, pre, module, priors, pickled=PickledPreprocessing.read(Path(folder) / PREPROCESSING_FILE))


def write_reference_profile(model: TrainedModel, folder: Path, cohort: Cohort,
                            predictions: np.ndarray | None = None) -> Path | None:
    """For drift monitoring: save :func:`genexflow.profile.build_reference_profile` of the training cohort
    (latent space and predictions of this model) under ``<bundle>/reference``."""
    info = model.info
    out = model.predict_arrays(cohort)
    preds = predictions
    if preds is None:
        preds = out["proba"] if info.task == "classification" else out["prediction"]
    gene_sets = dict(model.priors.gene_sets) if model.priors is not None else "kegg"
    covs = [c.name for c in info.covariates]
    prof = build_reference_profile(
        cohort, latent=out.get("latent"), predictions=preds, label_column=info.label_column,
        batch_column=info.batch_column, covariates=covs, gene_sets=gene_sets,
        class_names=info.class_names or None, task=info.task,
    )
    return prof.save(folder / "reference")


def predict(model: str | Path | TrainedModel | tuple, cohort: Cohort) -> pd.DataFrame:
    """Predict a raw cohort with a bundle folder, a :class:`TrainedModel` or ``(info, preprocessing, state)``.

    Returns
    -------
    DataFrame indexed by sample_id
        Classification: one probability column per class (``info.class_names`` order) and ``prediction``
        (class name). Regression: ``prediction``.
    """
    if isinstance(model, str | Path):
        model = TrainedModel.load(model)
    elif isinstance(model, tuple):
        info, pre, state = model
        model = TrainedModel(info, pre, module_from_state(state))
    if not isinstance(model, TrainedModel):
        raise InputError("predict needs a bundle folder, a TrainedModel or (info, preprocessing, model_state)")
    return model.predict(cohort)
