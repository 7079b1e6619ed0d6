"""Training components: fit preprocessing on the training split, train (optionally with HPO), evaluate."""

# no `from __future__ import annotations`: KFP reads the real annotation objects
from typing import NamedTuple

from genexflow.components._base import component
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


@component
def preprocess_fit(
    cohort: Input[Dataset],
    label_column: str,
    preprocessor: Output[Model],
    train: Output[Dataset],
    test: Output[Dataset],
    batch_column: str = "",
    covariates: list = [],  # noqa: B006 - KFP parameters take literal defaults
    preprocessing: dict = {},  # noqa: B006
    test_fraction: float = 0.2,
    seed: int = 0,
) -> NamedTuple("PreprocessOutputs", [("n_train", int), ("n_test", int), ("n_genes_kept", int)]):
    """Hold out a stratified test split, fit the preprocessing pipeline on the training rows only."""
    raise NotImplementedError("wired when genexflow.preprocessing.PreprocessingPipeline lands")


@component
def train(
    train: Input[Dataset],
    preprocessor: Input[Model],
    label_column: str,
    pipeline_job: str,
    bundle: Output[Model],
    metrics: Output[Metrics],
    batch_column: str = "",
    covariates: list = [],  # noqa: B006
    config: dict = {},  # noqa: B006
    preprocessing: dict = {},  # noqa: B006
    hpo_trials: int = 0,
    seed: int = 0,
    mlflow_tracking_uri: str = "",
    experiment_name: str = "genexflow",
) -> NamedTuple("TrainOutputs", [("mlflow_run_id", str)]):
    """Train the pathway network (after ``hpo_trials`` Optuna trials when > 0); log to MLflow; write the
    model bundle."""
    raise NotImplementedError("wired when genexflow.training lands")


@component
def evaluate(
    bundle: Input[Model],
    train: Input[Dataset],
    test: Input[Dataset],
    mlflow_run_id: str,
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
    mlflow_tracking_uri: str = "",
    baselines: list = [],  # noqa: B006
    seed: int = 0,
) -> NamedTuple("EvalOutputs", [("primary_metric", str), ("score", float)]):
    """Score the held-out split with the model and the baselines (fit on the same training rows)."""
    raise NotImplementedError("wired when genexflow.training.evaluate lands")
