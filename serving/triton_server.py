"""Run a real Triton Inference Server locally, without Docker or a GPU.

The ``tritonserver`` binary comes from the ``nvidia-pytriton`` wheel (Triton 2.51, python backend
only). That wheel pins ``numpy<2``, so it lives in its own virtual environment
(:func:`ensure_triton_env`, default ``~/.cache/genexflow/triton-venv``, overridable with
``$GENEXFLOW_TRITON_VENV``), pinned by ``serving/triton-constraints.txt``. python-backend models
(``model.py``) run inside that environment and import ``onnxruntime``/``numpy`` from it.

What the launcher does, and why (see docs/infra.md):

* copies the Python-3.11 ``triton_python_backend_stub`` into ``backends/python/`` (the wheel keeps the
  stubs apart; without it the python backend cannot load any model);
* puts the server venv's ``bin/`` first on ``PATH`` (the stub embeds libpython and takes its prefix,
  hence its site-packages, from the ``python3`` on PATH) and the interpreter's ``LIBDIR`` plus the
  wheel's bundled libraries on ``LD_LIBRARY_PATH`` (otherwise the stub may load another libpython);
* binds HTTP, gRPC and metrics to 127.0.0.1 (Triton's own default is 0.0.0.0), picks free ports
  when none are given, runs ``--model-control-mode=explicit --disable-auto-complete-config``;
* waits for ``/v2/health/ready`` and stops with SIGTERM (Triton reaps the python stubs and their
  ``/dev/shm`` regions), SIGKILL to the server's own process group only as a last resort.

Examples
--------
>>> from genexflow.serving.triton_server import TritonServer
>>> with TritonServer("models") as server:          # doctest: +SKIP
...     print(server.url)                           # http://127.0.0.1:<port>
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess  # nosec B404 - fixed argv lists, never a shell
import sys
import sysconfig
import tempfile
import time
import venv
from collections.abc import Sequence
from pathlib import Path

import filelock

from genexflow.paths import cache_dir
from genexflow.stack._process import (
    LOCALHOST,
    ProcessRecord,
    StackError,
    free_port,
    http_ok,
    stop_pid_file,
    wait_until,
)

CONSTRAINTS = Path(__file__).with_name("triton-constraints.txt")
#: What the server venv needs; exact versions come from ``triton-constraints.txt``.
REQUIREMENTS = ("nvidia-pytriton", "onnxruntime", "numpy<2", "tritonclient[http,grpc]")
_STAMP = ".genexflow-triton-env"
_PY_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"


def default_venv() -> Path:
    """``$GENEXFLOW_TRITON_VENV``, else ``<per-user cache>/triton-venv`` (:func:`genexflow.paths.cache_dir`,
    e.g. ``~/.cache/genexflow/triton-venv``): one ~450 MB environment per user, not one per folder."""
    env = os.environ.get("GENEXFLOW_TRITON_VENV")
    return Path(env).absolute() if env else cache_dir() / "triton-venv"


def _site_packages(venv_dir: Path) -> Path:
    return venv_dir / "lib" / f"python{_PY_TAG}" / "site-packages"


def triton_root(venv_dir: Path | None = None) -> Path:
    """The wheel's ``pytriton/tritonserver`` folder (``bin/``, ``backends/``, ``caches/``)."""
    return _site_packages(Path(venv_dir or default_venv())) / "pytriton" / "tritonserver"


def _env_fingerprint() -> str:
    text = CONSTRAINTS.read_text() if CONSTRAINTS.exists() else ""
    return hashlib.sha256((text + repr(REQUIREMENTS) + sys.version).encode()).hexdigest()


def _env_complete(venv_dir: Path) -> bool:
    stamp = venv_dir / _STAMP
    root = triton_root(venv_dir)
    return (stamp.exists() and stamp.read_text().strip() == _env_fingerprint()
            and (root / "bin" / "tritonserver").exists()
            and (root / "backends" / "python" / "triton_python_backend_stub").exists())


