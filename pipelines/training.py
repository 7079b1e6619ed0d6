"""The training pipeline.

::

    ingest + validate -> preprocess (hold out a test split, fit on the training rows ONCE; sha256 recorded)
      -> train (HPO optional; the final model takes that fitted pipeline as it is, the bundle stores its bytes)
      -> evaluate on the held-out split (+ baselines fit on the same rows with the same pipeline)
      -> export ONNX (that pipeline inside the graph)
      -> register the artifact + bundle (alias challenger) -> gate vs champion and baselines
      -> dsl.If(gate passed): infra-validate in a real Triton -> promote (alias champion) -> deploy
    ExitHandler: record the run outcome (state + error) as an artifact and on the MLflow runs of this job

Export comes before registration because the registered version IS the serving artifact (its sha256 is
what the gate scores, Triton validates and deploy ships). Steps whose result depends only on their inputs
are cached (preprocess, export); steps with external effects or state (ingest reads files that may change,
training logs to MLflow, the registry, Triton) always run.
"""

# no `from __future__ import annotations`: KFP reads the real annotation objects
from typing import Any

from kfp import dsl

from genexflow.components.data import ingest_validate
from genexflow.components.outcome import record_outcome
from genexflow.components.registry import gate, promote, register
from genexflow.components.serving import deploy, export_onnx, infra_validate
from genexflow.components.training import evaluate, preprocess_fit, train
from genexflow.pipelines.kubernetes import Platform

NAME = "genexflow-training"


def build(platform: Platform | None = None) -> Any:
    """Build the training pipeline; ``platform`` adds cluster settings (PVC, Secrets, GPU) to each task."""
    platform = platform or Platform()

    @dsl.pipeline(name=NAME, description="Ingest, preprocess, train, evaluate, register, gate, export, "
                  "infra-validate, promote and deploy a gene-expression model.")
    def training_pipeline(
        expression_uri: str,
        samples_uri: str,
        label_column: str,
        value_type: str = "auto",
        batch_column: str = "",
        covariates: list = [],  # noqa: B006 - KFP pipeline parameters take literal defaults
        allowed_labels: list = [],  # noqa: B006
        quarantine_root: str = "/data/quarantine",
        ingest_config: dict = {},  # noqa: B006
        model_name: str = "genexflow-classifier",
        serving_name: str = "genexflow_classifier",
        experiment_name: str = "genexflow",
        mlflow_tracking_uri: str = "",
        train_config: dict = {},  # noqa: B006
        preprocessing: dict = {},  # noqa: B006
        hpo_trials: int = 0,
        cv_folds: int = 5,
        explain_samples: int = 100,
        test_fraction: float = 0.2,
        seed: int = 0,
        baselines: list = [],  # noqa: B006
        gate_metric: str = "balanced_accuracy",
        gate_margin: float = 0.0,
        baseline_margin: float = 0.0,
        triton_repository: str = "/data/triton/models",
        triton_url: str = "",
    ):
        job = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        exit_task = record_outcome(pipeline_job=job, mlflow_tracking_uri=mlflow_tracking_uri,
                                   experiment_name=experiment_name, model_name=model_name)
        _configure(platform(exit_task, "mlflow"), "record outcome", cache=False)
        with dsl.ExitHandler(exit_task, name="training-run"):
            ing = ingest_validate(
                expression_uri=expression_uri, samples_uri=samples_uri, label_column=label_column,
                value_type=value_type, batch_column=batch_column, covariates=covariates,
                allowed_labels=allowed_labels, quarantine_root=quarantine_root, run_id=job,
                ingest_config=ingest_config)
            _configure(platform(ing, "data"), "ingest + validate", cache=False)

            pre = preprocess_fit(
                cohort=ing.outputs["cohort"], label_column=label_column, batch_column=batch_column,
                covariates=covariates, preprocessing=preprocessing, config=train_config, test_fraction=test_fraction,
                seed=seed)
            _configure(platform(pre, "data"), "preprocess (fit on train)", cache=True)

            tr = train(
                train=pre.outputs["train"], preprocessor=pre.outputs["preprocessor"], label_column=label_column, batch_column=batch_column,
                covariates=covariates, pipeline_job=job, config=train_config, preprocessing=preprocessing,
                cv_folds=cv_folds, baselines=baselines, hpo_trials=hpo_trials, explain_samples=explain_samples,
                seed=seed, mlflow_tracking_uri=mlflow_tracking_uri, experiment_name=experiment_name)
            _configure(platform(tr, "mlflow", "gpu"), "train", cache=False)

            ev = evaluate(
                bundle=tr.outputs["bundle"], preprocessor=pre.outputs["preprocessor"], train=pre.outputs["train"],
                test=pre.outputs["test"],
                mlflow_run_id=tr.outputs["mlflow_run_id"], mlflow_tracking_uri=mlflow_tracking_uri,
                baselines=baselines, seed=seed)
            _configure(platform(ev, "mlflow"), "evaluate vs baselines", cache=False)

            ex = export_onnx(bundle=tr.outputs["bundle"])
            _configure(platform(ex, "data"), "export ONNX", cache=True)

            reg = register(onnx=ex.outputs["onnx"], bundle=tr.outputs["bundle"], evaluation=ev.outputs["metrics"],
                           mlflow_run_id=tr.outputs["mlflow_run_id"], model_name=model_name,
                           mlflow_tracking_uri=mlflow_tracking_uri)
            _configure(platform(reg, "mlflow"), "register (challenger)", cache=False)

            gt = gate(model_name=model_name, version=reg.outputs["version"], heldout=pre.outputs["test"],
                      mlflow_tracking_uri=mlflow_tracking_uri, metric=gate_metric, margin=gate_margin,
                      baseline_margin=baseline_margin)
            _configure(platform(gt, "mlflow"), "gate vs champion + baselines", cache=False)

            with dsl.If(gt.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - KFP condition
                iv = infra_validate(model_name=model_name, version=reg.outputs["version"],
                                    heldout=pre.outputs["test"], mlflow_tracking_uri=mlflow_tracking_uri)
                _configure(platform(iv, "mlflow", "triton"), "infra-validate (Triton)", cache=False)
                pr = promote(model_name=model_name, version=reg.outputs["version"],
                             mlflow_tracking_uri=mlflow_tracking_uri).after(iv)
                _configure(platform(pr, "mlflow"), "promote (champion)", cache=False)
                dp = deploy(onnx=ex.outputs["onnx"], model_name=model_name, version=reg.outputs["version"],
                            repository=triton_repository, serving_name=serving_name, triton_url=triton_url,
                            mlflow_tracking_uri=mlflow_tracking_uri).after(pr)
                _configure(platform(dp, "data", "mlflow"), "deploy (Triton repository)", cache=False)

    return training_pipeline


def _configure(task: Any, display_name: str, *, cache: bool) -> Any:
    task.set_display_name(display_name)
    task.set_caching_options(cache)
    return task


#: The portable training pipeline (what kfp.local runs and ``compiled/training.yaml`` holds).
training_pipeline = build()
