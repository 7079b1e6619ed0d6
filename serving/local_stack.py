"""``genexflow stack up|down|status``: the local MLflow tracking server + Triton server, as detached
processes whose pids, ports and URLs live in ``<state_dir>/state.json`` (default ``.genexflow/stack``).

It starts the Triton server, so it sits in the serving layer; the process plumbing and the MLflow and
PostgreSQL servers it uses are core (:mod:`genexflow.stack`)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from genexflow.serving.triton_server import TritonServer
from genexflow.stack._process import ProcessRecord, StackError, genexflow_home, http_ok, stop_pid_file
from genexflow.stack.mlflow_server import MlflowServer, redact


def default_state_dir() -> Path:
    return genexflow_home() / "stack"


@dataclass
class ServiceStatus:
    """One service's state as ``stack status`` reports it."""

    name: str
    pid: int | None
    running: bool
    healthy: bool
    url: str
    detail: str = ""


def _state_file(state_dir: Path) -> Path:
    return Path(state_dir) / "state.json"


def read_state(state_dir: str | Path | None = None) -> dict:
    """The saved stack state (empty dict when none)."""
    path = _state_file(Path(state_dir or default_state_dir()))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def up(state_dir: str | Path | None = None, *, backend_store_uri: str | None = None,
       artifacts_destination: str | None = None, mlflow_port: int | None = 5000, mlflow_workers: int = 2,
       triton: bool = True, model_repository: str | Path | None = None,
       triton_ports: tuple[int | None, int | None, int | None] = (8000, 8001, 8002),
       mlflow: bool = True) -> dict:
    """Start the stack detached; returns the saved state. Port ``None``/0 picks a free port.

    Raises
    ------
    StackError
        When a service of this stack is still running, a port is taken, or a service fails its
        health check (services started so far are stopped again).
    """
    state_dir = Path(state_dir or default_state_dir()).absolute()
    running = [s.name for s in status(state_dir) if s.running]
    if running:
        raise StackError(f"the stack in {state_dir} is already running ({', '.join(running)}); "
                         "run `genexflow stack down` first")
    state_dir.mkdir(parents=True, exist_ok=True)
    state: dict = {"state_dir": str(state_dir)}
    started: list[tuple[str, Path]] = []
    try:
        if triton:
            repo = Path(model_repository or state_dir / "models").absolute()
            repo.mkdir(parents=True, exist_ok=True)
            http_port, grpc_port, metrics_port = (p or None for p in triton_ports)
            server = TritonServer(repo, http_port, grpc_port, metrics_port, run_dir=state_dir / "triton")
            server.start()
            started.append(("triton", server.pid_file))
            state["triton"] = {"pid": server.detach(), "pid_file": str(server.pid_file), "url": server.url,
                               "grpc_url": server.grpc_url, "metrics_url": server.metrics_url,
                               "model_repository": str(repo), "log": str(server.log_file)}
        if mlflow:
            srv = MlflowServer(state_dir / "mlflow", backend_store_uri,
                               artifacts_destination=artifacts_destination, port=mlflow_port or None,
                               workers=mlflow_workers)
            srv.start()
            started.append(("mlflow", srv.pid_file))
            state["mlflow"] = {"pid": srv.detach(), "pid_file": str(srv.pid_file), "url": srv.url,
                               "backend_store_uri": redact(srv.backend), "log": str(srv.log_file),
                               "artifacts_destination": srv.artifacts_destination
                               or str(srv.state_dir / "artifacts")}
    except BaseException:
        for _, pid_file in started:
            stop_pid_file(pid_file)
        raise
    _state_file(state_dir).write_text(json.dumps(state, indent=2))
    return state


def status(state_dir: str | Path | None = None) -> list[ServiceStatus]:
    """Process and health state of every service recorded in the state file."""
    state = read_state(state_dir)
    out = []
    probes = {"mlflow": "/health", "triton": "/v2/health/ready"}
    for name in ("mlflow", "triton"):
        info = state.get(name)
        if not info:
            continue
        record = ProcessRecord.read(Path(info["pid_file"]))
        running = record is not None and record.alive()
        healthy = running and http_ok(info["url"] + probes[name])
        detail = info.get("backend_store_uri") or info.get("model_repository", "")
        out.append(ServiceStatus(name, record.pid if record else info.get("pid"), running, healthy,
                                 info["url"], detail))
    return out


def down(state_dir: str | Path | None = None, timeout: float = 30.0) -> list[str]:
    """Stop every recorded service (SIGTERM to its process group, SIGKILL after ``timeout``).

    Returns the names of the services that were running.
    """
    state_dir = Path(state_dir or default_state_dir()).absolute()
    state = read_state(state_dir)
    stopped = []
    for name in ("triton", "mlflow"):
        info = state.get(name)
        if info and stop_pid_file(info["pid_file"], timeout=timeout):
            stopped.append(name)
    with contextlib.suppress(FileNotFoundError):
        _state_file(state_dir).unlink()
    return stopped
