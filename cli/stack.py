"""``genexflow stack up|down|status``: the local MLflow tracking server and Triton server."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import typer

from genexflow.cli._common import console, step
from genexflow.serving import local_stack as local
from genexflow.stack.mlflow_server import redact


def register(app: typer.Typer) -> None:
    stack = typer.Typer(help="Run the local stack: MLflow tracking server + Triton server on 127.0.0.1.",
                        no_args_is_help=True)
    app.add_typer(stack, name="stack")

    state_opt = typer.Option(None, "--state-dir", help="State/pid/log folder (default <workspace>/stack; workspace "
                             "= $GENEXFLOW_WORKSPACE or ./.genexflow).")

    @stack.command("up")
    def up_cmd(
        state_dir: Path = state_opt,
        backend_store_uri: str = typer.Option(
            None, "--backend-store-uri", envvar="MLFLOW_BACKEND_STORE_URI",
            help="MLflow backend store, e.g. postgresql://user@127.0.0.1:5432/mlflow (default "
                 "sqlite:///<state-dir>/mlflow/mlflow.db). Put a password in $MLFLOW_BACKEND_STORE_URI or "
                 "$PGPASSWORD, not on the command line (ps shows it to every user)."),
        artifacts_destination: str = typer.Option(
            None, "--artifacts-destination", help="Where the server stores artifacts (default <state-dir>/mlflow/artifacts)."),
        mlflow_port: int = typer.Option(5000, help="MLflow port (0 = pick a free port)."),
        mlflow_workers: int = typer.Option(2, help="MLflow server worker processes."),
        mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Start the MLflow tracking server."),
        triton: bool = typer.Option(True, "--triton/--no-triton", help="Start the Triton server."),
        model_repository: Path = typer.Option(
            None, "--model-repository", help="Triton model repository (default <state-dir>/models, empty); "
                                             "every model with a config.pbtxt is loaded (explicit mode)."),
        triton_http_port: int = typer.Option(8000, help="Triton HTTP port (0 = free port)."),
        triton_grpc_port: int = typer.Option(8001, help="Triton gRPC port (0 = free port)."),
        triton_metrics_port: int = typer.Option(8002, help="Triton metrics port (0 = free port)."),
    ) -> None:
        """Start the services detached, wait for their health checks and record them."""
        if backend_store_uri and redact(backend_store_uri) != backend_store_uri and \
                backend_store_uri in " ".join(sys.argv):
            console.print("[yellow]warning:[/] the --backend-store-uri password is visible in `ps`; pass the URI "
                          "in $MLFLOW_BACKEND_STORE_URI (or the password in $PGPASSWORD) instead")
        with step("start the local stack"):
            state = local.up(state_dir, backend_store_uri=backend_store_uri,
                             artifacts_destination=artifacts_destination, mlflow_port=mlflow_port,
                             mlflow_workers=mlflow_workers, mlflow=mlflow, triton=triton,
                             model_repository=model_repository,
                             triton_ports=(triton_http_port, triton_grpc_port, triton_metrics_port))
        if "mlflow" in state:
            m = state["mlflow"]
            console.print(f"mlflow  {m['url']}  pid {m['pid']}  store {m['backend_store_uri']}", markup=False)
            console.print(f"        export MLFLOW_TRACKING_URI={m['url']}", markup=False)
        if "triton" in state:
            t = state["triton"]
            console.print(f"triton  {t['url']}  grpc {t['grpc_url']}  metrics {t['metrics_url']}  "
                          f"pid {t['pid']}  repo {t['model_repository']}", markup=False)
        console.print("stop with: genexflow stack down", markup=False)

    @stack.command("status")
    def status_cmd(
        state_dir: Path = state_opt,
        as_json: bool = typer.Option(False, "--json", help="Print the status as JSON on stdout."),
    ) -> None:
        """Show each recorded service's pid, process state and health; exit 1 if any is unhealthy."""
        services = local.status(state_dir)
        if as_json:
            typer.echo(json.dumps([asdict(s) for s in services], indent=2))
        elif not services:
            console.print("no local stack recorded (start one with: genexflow stack up)")
        else:
            for s in services:
                mark = "healthy" if s.healthy else ("running, not healthy" if s.running else "stopped")
                console.print(f"{s.name:7s} {mark:22s} pid {s.pid}  {s.url}  {s.detail}", markup=False)
        if not services or not all(s.healthy for s in services):
            raise typer.Exit(1)

    @stack.command("down")
    def down_cmd(
        state_dir: Path = state_opt,
        timeout: float = typer.Option(30.0, help="Seconds to wait after SIGTERM before SIGKILL."),
    ) -> None:
        """Stop the recorded services (SIGTERM, then SIGKILL after --timeout) and clear the state."""
        with step("stop the local stack"):
            stopped = local.down(state_dir, timeout=timeout)
        console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}", markup=False)
