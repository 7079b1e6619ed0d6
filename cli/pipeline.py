"""``genexflow run`` (the training pipeline on this machine) and ``genexflow pipeline compile|submit|
schedule|run|params`` (Kubeflow Pipelines: compile specs, submit runs and recurring runs to an endpoint)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from genexflow import datasets
from genexflow.cli._batch import batch_method_overrides, print_confounding
from genexflow.cli._common import console
from genexflow.cli._summary import print_run_summary
from genexflow.errors import InputError
from genexflow.io import read_sample_sheet
from genexflow.overrides import load_config_file, nest_dotted, parse_overrides
from genexflow.serving.triton_server import TritonServer

pipeline_app = typer.Typer(help="Kubeflow pipelines: compile, submit, schedule (cron), run locally.",
                           no_args_is_help=True)

#: ``genexflow run --demo`` / ``--dataset NAME``: shipped cohorts and their label/batch columns.
DEMO_DATASETS = {
    "golub": {"label": "label", "batch_column": None},
    "bladderbatch": {"label": "cancer", "batch_column": "batch"},
    "geuvadis_sex": {"label": "sex", "batch_column": None},
}
DEMO_DEFAULT = "golub"
#: Small, fast defaults for the demo (2 CPU cores, well under 10 minutes including training).
#: The demo cross-validates with 3 folds (the run report's comparison with the baselines on the same folds,
#: ROC and confusion matrix need out-of-fold predictions) and uses a small network: the default readout
#: (512, 256) over genes x GCN width dominates CPU time.
DEMO_TRAIN_CONFIG = {"epochs": 20, "patience": 6, "batch_size": 16, "lr": 3e-3,
                     "model": {"readout_dims": [64], "ae_hidden": 64, "latent_dim": 16, "d_model": 32,
                               "ff_dim": 64, "transformer_layers": 1, "head_hidden": 32}}
DEMO_CV_FOLDS = 3
DEMO_EXPLAIN_SAMPLES = 10


def _split_list(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


def _parse_params(params: list[str] | None, params_file: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if params_file is not None:
        data = yaml.safe_load(params_file.read_text()) or {}
        if not isinstance(data, dict):
            raise InputError(f"{params_file}: expected a mapping of pipeline parameters")
        out.update(data)
    # NAME=VALUE, VALUE read as JSON (covariates='["age"]'); config.lr=0.01 sets one key of a dict parameter
    out.update(parse_overrides(params, nested=None))
    return nest_dotted(out, nested=None)


def _progress_printer():
    icons = {"RUNNING": "[cyan]▶[/]", "SUCCESS": "[green]✓[/]", "FAILURE": "[red]✗[/]", "CACHED": "[blue]↺[/]"}

    def on_event(ev) -> None:
        took = f" ({ev.seconds:.1f} s)" if ev.seconds is not None and ev.state != "RUNNING" else ""
        state = "" if ev.state in ("RUNNING", "SUCCESS") else f" [bold]{ev.state.lower()}[/]"
        console.print(f"{icons.get(ev.state, '·')} {ev.task}{state}{took}")

    return on_event


def _print_steps(run, out) -> None:
    """Every step of a run in execution order: state, wall time, output values, artifact locations
    (paths are printed whole, never truncated)."""
    icons = {"SUCCESS": "[green]✓[/]", "FAILURE": "[red]✗[/]", "CACHED": "[blue]↺[/]"}
    out.print(f"[bold]steps of {run.run_dir.name}[/]")
    for name, t in sorted(run.tasks.items(), key=lambda kv: kv[1].path.stat().st_mtime):
        took = "" if t.seconds is None else f"{t.seconds:6.1f} s"
        vals = " ".join(f"{k}={_short_value(v)}" for k, v in t.parameters.items() if not isinstance(v, list | dict))
        out.print(f"  {icons.get(t.state, '·')} {name:<34} {took:>8}  {vals}", highlight=False)
        for k, uris in t.artifacts.items():
            for u in uris:
                if Path(u).exists():
                    out.print(f"      {k:<16} {u}", highlight=False)


def _short_value(v: Any) -> str:
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------------- genexflow run
def run(
    expression: Path = typer.Option(None, "--expression", "-e", help="Expression matrix (CSV/TSV/Parquet; genes or samples as rows)."),
    samples: Path = typer.Option(None, "--samples", "-s", help="Sample sheet (CSV/TSV), one row per sample."),
    label: str = typer.Option(None, "--label", "-l", help="Sample-sheet column to predict."),
    batch_column: str = typer.Option(None, "--batch-column", help="Batch column (batch correction, grouped splits)."),
    batch_method: str = typer.Option(None, "--batch-method", help="auto, combat, combat-seq (counts; not "
                                                                   "exportable to ONNX), harmony or none [default: "
                                                                   "auto = combat, or none when the batch is "
                                                                   "confounded with the label]."),
    no_combat: bool = typer.Option(False, "--no-combat", help="Alias of --batch-method none."),
    covariates: list[str] = typer.Option(None, "--covariates", help="Covariate columns (repeat or comma-separate)."),
    value_type: str = typer.Option("auto", "--value-type", help="counts, tpm, fpkm, log-expression or auto."),
    allowed_labels: list[str] = typer.Option(None, "--allowed-labels", help="Valid label values; other samples are quarantined."),
    demo: bool = typer.Option(False, "--demo", help=f"Use the shipped {DEMO_DEFAULT} cohort with small, fast settings."),
    dataset: str = typer.Option(None, "--dataset", help=f"Use a shipped cohort: {', '.join(DEMO_DATASETS)}."),
    workspace: Path = typer.Option(None, "--workspace", "-w", help="Local workspace (MLflow db, pipeline outputs, Triton repository). Default: $GENEXFLOW_WORKSPACE or ./.genexflow"),
    model_name: str = typer.Option("genexflow-classifier", "--model-name", help="Registered model name (MLflow)."),
    experiment: str = typer.Option("genexflow", "--experiment", help="MLflow experiment."),
    config: Path = typer.Option(None, "--config", help="YAML with training options (epochs, lr, model: {...}), plus optional preprocessing: {...} and ingest: {...} (IngestConfig) sections."),
    epochs: int = typer.Option(None, "--epochs", help="Maximum training epochs (overrides --config)."),
    hpo_trials: int = typer.Option(0, "--hpo-trials", help="Optuna trials before the final fit (0: no HPO)."),
    cv_folds: int = typer.Option(None, "--cv-folds", help="Cross-validation folds of the deep model vs baselines (0: skip; default 5, demo 3)."),
    explain_samples: int = typer.Option(None, "--explain-samples", help="Samples explained (attention, IG, SHAP); 0 skips (default 100, demo 20)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (splits, initialisation)."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Held-out fraction for evaluation and the gate."),
    baselines: list[str] = typer.Option(None, "--baselines", help="Baselines to compare with (default: the task's defaults; 'all')."),
    gate_metric: str = typer.Option("balanced_accuracy", "--gate-metric", help="Held-out metric the gate compares (r2 for regression)."),
    gate_margin: float = typer.Option(0.0, "--gate-margin", help="Required improvement over the champion."),
    baseline_margin: float = typer.Option(0.0, "--baseline-margin", help="Required improvement over the best baseline (negative: may trail it)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse outputs of deterministic steps."),
    json_out: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout."),
) -> None:
    """Run the training pipeline on this machine (kfp.local, sqlite MLflow, local Triton).

    Ingest + validate -> preprocess -> train -> evaluate -> register -> gate -> export ONNX ->
    infra-validate in Triton -> promote -> deploy. Prints each step as it runs and where the run, the
    registered model version and the reports are.
    """
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.pipelines.workspace import Workspace, run_training, training_arguments

    ws = Workspace(workspace) if workspace else Workspace.default()
    train_config = load_config_file(config) if config else {}
    if demo or dataset:
        name = dataset or DEMO_DEFAULT
        if name not in DEMO_DATASETS:
            raise InputError(f"unknown dataset {name!r}; shipped: {', '.join(DEMO_DATASETS)}")
        if expression or samples:
            raise InputError("--demo/--dataset use a shipped cohort; drop --expression/--samples")
        expression, samples = _export_dataset(name, ws)
        label = label or DEMO_DATASETS[name]["label"]
        batch_column = batch_column or DEMO_DATASETS[name]["batch_column"]
        train_config = {**DEMO_TRAIN_CONFIG, **train_config,
                        "model": {**DEMO_TRAIN_CONFIG["model"], **train_config.get("model", {})}}
        cv_folds = DEMO_CV_FOLDS if cv_folds is None else cv_folds
        explain_samples = DEMO_EXPLAIN_SAMPLES if explain_samples is None else explain_samples
    missing = [opt for opt, v in (("--expression", expression), ("--samples", samples), ("--label", label)) if not v]
    if missing:
        raise InputError(f"missing {', '.join(missing)} (or use --demo for a shipped cohort)")
    _check_baselines(_split_list(baselines), str(train_config.get("task", "auto")))
    if epochs is not None:
        train_config["epochs"] = epochs
    preprocessing = train_config.pop("preprocessing", {}) if isinstance(train_config.get("preprocessing"), dict) else {}
    conf = None
    if batch_column:
        conf = print_confounding(read_sample_sheet(samples), label, batch_column, str(train_config.get("task", "auto")))
    methods: dict[str, Any] = {"preprocessing": dict(preprocessing)}
    combat = batch_method_overrides(batch_method, no_combat, methods, conf)
    preprocessing.update(methods["preprocessing"])
    if combat is not None:
        train_config["combat"] = combat
    ingest_config = train_config.pop("ingest", {}) if isinstance(train_config.get("ingest"), dict) else {}
    args = training_arguments(
        expression, samples, label, ws, value_type=value_type, batch_column=batch_column,
        covariates=_split_list(covariates), allowed_labels=_split_list(allowed_labels), model_name=model_name,
        experiment=experiment, train_config=train_config, preprocessing=preprocessing, hpo_trials=hpo_trials,
        cv_folds=5 if cv_folds is None else cv_folds,
        explain_samples=100 if explain_samples is None else explain_samples, test_fraction=test_fraction, seed=seed,
        baselines=_split_list(baselines), gate_metric=gate_metric, gate_margin=gate_margin,
        baseline_margin=baseline_margin, ingest_config=ingest_config,
    )
    console.print(f"[bold]training pipeline[/] on {expression} ({label}); workspace {ws.root}")
    result = run_training(args, ws, enable_caching=cache, on_event=_progress_printer())
    if json_out:
        summary = result.to_dict()
        if result.mlflow_run_id:  # the run report as the last step completed it, like the terminal summary
            summary["run_report"] = str(_fetch_report(result))
        typer.echo(json.dumps(summary, indent=1, default=str))
        return
    _print_training_summary(result)


def _check_baselines(names: list[str], task: str) -> None:
    """Refuse unknown baseline names now, not after ingest and preprocessing have run."""
    # lazy: sklearn; `genexflow --help` imports every command module
    from genexflow.training.baselines import ALL_CLASSIFICATION, ALL_REGRESSION, baseline_names

    if not names or names in (["all"], ["none"]):
        return
    if task in ("classification", "regression"):
        baseline_names(task, names)  # raises, listing the task's baselines
        return
    known = dict.fromkeys([*ALL_CLASSIFICATION, *ALL_REGRESSION])
    bad = [n for n in names if n not in known]
    if bad:
        raise InputError(f"unknown baseline(s) {', '.join(bad)}; use {', '.join(ALL_CLASSIFICATION)} "
                         f"(classification) or {', '.join(ALL_REGRESSION)} (regression), 'all' or 'none'")


def _export_dataset(name: str, ws) -> tuple[Path, Path]:
    """Write a shipped cohort as files in the user layout (expression.parquet + samples.csv)."""
    folder = ws.datasets / name
    expr, sheet = folder / "expression.parquet", folder / "samples.csv"
    if not (expr.exists() and sheet.exists()):
        datasets.load(name).write(folder)
    return expr, sheet


def _print_training_summary(result) -> None:
    out = Console(soft_wrap=True)
    _print_steps(result.run, out)
    out.print(f"[bold]pipeline run[/]     {result.run.run_dir}  ({result.run.seconds:.0f} s, log {result.run.log_path})")
    out.print(f"[bold]MLflow[/]           {result.workspace.tracking_uri}  run {result.mlflow_run_id}")
    out.print(f"                 browse: mlflow ui --backend-store-uri {result.workspace.tracking_uri}")
    if result.registered_version is not None:
        alias = "champion" if result.promoted else "challenger"
        out.print(f"[bold]registered model[/] {result.model_name} version {result.registered_version} (alias {alias})")
    if result.gate_passed is not None:
        verdict = "[green]passed[/]" if result.gate_passed else "[yellow]not promoted[/]"
        out.print(f"[bold]gate[/]             {verdict}: {result.gate_reason}")
    if result.metrics:
        m = result.metrics
        key = "balanced_accuracy" if "balanced_accuracy" in m else "r2"
        base = {k.split(".")[1]: v for k, v in m.items() if k.startswith("baseline.") and k.endswith("." + key)}
        best = max(base, key=base.get) if base else None
        line = f"{key} {m.get(key, float('nan')):.3f}"
        if best:
            line += f" (best baseline {best} {base[best]:.3f})"
        out.print(f"[bold]held-out[/]         {line}", highlight=False)
    if result.infra:
        out.print(f"[bold]infra-validation[/] Triton answers = onnxruntime within {result.infra.get('max_abs_diff', 0):.1e} "
                  f"({int(result.infra.get('n_requests', 0))} requests)", highlight=False)
    if result.deployed_path:
        out.print(f"[bold]deployed[/]         {result.deployed_path} (Triton version {result.triton_version})")
    for label, path in result.reports.items():
        out.print(f"[bold]{label:<16}[/] {_viewable(path)}", highlight=False)
    if result.mlflow_run_id:  # the report as the last step completed it (model card: registry, gate, infra)
        print_run_summary(out, _fetch_report(result))


def _fetch_report(result) -> Path:
    """The training run's report.html (model card completed by the last step), copied next to the run."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.report import fetch_run_report

    return Path(fetch_run_report(result.mlflow_run_id, result.run.run_dir / "report.html",
                                 result.workspace.tracking_uri))


