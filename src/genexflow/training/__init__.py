"""Training, cross-validation, hyper-parameter search, baselines, evaluation and interpretability, tracked
in MLflow (see ``docs/training.md``).

Main entry points::

    TrainedModel.fit(cohort, TrainConfig(...))          # final model on a cohort -> .predict / .save(bundle)
    predict(bundle_dir_or_model, cohort)                 # reference predictions (what ONNX is compared with)
    cross_validate(cohort, cfg, split="stratified")      # deep model + baselines on fold-fitted preprocessing
    train_and_track(cohort, cfg, cv=5, hpo_trials=0)     # the tracked run behind `genexflow train`
"""

from genexflow.metrics import bootstrap_ci, classification_metrics, evaluate, regression_metrics
from genexflow.training.config import MODEL_PRESETS, TrainConfig
from genexflow.training.cv import CVResult, cross_validate, external_validation
from genexflow.training.model import TrainedModel, predict
from genexflow.training.run import RunOutcome, train_and_track
from genexflow.training.splits import (
    Split,
    leave_one_batch_out,
    make_splits,
    stratified_kfold,
    train_val_split,
)
from genexflow.training.trainer import TensorData, Trainer, TrainResult, predict_module, seed_everything

__all__ = [
    "MODEL_PRESETS", "CVResult", "RunOutcome", "Split", "TensorData", "TrainConfig", "TrainResult",
    "TrainedModel", "Trainer", "bootstrap_ci", "classification_metrics", "cross_validate", "evaluate",
    "external_validation", "leave_one_batch_out", "make_splits", "predict", "predict_module",
    "regression_metrics", "seed_everything", "stratified_kfold", "train_and_track", "train_val_split",
]
