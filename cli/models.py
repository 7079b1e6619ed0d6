"""``genexflow models``: the MLflow registry (aliases challenger/champion, never stages).

list, register, gate, validate (infra validation in a real Triton), promote, rollback, deploy.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from genexflow.cli._common import console, step
from genexflow.cohort import Cohort

models_app = typer.Typer(help="Model registry: register, gate, infra-validate, promote, roll back, deploy.",
                         no_args_is_help=True)

_URI = typer.Option(None, "--tracking-uri", help="MLflow tracking URI, e.g. http://127.0.0.1:5000 (default: "
                    "$MLFLOW_TRACKING_URI, else sqlite:///<workspace>/mlflow.db; workspace = $GENEXFLOW_WORKSPACE "
                    "or ./.genexflow).")
_NAME = typer.Option("genexflow-classifier", "--name", "-n", help="Registered model name.")


def _registry(uri: str | None):
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.serving.registry import Registry, check_reachable, default_tracking_uri

    uri = uri or default_tracking_uri()
    check_reachable(uri)
    return Registry(uri)


@models_app.command("list")
def models_list(name: str = _NAME, tracking_uri: str | None = _URI,
                as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List registered versions with aliases, gate / infra decisions and sha256."""
    reg = _registry(tracking_uri)
    versions = reg.versions(name)
    if as_json:
        typer.echo(json.dumps([{"version": v.version, "aliases": v.aliases, "sha256": v.sha256,
                                "created": v.created, "tags": v.tags} for v in versions], indent=1))
        return
    table = Table("version", "aliases", "gate", "infra", "metrics", "sha256", "created")
    for v in versions:
        metrics = ", ".join(f"{k}={val:.3g}" for k, val in list(v.metrics.items())[:3]
                            if isinstance(val, (int, float)))
        table.add_row(str(v.version), ", ".join(v.aliases), v.tags.get("gate.decision", "-"),
                      v.tags.get("infra.decision", "-"), metrics, v.sha256[:12], v.created)
    console.print(table)


@models_app.command("register")
def models_register(
    artifact: Path = typer.Argument(..., help="Serving artifact (model.onnx + model.json) or training bundle folder."),
    name: str = _NAME, tracking_uri: str | None = _URI,
    bundle: Path | None = typer.Option(None, help="Training bundle folder to store beside the ONNX model."),
    run_id: str | None = typer.Option(None, help="MLflow run that trained the model (default: a new run)."),
) -> None:
    """Register an exported artifact as a new version and point ``challenger`` at it."""
    with step(f"register {artifact}"):
        v = _registry(tracking_uri).register(artifact, name, bundle_dir=bundle, run_id=run_id)
    console.print(f"{name} v{v.version} (challenger) sha256 {v.sha256[:16]}…")


@models_app.command("gate")
def models_gate(
    heldout: Path = typer.Argument(..., help="Held-out cohort (folder or .h5ad) with the label column."),
    name: str = _NAME, tracking_uri: str | None = _URI,
    version: str = typer.Option("challenger", "--version", help="Version number or alias to gate."),
    metric: str = typer.Option("balanced_accuracy", help="Metric (balanced_accuracy, roc_auc, macro_f1, rmse …)."),
    margin: float = typer.Option(0.0, help="Required improvement over the champion (negative = tolerance)."),
    baseline_margin: float = typer.Option(0.0, help="Required improvement over the best baseline."),
) -> None:
    """Compare a version with the champion and the baselines on the same held-out data (exit 1 on fail)."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.serving.registry import GatePolicy

    cohort = Cohort.read(heldout)
    with step("gate"):
        d = _registry(tracking_uri).gate(name, cohort, challenger=version,
                                         policy=GatePolicy(metric, margin, baseline_margin),
                                         data_description=str(heldout))
    _verdict(d.passed, f"v{d.challenger_version}: {d.reason}")


def _verdict(passed: bool, text: str) -> None:
    """Print PASS/FAIL with the reason; exit 1 on FAIL so schedulers can act on it."""
    console.print(f"[{'green' if passed else 'red'}]{'PASS' if passed else 'FAIL'}[/] {text}")
    if not passed:
        raise typer.Exit(1)


@models_app.command("validate")
def models_validate(
    name: str = _NAME, tracking_uri: str | None = _URI,
    version: str = typer.Option("challenger", "--version", help="Version number or alias."),
    heldout: Path | None = typer.Option(None, help="Cohort whose samples become canary requests."),
    url: str | None = typer.Option(None, help="Running Triton (HTTP URL); default: start a local one."),
    grpc_url: str | None = typer.Option(None, help="gRPC address of the running server (default: HTTP port + 1)."),
    repository: Path | None = typer.Option(None, help="Model repository of the running server (with --url)."),
    atol: float = typer.Option(1e-5, help="Allowed difference from in-process onnxruntime."),
) -> None:
    """Infra validation: load the exact artifact in a real Triton, send canaries, compare (exit 1 on fail)."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from genexflow.serving.infra_validate import validate_registered

    cohort = Cohort.read(heldout) if heldout else None
    with step("infra validation"):
        r = validate_registered(_registry(tracking_uri), name, version, url=url, grpc_url=grpc_url,
                                repository=repository,
                                cohort=cohort, atol=atol)
    _verdict(r.passed, r.reason)


