"""``genexflow stack up|status|down`` for real: MLflow (sqlite) + Triton (empty repository, explicit mode)
start detached on 127.0.0.1, answer their health checks, and stop cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from genexflow.serving import local_stack as local
from genexflow.stack._process import StackError, http_ok

GX = [sys.executable, "-m", "genexflow"]


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*GX, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def triton_ready():
    from genexflow.serving.triton_server import ensure_triton_env

    try:
        ensure_triton_env()
    except StackError as exc:
        pytest.skip(f"Triton server env unavailable: {exc}")


def test_stack_up_status_down(tmp_path, triton_ready):
    state_dir = tmp_path / "stack"
    common = ["--state-dir", str(state_dir)]
    _cli("stack", "up", *common, "--mlflow-port", "0", "--triton-http-port", "0", "--triton-grpc-port", "0",
         "--triton-metrics-port", "0", "--mlflow-workers", "1")
    try:
        state = json.loads((state_dir / "state.json").read_text())
        m, t = state["mlflow"], state["triton"]
        assert m["url"].startswith("http://127.0.0.1:") and t["url"].startswith("http://127.0.0.1:")
        assert m["backend_store_uri"].startswith("sqlite:///") and Path(t["model_repository"]).is_dir()
        # the CLI has exited; the services live on
        assert http_ok(m["url"] + "/health") and http_ok(t["url"] + "/v2/health/ready")

        import mlflow

        mlflow.set_tracking_uri(m["url"])
        with mlflow.start_run(experiment_id="0") as run:
            mlflow.log_metric("x", 1.5)
            mlflow.log_text("hello", "note.txt")
        got = mlflow.get_run(run.info.run_id)
        assert got.data.metrics == {"x": 1.5}
        assert (state_dir / "mlflow" / "mlflow.db").exists()
        assert list((state_dir / "mlflow" / "artifacts").rglob("note.txt"))

        status = json.loads(_cli("stack", "status", *common, "--json").stdout)
        assert {s["name"]: (s["running"], s["healthy"]) for s in status} == {
            "mlflow": (True, True), "triton": (True, True)}

        again = _cli("stack", "up", *common, "--mlflow-port", "0", check=False)
        assert again.returncode == 2 and "already running" in again.stderr
    finally:
        down = _cli("stack", "down", *common)
    assert "mlflow" in down.stderr and "triton" in down.stderr
    for info in (m, t):
        assert _gone(info["pid"])
    assert not http_ok(m["url"] + "/health") and not http_ok(t["url"] + "/v2/health/live")
    assert not (state_dir / "state.json").exists()
    st = _cli("stack", "status", *common, check=False)
    assert st.returncode == 1 and "no local stack" in st.stderr


def test_failed_start_leaves_nothing_running(tmp_path, triton_ready):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError, match="already in use"):
            local.up(tmp_path / "s", mlflow_port=port, triton_ports=(0, 0, 0))
    assert local.status(tmp_path / "s") == []
    pid_file = tmp_path / "s" / "triton" / "triton.pid"
    assert not pid_file.exists()


def _gone(pid: int, wait: float = 10.0) -> bool:
    """True once ``pid`` has exited (a zombie awaiting init's reaping counts as exited)."""
    import time

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False
