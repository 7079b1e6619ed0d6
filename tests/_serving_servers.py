"""Real servers for the serving tests, started at most once per test process.

* an MLflow tracking server process (``mlflow server``, sqlite backend, proxied artifacts) on a free port;
* a local tritonserver (the binary from nvidia-pytriton, explicit model control) via
  :class:`genexflow.serving.triton_server.TritonServer`.

Test modules wrap these in fixtures; the module-level cache keeps one process per kind even when several
test files use them, and ``atexit`` stops them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

_CACHE: dict[str, object] = {}
VENV_BIN = Path(sys.executable).parent


def free_port(n: int = 1) -> int:
    """A port p with p .. p+n-1 free on 127.0.0.1 (checked by binding)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + n > 65535:
            continue
        ok = True
        for k in range(1, n):
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", p + k))
                except OSError:
                    ok = False
                    break
        if ok:
            return p
    raise RuntimeError("no free port range")


class MlflowServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gxf-mlflow-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.dir / 'mlflow.db'}",
             "--artifacts-destination", str(self.dir / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.dir, start_new_session=True,
        )
        self.healthy = False

    def wait(self) -> MlflowServer:
        """Block until /health answers (the first start migrates a new sqlite DB: seconds to tens of seconds)."""
        if self.healthy:
            return self
        t_end = time.monotonic() + 180
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.dir / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:  # noqa: S310 - local
                    if r.status == 200:
                        self.healthy = True
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("mlflow server did not become healthy in 180 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)  # its own session: the server and its uvicorn worker
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def prestart_mlflow() -> MlflowServer:
    """Start the server process without waiting, so its slow first start overlaps other tests."""
    if "mlflow" not in _CACHE:
        srv = MlflowServer()
        _CACHE["mlflow"] = srv
        atexit.register(srv.stop)
    return _CACHE["mlflow"]  # type: ignore[return-value]


def mlflow_server() -> MlflowServer:
    return prestart_mlflow().wait()


def triton_server():
    """(server, repository) of a running local tritonserver; skips when its environment cannot be made."""
    if "triton-skip" in _CACHE:
        pytest.skip(str(_CACHE["triton-skip"]))
    if "triton" not in _CACHE:
        from genexflow.serving import triton_server as ts

        try:
            ts.ensure_triton_env()
        except Exception as exc:  # noqa: BLE001 - any failure to build the env is a skip reason
            _CACHE["triton-skip"] = f"local Triton environment could not be created: {exc}"
            pytest.skip(str(_CACHE["triton-skip"]))
        repo = Path(tempfile.mkdtemp(prefix="gxf-triton-repo-"))
        run = Path(tempfile.mkdtemp(prefix="gxf-triton-run-"))
        server = ts.TritonServer(repo, models=[], run_dir=run)
        server.start()
        _CACHE["triton"] = (server, repo)

        def _stop() -> None:
            server.stop()
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)

        atexit.register(_stop)
    return _CACHE["triton"]
