"""Hardening: every server genexflow starts is torn down on failure or signal and is listed and stopped by
``stack status|down``; pipeline steps run with a safe import path; the workspace is honoured everywhere.

Real processes throughout: ``genexflow`` runs as a subprocess, ``mlflow server`` and ``tritonserver`` are
real, and what is left running is read from the process table (psutil). No ``from __future__ import
annotations`` here: kfp reads the component's annotations at runtime.
"""


import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _hardening import cli

from genexflow.serving import local_stack

GENEXFLOW = [str(Path(sys.executable).with_name("genexflow"))]
TRITON_VENV = Path(os.environ.get("GENEXFLOW_TRITON_VENV", "/work/triton-venv"))
needs_triton = pytest.mark.skipif(not (TRITON_VENV / "bin" / "python").exists(),
                                  reason="no Triton server venv (set GENEXFLOW_TRITON_VENV)")


def _env(ws: Path) -> dict[str, str]:
    env = dict(os.environ, GENEXFLOW_WORKSPACE=str(ws), GENEXFLOW_TRITON_VENV=str(TRITON_VENV),
               OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _leftovers(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``marker`` (a temp path unique to the test)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _pid_from(pid_file: Path) -> int | None:
    try:
        return int(json.loads(pid_file.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.parametrize("with_triton", [False, pytest.param(True, marks=needs_triton)])
def test_sigterm_to_stack_up_leaves_nothing_behind(tmp_path, with_triton):
    """Before: SIGTERM while `stack up` waited for MLflow's health check left `mlflow server` (and a Triton
    started before it) orphaned."""
    ws = tmp_path / "ws"
    args = [*GENEXFLOW, "stack", "up", "--mlflow-port", "0", "--triton-http-port", "0", "--triton-grpc-port", "0",
            "--triton-metrics-port", "0", *([] if with_triton else ["--no-triton"])]
    proc = subprocess.Popen(args, env=_env(ws), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    mlflow_pid = _wait_for(lambda: _pid_from(ws / "stack" / "mlflow" / "mlflow.pid"), 180, "mlflow to start")
    pids = [mlflow_pid]
    if with_triton:
        pids.append(_pid_from(ws / "stack" / "triton" / "triton.pid"))
        assert pids[-1] and psutil.pid_exists(pids[-1])
    # while MLflow starts, `stack status` already lists what runs (state written before each health check)
    listed = [s.name for s in local_stack.status(ws / "stack")]  # what `stack status` prints
    assert proc.poll() is None, "stack up finished before the signal; the test needs it still starting"
    assert "mlflow" in listed and ("triton" in listed) == with_triton, listed
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped the servers this command had started" in out, out
    for pid in pids:
        _wait_for(lambda pid=pid: not psutil.pid_exists(pid) or
                  psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 30, f"server {pid} to exit")
    assert _leftovers(str(ws)) == []
    assert not (ws / "stack" / "state.json").exists()


@needs_triton
def test_serve_no_block_failing_at_deploy_leaves_no_tritonserver(tmp_path):
    """Before: the server kept running and listening after the deploy error, with no pid printed."""
    ws = tmp_path / "ws"
    (tmp_path / "not-an-artifact").mkdir()
    res = subprocess.run([*GENEXFLOW, "serve", "--no-block", "--artifact", str(tmp_path / "not-an-artifact")],
                         env=_env(ws), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "error:" in res.stderr, res.stderr
    assert "start tritonserver" in res.stderr  # it did start, then failed at deploy
    assert _leftovers(str(ws)) == []
    state = ws / "stack" / "state.json"
    assert not state.exists() or "serve-" not in state.read_text()


@needs_triton
def test_serve_no_block_is_listed_and_stopped_by_stack(tmp_path):
    from genexflow.serving.toy import make_toy_artifact

    ws = tmp_path / "ws"
    make_toy_artifact(tmp_path / "art", n_genes=20)
    env = _env(ws)
    res = subprocess.run([*GENEXFLOW, "serve", "--no-block", "--artifact", str(tmp_path / "art")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    try:
        assert res.returncode == 0, res.stderr
        assert "stop with: genexflow stack down" in res.stderr
        status = subprocess.run([*GENEXFLOW, "stack", "status", "--json"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        services = {s["name"]: s for s in json.loads(status.stdout)}
        serve = services["serve-genexflow_classifier"]
        assert serve["running"] and serve["healthy"], services
        assert str(ws / "triton" / "models") in serve["detail"]  # the workspace's repository by default
        assert _leftovers(str(ws))
    finally:
        down = subprocess.run([*GENEXFLOW, "stack", "down"], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
    assert "serve-genexflow_classifier" in down.stderr, down.stderr
    _wait_for(lambda: _leftovers(str(ws)) == [], 30, "the server to exit")


def test_pipeline_steps_ignore_a_package_named_folder_in_the_cwd(tmp_path, monkeypatch):
    """Before: a `triton/` folder in the current directory shadowed the package torch probes for, and every
    step that imported torch failed."""
    from kfp import dsl

    from genexflow.pipelines.local import run_local

    @dsl.component(base_image="python:3.11")
    def probe_torch() -> str:
        import sys

        from torch.utils._triton import has_triton

        has_triton()
        return ",".join(p for p in sys.path if p in ("", "."))

    @dsl.pipeline(name="safe-path-probe")
    def probe_pipeline():
        probe_torch()

    (tmp_path / "triton").mkdir()  # an empty folder imports as a namespace package: torch then breaks
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    run = run_local(probe_pipeline, {}, root=tmp_path / "kfp", enable_caching=False)
    assert run.state == "SUCCESS", run.log_path.read_text()[-2000:]


def test_workspace_is_honoured_and_the_triton_env_is_per_user(tmp_path, monkeypatch, capsys):
    ws, cwd = tmp_path / "ws", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("GENEXFLOW_WORKSPACE", str(ws))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out = cli(["models", "list", "--json"], capsys)
    assert code == 0, out
    assert (ws / "mlflow.db").exists() and not (cwd / ".genexflow").exists()

    from genexflow.pipelines.workspace import Workspace
    from genexflow.serving.local_stack import default_state_dir
    from genexflow.serving.registry import default_tracking_uri
    from genexflow.serving.triton_server import default_venv
    from genexflow.training.tracking import default_tracking_uri as training_uri

    assert Workspace.default().root == ws
    assert default_tracking_uri() == training_uri() == f"sqlite:///{ws / 'mlflow.db'}"
    assert default_state_dir() == ws / "stack"
    monkeypatch.delenv("GENEXFLOW_TRITON_VENV", raising=False)
    monkeypatch.delenv("GENEXFLOW_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_venv() == tmp_path / "xdg" / "genexflow" / "triton-venv"


def test_unreachable_tracking_server_is_named_quickly(tmp_path, capsys):
    t0 = time.monotonic()
    code, out = cli(["models", "list", "--tracking-uri", "http://127.0.0.1:9"], capsys)
    assert code == 2 and "is not reachable" in out and "genexflow stack up" in out, out
    assert "unexpected" not in out and time.monotonic() - t0 < 30