def _viewable(path: str) -> str:
    """KFP names an HTML artifact's file after the output (``report``); give browsers a ``.html`` copy."""
    p = Path(path)
    head = p.read_bytes()[:200].lstrip().lower() if p.is_file() else b""
    if p.suffix or not head.startswith((b"<html", b"<!doctype")):
        return str(p)

    html = p.with_name(p.name + ".html")
    shutil.copyfile(p, html)
    return str(html)


# ------------------------------------------------------------------------------------- pipeline compile
@pipeline_app.command("compile")
def compile_cmd(
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default: the package's compiled/ folder)."),
    name: str = typer.Option(None, "--name", help="Only this pipeline (training, batch-inference, monitoring)."),
    target: str = typer.Option("all", "--target", help="portable, cluster (kfp-kubernetes settings) or all."),
    image: str = typer.Option(None, "--image", help="Base image for every step (default $GENEXFLOW_BASE_IMAGE or the project image)."),
    gpu_image: str = typer.Option(None, "--gpu-image", help="CUDA image for the training step on a cluster."),
    check: bool = typer.Option(False, "--check", help="Do not write; exit 1 if the checked-in specs are stale."),
) -> None:
    """Compile the pipelines to KFP IR YAML (validated after writing)."""
    # lazy: kfp takes seconds to import, and `genexflow --help` imports every command module
    from genexflow.pipelines import compile as comp

    if check:
        stale = comp.stale_specs(out)
        if stale:
            console.print(f"[red]stale[/]: {', '.join(stale)} (run `genexflow pipeline compile`)")
            raise typer.Exit(1)
        console.print("[green]compiled specs are up to date[/]")
        return
    names = [name] if name else list(comp.PIPELINES)
    targets = list(comp.TARGETS) if target == "all" else [target]
    folder = out or comp.compiled_dir()
    for n in names:
        for t in targets:
            path = comp.compile_pipeline(n, Path(folder) / comp.spec_filename(n, t), target=t,
                                         base_image=image, gpu_image=gpu_image)
            console.print(f"[green]✓[/] {n} ({t}) -> {path}")


