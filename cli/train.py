"""``genexflow train``: cross-validate the pathway network against baselines, optionally search
hyper-parameters, train the final model, explain it, log everything to MLflow and write the model bundle."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from genexflow.cli._batch import batch_method_overrides, print_confounding
from genexflow.cli._common import console, progress
from genexflow.cli._summary import print_run_summary
from genexflow.cohort_checks import check_trainable
from genexflow.errors import InputError
from genexflow.ingest.values import describe, missing_cells


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def train(
    cohort: str = typer.Argument(..., help="Cohort folder, .h5ad, a matrix file (with --samples), or a shipped "
                                           "dataset name (golub, geuvadis_sex, bladderbatch)."),
    samples: Path = typer.Option(None, "--samples", "-s", help="Sample sheet (CSV/TSV, first column sample_id)."),
    label: str = typer.Option(..., "--label", "-l", help="Sample-sheet column to predict."),
    task: str = typer.Option(None, "--task", help="classification or regression [default: classification]."),
    value_type: str = typer.Option(None, "--value-type", help="counts, tpm, fpkm or log-expression (matrix input)."),
    batch_column: str = typer.Option(None, "--batch-column", help="Batch column (ComBat; grouping for --split lobo)."),
    batch_method: str = typer.Option(None, "--batch-method", help="Batch correction fitted in each training fold: "
                                                                   "auto, combat, combat-seq (counts; not "
                                                                   "exportable to ONNX), harmony or none [default: "
                                                                   "auto = combat, or none when the batch is "
                                                                   "confounded with the label]."),
    no_combat: bool = typer.Option(False, "--no-combat", help="Alias of --batch-method none: keep the batch column "
                                                               "for grouping (lobo) but do not correct."),
    covariates: str = typer.Option(None, "--covariates", help="Comma-separated covariates known at inference "
                                                               "(e.g. age,sex); never the label."),
    cv: int = typer.Option(5, "--cv", help="Cross-validation folds (0 = no CV, final model only)."),
    split: str = typer.Option("stratified", "--split", help="stratified (k-fold) or lobo (leave-one-batch-out)."),
    repeats: int = typer.Option(1, "--repeats", help="Repeats of the k-fold CV."),
    hpo: int = typer.Option(0, "--hpo", help="Optuna trials before training (0 = off)."),
    hpo_sampler: str = typer.Option("tpe", "--hpo-sampler", help="tpe or grid."),
    baselines: str = typer.Option(None, "--baselines", help="Comma-separated baselines, 'all' or 'none' "
                                                             "[default: logreg_l2,hist_gb,random_forest,pathway_*]."),
    epochs: int = typer.Option(None, "--epochs", help="Maximum epochs [default: 100; early stopping]."),
    batch_size: int = typer.Option(None, "--batch-size", help="Mini-batch size [default: 32]."),
    lr: float = typer.Option(None, "--lr", help="AdamW learning rate [default: 1e-4]."),
    gene_sets: str = typer.Option(None, "--gene-sets", help="kegg, go_bp, progeny or a GMT path [default: kegg]."),
    seed: int = typer.Option(None, "--seed", help="Random seed [default: 0]."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N [default: auto]."),
    wide_init: str = typer.Option(None, "--wide-init", help="Start the wide gene-level path from a GLM fitted on "
                                                            "the training rows: auto, l2, elasticnet, or none "
                                                            "(train it from zeros) [default: auto]."),
    init_from: str = typer.Option(None, "--init-from", help="Pretrained encoder (genexflow pretrain): its folder "
                                                            "or registered version (models:/genexflow-encoder/1, "
                                                            "models:/genexflow-encoder@ALIAS); the autoencoder "
                                                            "branch starts from it, then the network is fine-tuned."),
    preset: str = typer.Option(None, "--preset", help="Model size: tiny, small or default [default: default]."),
    config: Path = typer.Option(None, "--config", help="YAML/JSON file of TrainConfig fields."),
    set_: list[str] = typer.Option(None, "--set", help="Override KEY=VALUE (repeatable), e.g. model.d_model=32, "
                                                         "noise_std=0.1, preprocessing.combat=false."),
    out: Path = typer.Option(None, "--out", "-o", help="Bundle folder [default: .genexflow/bundles/RUN_ID]."),
    tracking_uri: str = typer.Option(None, "--tracking-uri", help="MLflow tracking URI [default: "
                                                                  "$MLFLOW_TRACKING_URI or sqlite .genexflow/mlflow.db]."),
    experiment: str = typer.Option("genexflow", "--experiment", help="MLflow experiment name."),
    run_name: str = typer.Option(None, "--run-name", help="MLflow run name."),
    no_tracking: bool = typer.Option(False, "--no-tracking", help="Do not log to MLflow."),
    explain_samples: int = typer.Option(100, "--explain-samples", help="Cases explained (0 = skip interpretability)."),
    no_shap: bool = typer.Option(False, "--no-shap", help="Skip SHAP (the slowest explanation)."),
) -> None:
    """Train with fold-fitted CV against baselines, track in MLflow and write a model bundle.

    Example: genexflow train golub --label label --cv 5 --epochs 50 --out bundles/golub
    """
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.training.config import MODEL_PRESETS, parse_overrides
    from genexflow.training.inputs import build_config, load_training_cohort
    from genexflow.training.trainer import init_distributed

    if preset is not None and preset not in MODEL_PRESETS:
        raise InputError(f"unknown preset {preset!r}; use one of {', '.join(MODEL_PRESETS)}")
    c, path = load_training_cohort(cohort, samples, value_type)
    overrides = parse_overrides(set_)
    conf = print_confounding(c.samples, label, batch_column, task or "auto") if batch_column else None
    combat = batch_method_overrides(batch_method, no_combat, overrides, conf)
    if preset:
        overrides["model"] = {**MODEL_PRESETS[preset], **overrides.get("model", {})}
    if init_from is not None:
        overrides["init_from"] = str(init_from)
    cfg = build_config(
        config, overrides, task=task, label=label, batch_column=batch_column,
        covariates=_split(covariates) or None, epochs=epochs, batch_size=batch_size, lr=lr, gene_sets=gene_sets,
        seed=seed, device=device, combat=combat, wide_init=wide_init,
    )
    dist = init_distributed(cfg.device)  # torchrun (PyTorchJob): join the process group; no-op otherwise
    _train(c, path, cfg, baselines, cv, split, repeats, hpo, hpo_sampler, out, no_tracking, tracking_uri,
           experiment, run_name, explain_samples, no_shap, quiet=not dist.is_main)
    if dist.active:  # on an error the rank raises instead and torchrun stops the others
        # lazy: only needed for DDP runs
        import torch.distributed as tdist

        tdist.barrier()  # rank 0 is still writing the bundle
        tdist.destroy_process_group()


def _train(c, path, cfg, baselines, cv, split, repeats, hpo, hpo_sampler, out, no_tracking, tracking_uri,
           experiment, run_name, explain_samples, no_shap, quiet: bool) -> None:
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.training.baselines import baseline_names
    from genexflow.training.cv import DEEP, encode_labels
    from genexflow.training.run import Hooks, train_and_track
    from genexflow.training.splits import make_splits

    base = None if baselines is None else ([] if baselines == "none" else
                                           ("all" if baselines == "all" else _split(baselines)))
    if not quiet:
        console.print(f"{c}", markup=False)

    check_trainable(c, cfg.label, cfg.task, cfg.covariates or (), cfg.batch_column)
    missing = missing_cells(c.X, c.sample_ids, c.genes)
    if missing and not quiet:  # never imputed without a word
        console.print(f"[yellow]{len(missing)} missing value(s) will be imputed in every training fold (KNN, or "
                      f"the training gene means): {escape(describe(missing))}[/]")
    # Count the work for the progress bars (the same splits cross_validate will draw).
    labels = encode_labels(c, cfg)
    n_folds = 0
    if cv >= 2 or split == "lobo":
        y = labels.y[labels.labeled]
        b = c.samples[cfg.batch_column].astype(str).to_numpy()[labels.labeled] if cfg.batch_column else None
        n_folds = len(make_splits(split, y, b, n_splits=max(cv, 2), n_repeats=repeats, seed=cfg.seed, task=cfg.task))
    n_models = 1 + len(baseline_names(cfg.task, base) if base != [] else [])
    methods = ("attention", "saliency", "integrated_gradients") + (() if no_shap else ("shap",))

    if quiet:  # DDP worker rank: same work, no output
        train_and_track(c, cfg, cohort_path=path, cv=cv, split=split, n_repeats=repeats, baselines=base,
                        hpo_trials=hpo, hpo_sampler=hpo_sampler, tracking=False, explain_samples=0)
        return
    with progress() as bar:
        stage_task = bar.add_task("starting", total=None)
        fold_task = bar.add_task("folds x models", total=max(n_folds * n_models, 1), visible=n_folds > 0)
        trial_task = bar.add_task("HPO trials", total=max(hpo, 1), visible=hpo > 0)
        epoch_tasks: dict[str, int] = {}

        def on_stage(s: str) -> None:
            bar.update(stage_task, description=s)

        def fold_epochs(name: str, max_epochs: int):
            tid = bar.add_task(f"{name} epochs", total=max_epochs)
            epoch_tasks[name] = tid

            def cb(epoch: int, m: dict) -> None:
                val = m.get("val_loss")
                bar.update(tid, completed=epoch + 1,
                           description=f"{name} epochs" + (f" (val loss {val:.3f})" if val is not None else ""))
            return cb

        def on_fold(sp, model: str, m: dict) -> None:
            bar.advance(fold_task)
            if model == DEEP and sp.name in epoch_tasks:  # early stopping: close the epoch bar
                t = epoch_tasks[sp.name]
                bar.update(t, completed=bar.tasks[t].total, visible=False)

        def on_trial(number: int, value, state: str) -> None:
            bar.advance(trial_task)

        outcome = train_and_track(
            c, cfg, cohort_path=path, cv=cv, split=split, n_repeats=repeats, baselines=base, hpo_trials=hpo,
            hpo_sampler=hpo_sampler, out=out, tracking=not no_tracking, tracking_uri=tracking_uri,
            experiment=experiment, run_name=run_name, explain_samples=explain_samples, explain_methods=methods,
            hooks=Hooks(on_stage=on_stage, fold_epochs=fold_epochs, on_fold=on_fold, on_trial=on_trial),
        )
        bar.update(stage_task, description="done", total=1, completed=1)

    if outcome.cv is not None and split == "lobo":
        console.print(outcome.cv.per_group("accuracy").round(3).to_string())
    if outcome.report_path is not None:
        print_run_summary(console, outcome.report_path)
    if outcome.run_id:
        console.print(f"MLflow run {outcome.run_id} ({outcome.run_id and (tracking_uri or 'default store')})",
                      markup=False)
    console.print(f"model bundle -> {outcome.bundle_dir}", markup=False)
    if outcome.cv is not None:
        # name=value lines on stdout: Katib's StdOut metrics collector (infra/k8s/training) reads them.
        for k, v in outcome.model.info.metrics.items():
            if isinstance(v, float):
                typer.echo(f"cv_{k}={v:.6f}")
    typer.echo(str(outcome.bundle_dir))



def register(app: typer.Typer) -> None:
    app.command("train")(train)
