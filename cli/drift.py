"""``genexflow drift``: check a new cohort for drift (exit 3 on drift), build reference profiles, serve
Prometheus metrics.

::

    genexflow drift NEW_COHORT [--samples SHEET] [--model champion|BUNDLE_DIR|REFERENCE_DIR] [--out DIR]
                               [--policy policy.yaml] [--trigger/--no-trigger] [--mode local|kfp]
    genexflow drift profile COHORT --out REFERENCE_DIR [--batch-column batch] [--covariates age,sex]
    genexflow drift serve-metrics --state-dir DIR [--port 9108]

``genexflow drift NEW_COHORT`` is short for ``genexflow drift check NEW_COHORT``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from typer.core import TyperGroup

from genexflow.cli._common import console, step
from genexflow.errors import InputError
from genexflow.monitoring.metrics import StateDirCollector
from genexflow.monitoring.metrics import serve_metrics as start
from genexflow.monitoring.policy import DriftPolicy

EXIT_DRIFT = 3


class _DefaultCheckGroup(TyperGroup):
    """A group whose first argument, when it is not a subcommand, is the cohort of ``check``."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["check", *args]
        return super().parse_args(ctx, args)


drift_app = typer.Typer(
    cls=_DefaultCheckGroup, no_args_is_help=True,
    help="Drift monitoring: `genexflow drift NEW_COHORT` checks a cohort against the model's reference "
         "profile (exit 3 on drift, so schedulers can act); `profile` builds a reference; `serve-metrics` "
         "exposes Prometheus metrics.",
)


def _split(values: str | None) -> list[str]:
    return [v.strip() for v in (values or "").split(",") if v.strip()]


def _resolve_model(model: str, model_name: str, tracking_uri: str | None, out: Path) -> Path:
    """A bundle/reference folder as given, or the registered version ``model`` (alias or number) of
    ``model_name`` downloaded from the MLflow registry."""
    path = Path(model)
    if path.exists():
        return path

    name, _, ref = model.partition("@") if "@" in model else (model_name, "", model)
    if "/" in ref or ref.endswith((".json", ".parquet")):
        raise InputError(f"{model}: no such bundle or reference folder")
    try:
        # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
        from genexflow.serving.registry import default_tracking_uri, registered_bundle
    except ImportError as exc:  # the registry is part of the serving area
        raise InputError(f"--model {model}: the model registry is not available ({exc}); pass a bundle or "
                         "reference folder") from exc
    uri = tracking_uri or default_tracking_uri()
    with step(f"download {name}@{ref} from the registry"):
        return registered_bundle(name, ref, uri, out / "bundle")


def _cohort_files(new_cohort: Path, samples: Path | None) -> tuple[Path, Path]:
    """Expression matrix and sample sheet of the new cohort (for the retraining run's arguments)."""
    if new_cohort.is_dir():
        expr = next((p for p in (new_cohort / "expression.parquet", new_cohort / "expression.csv") if p.exists()),
                    None)
        sheet = samples or new_cohort / "samples.csv"
        if expr is None or not sheet.exists():
            raise InputError(f"{new_cohort}: retraining needs expression.parquet and samples.csv in the folder")
        return expr, sheet
    if samples is None:
        raise InputError("retraining from a matrix file needs --samples SHEET")
    return new_cohort, samples