def _package(pipeline: str, portable: bool) -> Path:
    # lazy: kfp takes seconds to import, and `genexflow --help` imports every command module
    from genexflow.pipelines import compile as comp

    if pipeline in comp.PIPELINES:
        return comp.compiled_dir() / comp.spec_filename(pipeline, "portable" if portable else "cluster")
    p = Path(pipeline)
    if p.suffix in (".yaml", ".yml", ".json") or p.is_file():
        return p
    raise InputError(f"{pipeline!r} is neither a pipeline ({', '.join(comp.PIPELINES)}) nor a compiled YAML file")


# -------------------------------------------------------------------------------------- pipeline submit
@pipeline_app.command("submit")
def submit_cmd(
    pipeline: str = typer.Argument("training", help="training, batch-inference, monitoring, or a compiled YAML file."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Pipeline parameter NAME=VALUE (JSON values allowed); repeat."),
    params_file: Path = typer.Option(None, "--params-file", help="YAML/JSON mapping of pipeline parameters."),
    host: str = typer.Option(None, "--host", envvar="KFP_HOST", help="KFP endpoint (or $KFP_HOST)."),
    experiment: str = typer.Option("genexflow", "--experiment", help="KFP experiment (created if absent)."),
    run_name: str = typer.Option(None, "--run-name", help="Run display name (default: pipeline name + time)."),
    namespace: str = typer.Option(None, "--namespace", help="Kubeflow profile namespace (multi-user installs)."),
    service_account: str = typer.Option(None, "--service-account", help="Kubernetes service account of the run."),
    portable: bool = typer.Option(False, "--portable", help="Submit the spec without kfp-kubernetes settings."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the request body and send nothing."),
) -> None:
    """Submit a one-off run of a compiled pipeline to a Kubeflow Pipelines endpoint."""
    # lazy: kfp takes seconds to import, and `genexflow --help` imports every command module
    from genexflow.pipelines import submit as sub

    package = _package(pipeline, portable)
    args = _parse_params(param, params_file)
    run_name = run_name or f"{package.stem.split('.')[0]}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if dry_run:
        body = sub.build_run(package, arguments=args, run_name=run_name)
        typer.echo(json.dumps(sub.request_json(body), indent=1))
        return
    res = sub.submit_run(package, arguments=args, run_name=run_name, host=host, experiment=experiment,
                         namespace=namespace, service_account=service_account)
    console.print(f"[green]✓[/] submitted run {res.id} ({res.name}) in experiment {experiment}")
    typer.echo(res.url)


# ------------------------------------------------------------------------------------ pipeline schedule
@pipeline_app.command("schedule")
def schedule_cmd(
    pipeline: str = typer.Argument("monitoring", help="monitoring (default), training, batch-inference or a YAML file."),
    cron: str = typer.Option(..., "--cron", help="Cron schedule, 5 fields ('0 6 * * 1' = Mondays 06:00) or 6 with seconds."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Pipeline parameter NAME=VALUE; repeat."),
    params_file: Path = typer.Option(None, "--params-file", help="YAML/JSON mapping of pipeline parameters."),
    name: str = typer.Option(None, "--name", help="Recurring run name (default: <pipeline>-schedule)."),
    host: str = typer.Option(None, "--host", envvar="KFP_HOST", help="KFP endpoint (or $KFP_HOST)."),
    experiment: str = typer.Option("genexflow", "--experiment", help="KFP experiment (created if absent)."),
    namespace: str = typer.Option(None, "--namespace", help="Kubeflow profile namespace."),
    max_concurrency: int = typer.Option(1, "--max-concurrency", help="Runs of this schedule allowed at once."),
    service_account: str = typer.Option(None, "--service-account", help="Kubernetes service account of the runs."),
    catchup: bool = typer.Option(False, "--catchup/--no-catchup", help="Backfill missed intervals after a pause."),
    paused: bool = typer.Option(False, "--paused", help="Create the schedule disabled."),
    portable: bool = typer.Option(False, "--portable", help="Use the spec without kfp-kubernetes settings."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the request body and send nothing."),
) -> None:
    """Create a recurring (cron) run of a compiled pipeline, e.g. the monitoring pipeline every morning."""
    # lazy: kfp takes seconds to import, and `genexflow --help` imports every command module
    from genexflow.pipelines import submit as sub

    package = _package(pipeline, portable)
    args = _parse_params(param, params_file)
    name = name or f"{package.stem.split('.')[0]}-schedule"
    kw = dict(name=name, cron=cron, arguments=args, max_concurrency=max_concurrency, no_catchup=not catchup,
              enabled=not paused, service_account=service_account)
    if dry_run:
        typer.echo(json.dumps(sub.request_json(sub.build_recurring_run(package, **kw)), indent=1))
        return
    res = sub.schedule_run(package, host=host, experiment=experiment, namespace=namespace, **kw)
    console.print(f"[green]✓[/] created recurring run {res.id} ({name}, cron {sub.normalize_cron(cron)})")
    typer.echo(res.url)


# ---------------------------------------------------------------------------------- pipeline run/params
@pipeline_app.command("run")
def run_cmd(
    pipeline: str = typer.Argument(..., help="training, batch-inference or monitoring."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Pipeline parameter NAME=VALUE; repeat."),
    params_file: Path = typer.Option(None, "--params-file", help="YAML/JSON mapping of pipeline parameters."),
    workspace: Path = typer.Option(None, "--workspace", "-w", help="Local workspace (default ./.genexflow)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse outputs of deterministic steps."),
    serve: bool = typer.Option(False, "--serve", help="batch-inference: start a local Triton on the workspace's model repository for the run (sets triton_url)."),
) -> None:
    """Run any pipeline locally with kfp.local, with explicit parameters (MLflow/quarantine/Triton
    repository default to the workspace)."""
    # lazy: kfp takes seconds to import, and `genexflow --help` imports every command module
    from genexflow.pipelines import compile as comp

    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.pipelines.workspace import Workspace, _run_with_env

    if pipeline not in comp.PIPELINES:
        raise InputError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(comp.PIPELINES)}")
    ws = Workspace(workspace) if workspace else Workspace.default()
    args = _parse_params(param, params_file)
    p = comp.build(pipeline)
    defaults = {"mlflow_tracking_uri": ws.tracking_uri, "quarantine_root": str(ws.quarantine_root),
                "triton_repository": str(ws.triton_repository)}
    accepted = set(p.component_spec.inputs or {})
    args = {**{k: v for k, v in defaults.items() if k in accepted}, **args}
    if "experiment_name" in accepted:
        ws.ensure_experiment(args.get("experiment_name", "genexflow"))
    if serve:
        if "triton_url" not in accepted:
            raise InputError(f"--serve applies to pipelines that score through Triton, not {pipeline}")

        with TritonServer(ws.triton_repository) as server:
            console.print(f"local Triton on {ws.triton_repository} at {server.url}")
            res = _run_with_env(p, {**args, "triton_url": server.url}, ws, cache, _progress_printer())
    else:
        res = _run_with_env(p, args, ws, cache, _progress_printer())

    out = Console(soft_wrap=True)
    _print_steps(res, out)
    out.print(f"[bold]pipeline run[/] {res.run_dir} ({res.seconds:.0f} s, log {res.log_path})")


@pipeline_app.command("params")
def params_cmd(
    pipeline: str = typer.Argument("training", help="training, batch-inference, monitoring or a compiled YAML file."),
) -> None:
    """List a pipeline's parameters, types and defaults."""
    # lazy: kfp takes seconds to import, and `genexflow --help` imports every command module
    from genexflow.pipelines import submit as sub

    spec = sub.load_package(_package(pipeline, portable=True))
    table = Table("parameter", "type", "default")
    for k, v in sorted(sub.pipeline_parameters(spec).items()):
        table.add_row(k, str(v["type"]), json.dumps(v["default"]) if "default" in v else "(required)")

    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.add_typer(pipeline_app, name="pipeline")
