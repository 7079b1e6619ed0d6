"""Training, cross-validation, hyper-parameter search, baselines, evaluation and interpretability, tracked
in MLflow (see ``docs/training.md``)."""

from genexflow.training.config import TrainConfig
from genexflow.training.metrics import bootstrap_ci, classification_metrics, evaluate, regression_metrics
from genexflow.training.splits import (
    Split,
    leave_one_batch_out,
    make_splits,
    stratified_kfold,
    train_val_split,
)
from genexflow.training.trainer import TensorData, Trainer, TrainResult, predict_module, seed_everything

__all__ = [
    "Split", "TensorData", "TrainConfig", "TrainResult", "Trainer", "bootstrap_ci", "classification_metrics",
    "evaluate", "leave_one_batch_out", "make_splits", "predict_module", "regression_metrics", "seed_everything",
    "stratified_kfold", "train_val_split",
]