@drift_app.command("check")
def check(
    new_cohort: Path = typer.Argument(..., help="New cohort: folder (expression.parquet + samples.csv), .h5ad, "
                                      "or a matrix file with --samples."),
    samples: Path | None = typer.Option(None, "--samples", "-s", help="Sample sheet for a bare matrix file."),
    model: str = typer.Option("champion", "--model", "-m",
                              help="champion / challenger / a version number (registered model), NAME@ALIAS, a "
                                   "model-bundle folder or a reference-profile folder."),
    model_name: str = typer.Option("genexflow-classifier", "--model-name", help="Registered model name."),
    out: Path = typer.Option(Path("drift-report"), "--out", "-o", help="Output folder for the reports."),
    policy_file: Path | None = typer.Option(None, "--policy", help="YAML/JSON file of DriftPolicy thresholds."),
    label: str | None = typer.Option(None, "--label", help="Label column of the new sheet (performance decay; "
                                     "default: the model's)."),
    trigger: bool = typer.Option(False, "--trigger/--no-trigger", help="On drift, start the training pipeline."),
    mode: str = typer.Option("local", "--mode", help="Retraining: local (kfp.local) or kfp (cluster endpoint)."),
    kfp_host: str | None = typer.Option(None, "--kfp-host", help="KFP endpoint for --mode kfp (or KFP_HOST)."),
    cooldown_file: Path | None = typer.Option(None, "--cooldown-file",
                                              help="Cooldown state (default <workspace>/drift/cooldown.json)."),
    force: bool = typer.Option(False, "--force-retrain", help="Retrain even without drift (cooldown applies)."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri",
                                            help="MLflow tracking URI (default: the project store); 'none' "
                                                 "skips MLflow."),
    experiment: str = typer.Option("genexflow-drift", "--experiment", help="MLflow experiment of drift checks."),
    evidently: bool = typer.Option(True, "--evidently/--no-evidently", help="Evidently report on compact "
                                   "features (slow on many columns)."),
    max_pathways: int = typer.Option(50, "--max-pathways", help="Pathway-score columns given to Evidently."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON on stdout."),
    fail_on_drift: bool = typer.Option(True, "--fail-on-drift/--no-fail-on-drift",
                                       help=f"Exit {EXIT_DRIFT} when drift is detected."),
) -> None:
    """Check NEW_COHORT for drift against the model's reference profile; exit 3 on drift."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.monitoring.check import drift_check, record_trigger

    policy = DriftPolicy.from_file(policy_file) if policy_file else DriftPolicy()
    out.mkdir(parents=True, exist_ok=True)
    reference = _resolve_model(model, model_name, tracking_uri, out)
    uri = tracking_uri
    if uri is None:
        try:
            # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
            from genexflow.serving.registry import default_tracking_uri

            uri = default_tracking_uri()
        except ImportError:
            uri = None
    key = f"{model_name}@{model}" if not Path(model).exists() else Path(model).resolve().name
    with step(f"drift check of {new_cohort}"):
        result = drift_check(new_cohort, reference, policy=policy, out_dir=out, mlflow_tracking_uri=uri,
                             experiment_name=experiment, samples=samples, label_column=label, model_key=key,
                             evidently=evidently, max_pathways=max_pathways)
    d = result.decision
    if trigger and (d.drift or force):
        # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
        from genexflow.pipelines.trigger import trigger_retrain
        from genexflow.profile import ReferenceProfile

        meta = ReferenceProfile.load(reference).meta
        label_col = label or meta.get("label_column")
        if not label_col:
            raise InputError("retraining needs the label column: pass --label")
        expr, sheet = _cohort_files(new_cohort, samples)
        # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
        from genexflow.pipelines.workspace import Workspace, training_arguments

        ws = Workspace.default()
        args = training_arguments(expr, sheet, label_col, ws, batch_column=meta.get("batch_column"),
                                  covariates=list(meta.get("covariates") or []), model_name=model_name)
        with step(f"retraining ({mode})"):
            tr = trigger_retrain(d, mode=mode, training_arguments=args, policy=policy, cooldown=cooldown_file,
                                 model_key=key, force=force, workspace=ws, host=kfp_host)
        record_trigger(result, tr, uri)
        console.print(f"retraining: {tr.reason}" + (f" ({tr.url or tr.run_id})" if tr.run_id else ""), markup=False)
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.report import write_drift_page  # lazy: pulls torch/sklearn (keeps --help fast)

    page = write_drift_page(out, mlflow_run_id=result.mlflow_run_id, tracking_uri=uri)
    if as_json:
        typer.echo(json.dumps({**d.to_dict(), "out_dir": str(out), "mlflow_run_id": result.mlflow_run_id,
                               "report": str(page),
                               "trigger": result.trigger.to_dict() if result.trigger else None},
                              indent=1, default=str))
    else:
        console.print(str(d), markup=False)
        console.print(f"reports: {out}" + (f"  (MLflow run {result.mlflow_run_id})" if result.mlflow_run_id else ""),
                      markup=False)
        console.print(f"[bold]drift report[/] {page.resolve()}", highlight=False, soft_wrap=True)
    if d.drift and fail_on_drift:
        raise typer.Exit(EXIT_DRIFT)


@drift_app.command("profile")
def profile(
    cohort: Path = typer.Argument(..., help="Reference (training) cohort folder, .h5ad or matrix file."),
    out: Path = typer.Option(..., "--out", "-o", help="Reference-profile folder to write."),
    samples: Path | None = typer.Option(None, "--samples", "-s", help="Sample sheet for a bare matrix file."),
    value_type: str = typer.Option("counts", "--value-type", help="Value type of a bare matrix file (counts, "
                                   "tpm, fpkm, log-expression); cohort folders and .h5ad carry their own."),
    label: str | None = typer.Option(None, "--label", help="Label column."),
    batch_column: str | None = typer.Option(None, "--batch-column", help="Batch column (unseen-batch detection)."),
    covariates: str | None = typer.Option(None, "--covariates", help="Comma-separated covariate columns."),
    gene_sets: str = typer.Option("kegg", "--gene-sets", help="kegg, go_bp, progeny, a GMT file, or none."),
) -> None:
    """Build a reference profile from a cohort (training does this for you inside the model bundle)."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.monitoring.check import _as_cohort
    from genexflow.profile import build_reference_profile

    with step(f"profile {cohort}"):
        c = _as_cohort(cohort, samples, value_type)
        prof = build_reference_profile(c, label_column=label, batch_column=batch_column,
                                       covariates=_split(covariates),
                                       gene_sets=None if gene_sets == "none" else gene_sets)
        prof.save(out)
    console.print(f"{prof} -> {out}", markup=False)


@drift_app.command("serve-metrics")
def serve_metrics(
    state_dir: Path = typer.Option(Path("."), "--state-dir", help="Folder searched for drift-check outputs "
                                   "(decision.json), newest per model."),
    port: int = typer.Option(9108, "--port", help="Port of the /metrics endpoint."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (default: loopback only)."),
    once: bool = typer.Option(False, "--once", help="Print the metrics text once and exit (no server)."),
) -> None:
    """Expose drift metrics for Prometheus (re-read from --state-dir at every scrape)."""
    # lazy: prometheus_client is only needed for metrics export
    from prometheus_client import CollectorRegistry, generate_latest

    if once:
        reg = CollectorRegistry()
        reg.register(StateDirCollector(state_dir))
        typer.echo(generate_latest(reg).decode(), nl=False)
        return
    start(state_dir, port=port, host=host)
    console.print(f"serving drift metrics on http://{host}:{port}/metrics from {state_dir} (Ctrl-C stops)",
                  markup=False)
    while True:
        time.sleep(3600)


def register(app: typer.Typer) -> None:
    app.add_typer(drift_app, name="drift")
