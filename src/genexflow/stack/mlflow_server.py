"""A local MLflow tracking server process (``mlflow server``) bound to 127.0.0.1.

sqlite by default (fine for one writer); pass a ``postgresql://`` backend store for concurrent
writers (sqlite answers "database is locked" under concurrency). Artifacts are proxied by the server
(``--serve-artifacts``) into a local folder, so clients need no direct storage access.

Examples
--------
>>> from genexflow.stack.mlflow_server import MlflowServer
>>> with MlflowServer("runs/") as srv:               # doctest: +SKIP
...     mlflow.set_tracking_uri(srv.url)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess  # nosec B404 - fixed argv lists, never a shell
import sys
from pathlib import Path

from genexflow.stack._process import (
    LOCALHOST,
    ProcessRecord,
    StackError,
    free_port,
    http_ok,
    port_in_use,
    stop_pid_file,
    wait_until,
)


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (for logs and state files)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", uri)


def sqlalchemy_uri(uri: str) -> str:
    """Pin a bare ``postgresql://`` URI to the psycopg2 driver.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed; the project
    ships ``psycopg2-binary``.
    """
    if uri.startswith(("postgresql://", "postgres://")):
        if importlib.util.find_spec("psycopg") is None:
            return "postgresql+psycopg2://" + uri.split("://", 1)[1]
    return uri


def _mlflow_executable() -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]


class MlflowServer:
    """``mlflow server`` in its own process group, with a health check and a clean stop.

    Parameters
    ----------
    state_dir : path
        Holds ``mlflow.db`` (sqlite default), ``artifacts/``, ``mlflow.log`` and ``mlflow.pid``.
    backend_store_uri : str, optional
        ``sqlite:///...`` or ``postgresql://user:pw@host:port/db``; default ``sqlite:///<state_dir>/mlflow.db``.
    artifacts_destination : str, optional
        Where proxied artifacts go; default ``<state_dir>/artifacts``.
    port : int, optional
        TCP port; a free one when None.
    host : str
        Bind address (127.0.0.1 by default; anything else exposes the server).
    workers : int
        Server worker processes (2 cores here: keep it small).
    """

    def __init__(self, state_dir: str | Path, backend_store_uri: str | None = None, *,
                 artifacts_destination: str | None = None, port: int | None = None,
                 host: str = LOCALHOST, workers: int = 2, startup_timeout: float = 180.0):
        self.state_dir = Path(state_dir).absolute()
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.port = port
        self.host = host
        self.workers = workers
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "mlflow.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "mlflow.pid"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def backend(self) -> str:
        """The backend store URI in use."""
        if self.backend_store_uri:
            return sqlalchemy_uri(self.backend_store_uri)
        return f"sqlite:///{self.state_dir / 'mlflow.db'}"

    def command(self) -> list[str]:
        """The ``mlflow server`` argv. The backend store URI is not on it: it may hold a database password,
        and a command line is readable by every user (``ps``); it goes in the environment
        (``MLFLOW_BACKEND_STORE_URI``, :meth:`environment`) instead."""
        artifacts = self.artifacts_destination or str(self.state_dir / "artifacts")
        return [*_mlflow_executable(), "server",
                "--artifacts-destination", artifacts, "--serve-artifacts",
                "--host", self.host, "--port", str(self.port), "--workers", str(self.workers)]

    def start(self) -> MlflowServer:
        """Start the server and wait for ``/health``; raises :class:`StackError` on failure."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port(self.host)
        elif port_in_use(self.port, self.host):
            raise StackError(f"port {self.port} on {self.host} is already in use; pass another --mlflow-port")
        with open(self.log_file, "ab") as out:
            self._proc = subprocess.Popen(  # nosec B603 - argv list, no shell
                self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.state_dir, start_new_session=True)
        ProcessRecord.of(self._proc.pid).write(self.pid_file)
        try:
            wait_until(self.healthy, self.startup_timeout, alive=lambda: self._proc.poll() is None,
                       what=f"mlflow server ({redact(self.backend)})", log=self.log_file, interval=0.3)
        except BaseException:  # a signal or Ctrl-C during start-up must not leave it running
            self.stop()
            raise
        return self

    def environment(self) -> dict[str, str]:
        """The server's environment: ours, plus the backend store URI (password included) where only the
        server's user can read it (``/proc/<pid>/environ`` is private, unlike the command line)."""
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        env["MLFLOW_BACKEND_STORE_URI"] = self.backend
        # The server must not run submitted jobs (a local dev server executes nothing it is sent).
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        return env

    def healthy(self) -> bool:
        """True when ``GET /health`` answers 200."""
        return self.port is not None and http_ok(f"{self.url}/health")

    def detach(self) -> int | None:
        """Forget the process without stopping it; stop it later with :meth:`stop_pid_file`."""
        pid = self.pid
        self._proc = None
        return pid

    @staticmethod
    def stop_pid_file(pid_file: str | Path, timeout: float = 20.0) -> bool:
        """Stop a server from its pid file (its whole process group); True when one was running."""
        return stop_pid_file(pid_file, timeout)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server's process group (server + workers), SIGKILL after ``timeout``."""
        if self._proc is None:
            return
        ProcessRecord.of(self._proc.pid).stop(timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
