"""``genexflow stack up|down|status``: the local MLflow tracking server + Triton server, as detached
processes whose pids, ports and URLs live in ``<state_dir>/state.json`` (default ``<workspace>/stack``).
``genexflow serve --no-block`` records its server there too, so ``stack status|down`` list and stop it.

It starts the Triton server, so it sits in the serving layer; the process plumbing and the MLflow and
PostgreSQL servers it uses are core (:mod:`genexflow.stack`)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import filelock

from genexflow.io import write_text_atomic
from genexflow.serving.triton_server import TritonServer
from genexflow.stack._process import ProcessRecord, StackError, genexflow_home, http_ok, stop_pid_file
from genexflow.stack.mlflow_server import MlflowServer, redact
from genexflow.stack.signals import terminate_on_signals


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


def _save(state_dir: Path, state: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(_state_file(state_dir), json.dumps(state, indent=2))


def _services(state: dict) -> list[str]:
    """Recorded services in start order: every entry with a pid file (mlflow, triton, serve-<model>, ...)."""
    return [k for k, v in state.items() if isinstance(v, dict) and "pid_file" in v]


def record_service(name: str, info: dict, state_dir: str | Path | None = None) -> Path:
    """Add a server started outside :func:`up` (``genexflow serve --no-block``) to the stack state, so
    ``stack status`` lists it and ``stack down`` stops it. ``info`` needs ``pid_file`` and ``url``."""
    state_dir = Path(state_dir or default_state_dir()).absolute()
    with _locked(state_dir):
        state = read_state(state_dir) or {"state_dir": str(state_dir)}
        state[name] = info
        _save(state_dir, state)
    return _state_file(state_dir)


def _locked(state_dir: Path) -> filelock.FileLock:
    """Serialize read-modify-write of the state file between concurrent commands."""
    state_dir.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(state_dir / ".state.lock")


def up(state_dir: str | Path | None = None, *, backend_store_uri: str | None = None,
       artifacts_destination: str | None = None, mlflow_port: int | None = 5000, mlflow_workers: int = 2,
       triton: bool = True, model_repository: str | Path | None = None,
       triton_ports: tuple[int | None, int | None, int | None] = (8000, 8001, 8002),
       mlflow: bool = True) -> dict:
    """Start the stack detached; returns the saved state. Port ``None``/0 picks a free port.

    Each service is recorded in the state file as soon as it runs, so ``stack status|down`` see it even
    while the next one starts. On any failure, Ctrl-C, SIGTERM or SIGHUP the services started so far are
    stopped (their whole process groups) and removed from the state again.

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
    started: list[str] = []
    with terminate_on_signals():
        try:
            if triton:
                repo = Path(model_repository or state_dir / "models").absolute()
                repo.mkdir(parents=True, exist_ok=True)
                http_port, grpc_port, metrics_port = (p or None for p in triton_ports)
                server = TritonServer(repo, http_port, grpc_port, metrics_port, run_dir=state_dir / "triton")
                # recorded before start: a kill during start-up still leaves a pid file `down` can use
                state["triton"] = {"pid_file": str(server.pid_file), "url": "", "probe": "/v2/health/ready",
                                   "model_repository": str(repo), "log": str(server.log_file)}
                started.append("triton")
                _save(state_dir, state)
                server.start()
                state["triton"].update({"pid": server.detach(), "url": server.url, "grpc_url": server.grpc_url,
                                        "metrics_url": server.metrics_url})
                _save(state_dir, state)
            if mlflow:
                srv = MlflowServer(state_dir / "mlflow", backend_store_uri,
                                   artifacts_destination=artifacts_destination, port=mlflow_port or None,
                                   workers=mlflow_workers)
                state["mlflow"] = {"pid_file": str(srv.pid_file), "url": "", "probe": "/health",
                                   "backend_store_uri": redact(srv.backend), "log": str(srv.log_file),
                                   "artifacts_destination": srv.artifacts_destination
                                   or str(srv.state_dir / "artifacts")}
                started.append("mlflow")
                _save(state_dir, state)
                srv.start()
                state["mlflow"].update({"pid": srv.detach(), "url": srv.url})
                _save(state_dir, state)
        except BaseException:
            for name in reversed(started):
                stop_pid_file(state[name]["pid_file"])
            with contextlib.suppress(FileNotFoundError):
                _state_file(state_dir).unlink()
            raise
    return state


def status(state_dir: str | Path | None = None) -> list[ServiceStatus]:
    """Process and health state of every service recorded in the state file."""
    state = read_state(state_dir)
    out = []
    default_probes = {"mlflow": "/health"}
    for name in _services(state):
        info = state[name]
        record = ProcessRecord.read(Path(info["pid_file"]))
        running = record is not None and record.alive()
        probe = info.get("probe") or default_probes.get(name, "/v2/health/ready")
        healthy = running and bool(info.get("url")) and http_ok(info["url"] + probe)
        detail = info.get("backend_store_uri") or info.get("model_repository", "")
        out.append(ServiceStatus(name, record.pid if record else info.get("pid"), running, healthy,
                                 info.get("url", ""), detail))
    return out


def down(state_dir: str | Path | None = None, timeout: float = 30.0) -> list[str]:
    """Stop every recorded service, last started first (SIGTERM to its process group, SIGKILL after
    ``timeout``).

    Returns the names of the services that were running.
    """
    state_dir = Path(state_dir or default_state_dir()).absolute()
    state = read_state(state_dir)
    stopped = []
    for name in reversed(_services(state)):
        if stop_pid_file(state[name]["pid_file"], timeout=timeout):
            stopped.append(name)
    with contextlib.suppress(FileNotFoundError):
        _state_file(state_dir).unlink()
    return stopped