def ensure_triton_env(venv_dir: str | Path | None = None, *, quiet: bool = True) -> Path:
    """Create (once) the server virtual environment and return its path.

    Installs :data:`REQUIREMENTS` with ``pip -c serving/triton-constraints.txt`` and copies the
    python-backend stub for this interpreter's minor version into ``backends/python``. Idempotent
    and safe to call from several processes (a file lock serializes creation); a finished env is
    recognised by a stamp holding the hash of the constraints, so editing the pins rebuilds it.

    Parameters
    ----------
    venv_dir : path, optional
        Where to create it; default :func:`default_venv`.
    quiet : bool
        Pass ``-q`` to pip.

    Returns
    -------
    Path
        The venv folder.

    Raises
    ------
    StackError
        When pip fails (it needs PyPI or a local mirror) or the wheel lacks the stub.
    """
    venv_dir = Path(venv_dir or default_venv()).absolute()
    if _env_complete(venv_dir):
        return venv_dir
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = venv_dir.parent / f".{venv_dir.name}.lock"
    with filelock.FileLock(lock):
        if _env_complete(venv_dir):  # another process finished it while we waited
            return venv_dir
        if venv_dir.exists():
            shutil.rmtree(venv_dir)
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
        pip = [str(venv_dir / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        if quiet:
            pip.append("-q")
        if CONSTRAINTS.exists():
            pip += ["-c", str(CONSTRAINTS)]
        proc = subprocess.run([*pip, *REQUIREMENTS], capture_output=True, text=True)  # nosec B603
        if proc.returncode != 0:
            raise StackError(f"installing the Triton server env into {venv_dir} failed: "
                             f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
        root = triton_root(venv_dir)
        stub = root / "python_backend_stubs" / _PY_TAG / "triton_python_backend_stub"
        if not stub.exists():
            raise StackError(f"nvidia-pytriton has no python-backend stub for Python {_PY_TAG} ({stub})")
        target = root / "backends" / "python" / stub.name
        shutil.copy2(stub, target)
        target.chmod(0o755)
        (venv_dir / _STAMP).write_text(_env_fingerprint())
    return venv_dir


def server_environment(venv_dir: Path) -> dict[str, str]:
    """Environment for ``tritonserver``: server venv first on PATH, libpython + bundled libs on LD path."""
    env = dict(os.environ)
    libs = [str(_site_packages(venv_dir) / "nvidia_pytriton.libs")]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and (Path(libdir) / f"libpython{_PY_TAG}.so.1.0").exists():
        libs.append(libdir)
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env["PATH"] = os.pathsep.join([str(venv_dir / "bin"), env.get("PATH", "")])
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONPATH", None)  # model.py must see the server venv, not the caller's paths
    env["VIRTUAL_ENV"] = str(venv_dir)
    return env


class TritonServer:
    """A local ``tritonserver`` process in explicit model-control mode, bound to 127.0.0.1.

    Parameters
    ----------
    model_repository : path
        Triton model repository (``<model>/config.pbtxt`` + ``<model>/<version>/``). May be empty.
    http_port, grpc_port, metrics_port : int, optional
        Ports; a free port is chosen for each one left as None.
    models : sequence of str, optional
        Models to load at start-up. None loads every model folder holding a ``config.pbtxt``;
        ``[]`` loads none (load later with ``tritonclient``'s ``load_model``).
    venv_dir : path, optional
        Server venv (created on :meth:`start` if missing); default :func:`default_venv`.
    run_dir : path, optional
        Where ``triton.pid`` and ``triton.log`` go; default a new temporary folder.
    host : str
        Bind address; 127.0.0.1 unless you mean to expose the server.
    startup_timeout : float
        Seconds to wait for ``/v2/health/ready``.
    exit_timeout : int
        Triton's ``--exit-timeout-secs`` (in-flight requests get this long on SIGTERM).

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:<http_port>`` once started.
    grpc_url : str
        ``127.0.0.1:<grpc_port>``.
    metrics_url : str
        ``http://127.0.0.1:<metrics_port>/metrics``.
    """

    def __init__(self, model_repository: str | Path, http_port: int | None = None,
                 grpc_port: int | None = None, metrics_port: int | None = None, *,
                 models: Sequence[str] | None = None, venv_dir: str | Path | None = None,
                 run_dir: str | Path | None = None, host: str = LOCALHOST,
                 startup_timeout: float = 120.0, exit_timeout: int = 5, log_verbose: int = 0):
        self.model_repository = Path(model_repository).absolute()
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.models = None if models is None else list(models)
        self.venv_dir = Path(venv_dir).absolute() if venv_dir else None
        self.run_dir = Path(run_dir).absolute() if run_dir else None
        self.host = host
        self.startup_timeout = startup_timeout
        self.exit_timeout = exit_timeout
        self.log_verbose = log_verbose
        self._proc: subprocess.Popen | None = None
        self._record: ProcessRecord | None = None

    # -- addresses -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._record.pid if self._record else None

    @property
    def pid_file(self) -> Path:
        return self._run_dir() / "triton.pid"

    @property
    def log_file(self) -> Path:
        return self._run_dir() / "triton.log"

    def _run_dir(self) -> Path:
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="genexflow-triton-"))
        return self.run_dir

    # -- lifecycle -------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The ``tritonserver`` argv (ports must be set)."""
        root = triton_root(self.venv_dir)
        argv = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={root / 'backends'}",
            f"--cache-directory={root / 'caches'}",
            "--model-control-mode=explicit",
            "--disable-auto-complete-config",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",  # no CUDA here; avoids a pointless allocation attempt
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--log-verbose={self.log_verbose}",
        ]
        for name in self._models_to_load():
            argv.append(f"--load-model={name}")
        return argv

    def _models_to_load(self) -> list[str]:
        if self.models is not None:
            return self.models
        if not self.model_repository.is_dir():
            return []
        return sorted(p.parent.name for p in self.model_repository.glob("*/config.pbtxt"))

    def start(self) -> TritonServer:
        """Start the server and block until ``/v2/health/ready`` answers 200.

        Raises
        ------
        StackError
            When the server exits or is not ready in ``startup_timeout`` (the log tail is included).
        """
        if self._record is not None and self._record.alive():
            return self
        if not self.model_repository.is_dir():
            raise StackError(f"Triton model repository {self.model_repository} does not exist; "
                             "create it (it may be empty)")
        self.venv_dir = ensure_triton_env(self.venv_dir)
        fixed = {p for p in (self.http_port, self.grpc_port, self.metrics_port) if p}
        # A port picked here can be taken by another process before Triton binds it: retry then.
        attempts = 1 if len(fixed) == 3 else 3
        for attempt in range(attempts):
            chosen = self._pick_ports(fixed)
            try:
                self._launch()
                return self
            except BaseException as exc:  # a signal or Ctrl-C during start-up must not leave it running
                self.stop()
                if (not isinstance(exc, StackError) or attempt == attempts - 1
                        or "address already in use" not in str(exc).lower()):
                    raise
                for name in chosen:
                    setattr(self, name, None)
        return self  # pragma: no cover

    def _pick_ports(self, fixed: set[int]) -> list[str]:
        chosen, used = [], set(fixed)
        for name in ("http_port", "grpc_port", "metrics_port"):
            if getattr(self, name) is None:
                port = free_port(self.host, exclude=used)
                used.add(port)
                setattr(self, name, port)
                chosen.append(name)
        return chosen

    def _launch(self) -> None:
        log = self.log_file
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(  # nosec B603 - argv list built from our own paths
                self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=server_environment(self.venv_dir), start_new_session=True, cwd=self._run_dir())
        self._record = ProcessRecord.of(self._proc.pid)
        self._record.write(self.pid_file)
        wait_until(self.ready, self.startup_timeout, alive=lambda: self._proc.poll() is None,
                   what="tritonserver", log=log)

    def ready(self) -> bool:
        """True when ``GET /v2/health/ready`` answers 200."""
        return self.http_port is not None and http_ok(f"{self.url}/v2/health/ready")

    def live(self) -> bool:
        """True when ``GET /v2/health/live`` answers 200."""
        return self.http_port is not None and http_ok(f"{self.url}/v2/health/live")

    def running(self) -> bool:
        """True while the server process is alive."""
        return self._record is not None and self._record.alive()

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the server and wait (``exit_timeout`` + 15 s by default), then SIGKILL its group."""
        if self._record is None:
            return
        record = self._record
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            try:
                self._proc.wait(timeout if timeout is not None else self.exit_timeout + 15)
            except subprocess.TimeoutExpired:
                record.stop(timeout=1.0)
                self._proc.wait(10)
        else:
            record.stop(timeout=timeout if timeout is not None else self.exit_timeout + 15)
        # The stubs die with the server; if the group lingers (SIGKILL path), finish it off.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, 0)
            os.killpg(record.pid, signal.SIGKILL)
        self._record = None
        self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def detach(self) -> int | None:
        """Forget the running process without stopping it (it keeps serving); return its pid.

        Stop it later with ``kill -TERM <pid>`` or :meth:`stop_pid_file` on :attr:`pid_file`.
        """
        pid = self.pid
        self._proc = None
        self._record = None
        return pid

    @staticmethod
    def stop_pid_file(pid_file: str | Path, timeout: float = 20.0) -> bool:
        """Stop a server started earlier (by this or another process) from its pid file.

        Returns True when a running server was stopped, False when none was running.
        """
        return stop_pid_file(pid_file, timeout)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        return f"TritonServer({str(self.model_repository)!r}, url={self.url!r}, {state})"


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genexflow.serving.triton_server",
                                     description="Create the Triton server env or run a local server.")
    parser.add_argument("--ensure-env", action="store_true", help="create the server venv and print its path")
    parser.add_argument("--venv", type=Path, default=None, help="server venv (default ~/.cache/genexflow/triton-venv)")
    parser.add_argument("--model-repository", type=Path, help="serve this repository until Ctrl-C")
    parser.add_argument("--http-port", type=int, default=None)
    parser.add_argument("--grpc-port", type=int, default=None)
    parser.add_argument("--metrics-port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.ensure_env:
        print(ensure_triton_env(args.venv))
    if args.model_repository:
        server = TritonServer(args.model_repository, args.http_port, args.grpc_port, args.metrics_port,
                              venv_dir=args.venv)
        with server:
            print(f"triton ready: {server.url} grpc {server.grpc_url} metrics {server.metrics_url} "
                  f"(log {server.log_file})", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while server.running():
                    time.sleep(1)
    if not (args.ensure_env or args.model_repository):
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
