"""Training components: hold out a test split and fit preprocessing on the training rows, train (CV,
baselines, optional HPO, final model, bundle; tracked in MLflow), evaluate on the held-out split.

The preprocessing is fitted once, at ``preprocess-fit``: ``train`` builds the final model on that very
pipeline and the bundle stores its bytes unchanged, ``evaluate`` scores the baselines with it, and its
sha256 (recorded here) is the one the bundle, the ONNX sidecar, the registry and the served artifact carry.
"""

# no `from __future__ import annotations`: KFP reads the real annotation objects
# lazy: each component imports inside its body, because KFP ships the function body alone to the container
from typing import NamedTuple

from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from genexflow.components._base import component


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
    config: dict = {},  # noqa: B006
    test_fraction: float = 0.2,
    seed: int = 0,
) -> NamedTuple("PreprocessOutputs", [("n_train", int), ("n_test", int), ("n_genes_out", int), ("sha256", str)]):
    """Hold out a stratified test split (never seen by training, HPO or preprocessing) and fit the
    preprocessing pipeline on the training rows only: the one pipeline the final model, the baselines, the
    ONNX graph and serving use. Returns its sha256."""
    from genexflow.components._steps import fit_heldout_preprocessing, train_config

    cfg = train_config(config, label_column, batch_column, covariates, preprocessing, seed)
    fitted = fit_heldout_preprocessing(cohort.path, cfg, test_fraction, preprocessor.path, train.path, test.path)
    preprocessor.metadata.update(fitted.metadata())
    return (fitted.n_train, fitted.n_test, fitted.n_genes_out, fitted.sha256)


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
    cv_folds: int = 5,
    baselines: list = [],  # noqa: B006
    hpo_trials: int = 0,
    explain_samples: int = 100,
    seed: int = 0,
    mlflow_tracking_uri: str = "",
    experiment_name: str = "genexflow",
) -> NamedTuple("TrainOutputs", [("mlflow_run_id", str)]):
    """Cross-validate the deep model against the baselines, search hyper-parameters (``hpo_trials`` > 0),
    fit the final model on the training split with the ``preprocessor`` fitted at ``preprocess-fit`` (not
    refitted: the bundle stores its bytes) and write the bundle (+ drift reference); all in one MLflow run
    tagged with this pipeline job."""
    from genexflow.bundle import PickledPreprocessing
    from genexflow.cohort import Cohort
    from genexflow.components._steps import log_metrics, train_config
    from genexflow.training.run import train_and_track

    cohort = Cohort.read(train.path)
    out = train_and_track(
        cohort, train_config(config, label_column, batch_column, covariates, preprocessing, seed),
        cohort_path=train.path, cv=cv_folds, baselines=list(baselines) or None, hpo_trials=hpo_trials,
        out=bundle.path, tracking_uri=mlflow_tracking_uri or None, experiment=experiment_name,
        explain_samples=explain_samples, tags={"genexflow.pipeline_job": pipeline_job},
        preprocessing=PickledPreprocessing.read(preprocessor.path))
    log_metrics(metrics, out.metrics)
    bundle.metadata.update({"mlflow_run_id": out.run_id or "", "task": out.model.info.task,
                            "preprocessing_sha256": out.preprocessing_sha256})
    return (out.run_id or "",)


@component
def evaluate(
    bundle: Input[Model],
    preprocessor: Input[Model],
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
    """Score the held-out split with the trained model and with the baselines (fit on the same training
    rows with the model's own preprocessing, refused unless it is ``preprocessor``); log both to the
    training's MLflow run."""
    from genexflow.components._steps import evaluate_heldout

    ev = evaluate_heldout(bundle.path, preprocessor.path, train.path, test.path, baselines=list(baselines),
                          seed=seed, tracking_uri=mlflow_tracking_uri, run_id=mlflow_run_id)
    ev.log_kfp(metrics, classification)
    ev.write_html(report.path)
    return (ev.primary_metric, float(ev.metrics.get(ev.primary_metric, float("nan"))))