@models_app.command("promote")
def models_promote(
    name: str = _NAME, tracking_uri: str | None = _URI,
    version: str = typer.Option("challenger", "--version", help="Version number or alias to promote."),
    reason: str = typer.Option("", help="Why (recorded as a tag)."),
    force: bool = typer.Option(False, "--force", help="Promote without a passing gate / infra validation."),
    repository: Path | None = typer.Option(None, help="Also deploy into this Triton model repository."),
    url: str | None = typer.Option(None, help="…and load it in this running Triton (hot swap)."),
) -> None:
    """Move ``champion`` to a version whose gate and infra validation passed (previous one kept for rollback)."""
    reg = _registry(tracking_uri)
    v = reg.promote(name, version, reason=reason, force=force)
    console.print(f"{name}: champion -> v{v.version}")
    _redeploy(reg, name, v.version, repository, url)


def _redeploy(reg, name: str, version: int, repository: Path | None, url: str | None) -> None:
    """After promote/rollback: deploy the new champion into ``repository`` (and load it in ``url``)."""
    if repository:
        with step("deploy"):
            res = reg.deploy(name, version, repository, url=url)
        console.print(f"deployed as Triton version {res.triton_version}{' (loaded)' if res.loaded else ''}")


@models_app.command("rollback")
def models_rollback(
    name: str = _NAME, tracking_uri: str | None = _URI,
    reason: str = typer.Option("", help="Why (recorded as a tag)."),
    to: int | None = typer.Option(None, help="Version to restore (default: the one the champion replaced)."),
    repository: Path | None = typer.Option(None, help="Also deploy the restored version into this repository."),
    url: str | None = typer.Option(None, help="…and load it in this running Triton."),
) -> None:
    """Re-point ``champion`` to the previous champion (and redeploy it)."""
    reg = _registry(tracking_uri)
    v = reg.rollback(name, reason=reason, to=to)
    console.print(f"{name}: champion -> v{v.version} (rolled back)")
    _redeploy(reg, name, v.version, repository, url)


@models_app.command("deploy")
def models_deploy(
    repository: Path = typer.Argument(..., help="Triton model repository folder."),
    name: str = _NAME, tracking_uri: str | None = _URI,
    version: str = typer.Option("champion", "--version", help="Version number or alias."),
    url: str | None = typer.Option(None, help="Running Triton to load the new version into."),
    model_name: str = typer.Option("genexflow_classifier", help="Triton model name."),
    artifact: Path | None = typer.Option(None, help="Deploy this local copy (refused unless its sha256 matches)."),
    target: str = typer.Option("local", help="local (python backend, KIND_CPU) or gpu (onnxruntime_onnx, "
                               "KIND_GPU, for the NGC Triton image)."),
) -> None:
    """Add a registered version to a Triton model repository (sha256-checked) and optionally load it."""
    with step("deploy"):
        res = _registry(tracking_uri).deploy(name, version, repository, url=url, model_name=model_name,
                                             artifact_dir=artifact, target=target)
    console.print(f"{model_name}: Triton version {res.triton_version} at {res.path}"
                  f"{' (loaded)' if res.loaded else ''}", markup=False)


@models_app.command("history")
def models_history(name: str = _NAME, tracking_uri: str | None = _URI) -> None:
    """Print the recorded decisions (gate, infra validation, promote, rollback) as JSON lines."""
    for event in _registry(tracking_uri).history(name):
        typer.echo(json.dumps(event, sort_keys=True))


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
