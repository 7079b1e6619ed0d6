"""The local Triton launcher: a real tritonserver (nvidia-pytriton wheel) starts, serves a python-backend
model from the server venv, binds to 127.0.0.1 only, and stops cleanly on SIGTERM."""

from __future__ import annotations

import glob
import socket
from pathlib import Path

import numpy as np
import psutil
import pytest

from genexflow.stack._process import StackError, free_port

ts = pytest.importorskip("genexflow.serving.triton_server")

CONFIG = """name: "identity"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "PREFIX" data_type: TYPE_STRING dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

# Doubles its input and reports which interpreter prefix runs it (must be the server venv).
MODEL = '''import sys
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for req in requests:
            x = pb_utils.get_input_tensor_by_name(req, "INPUT0").as_numpy()
            prefix = np.array([[sys.prefix.encode()]] * x.shape[0], dtype=object)
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32)),
                pb_utils.Tensor("PREFIX", prefix)]))
        return out
'''


@pytest.fixture(scope="module")
def triton_env() -> Path:
    try:
        return ts.ensure_triton_env()
    except StackError as exc:  # no PyPI and no prebuilt env (make triton-env creates it in CI)
        pytest.skip(f"Triton server env unavailable: {exc}")


def _repo(root: Path) -> Path:
    model = root / "models" / "identity"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(CONFIG)
    (model / "1" / "model.py").write_text(MODEL)
    return root / "models"


def _shm_regions() -> set[str]:
    return set(glob.glob("/dev/shm/triton_python_backend_shm_region_*"))


def test_env_is_idempotent_and_has_the_stub(triton_env):
    assert ts.ensure_triton_env(triton_env) == triton_env
    stub = ts.triton_root(triton_env) / "backends" / "python" / "triton_python_backend_stub"
    assert stub.exists() and stub.stat().st_mode & 0o111


def test_serves_python_model_on_localhost_and_stops(triton_env, tmp_path):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    shm_before = _shm_regions()
    server = ts.TritonServer(_repo(tmp_path), run_dir=tmp_path / "run")
    with server:
        assert server.ready() and server.live()
        assert server.url.startswith("http://127.0.0.1:")
        assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3
        pid = server.pid
        assert int(server.pid_file.read_text().split('"pid": ')[1].split(",")[0]) == pid

        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        client = th.InferenceServerClient(server.url.removeprefix("http://"))
        inp = th.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("identity", [inp])
        np.testing.assert_array_equal(res.as_numpy("OUTPUT0"), x * 2)
        # model.py runs in the server venv (its numpy<2 / onnxruntime), not in the caller's venv
        assert res.as_numpy("PREFIX")[0, 0].decode() == str(triton_env)
        client.close()

        gclient = tg.InferenceServerClient(server.grpc_url)
        ginp = tg.InferInput("INPUT0", list(x.shape), "FP32")
        ginp.set_data_from_numpy(x)
        np.testing.assert_array_equal(gclient.infer("identity", [ginp]).as_numpy("OUTPUT0"), x * 2)
        gclient.close()

        # bound to loopback only: every listening socket of the server is on 127.0.0.1
        listening = [c.laddr for c in psutil.Process(pid).net_connections("inet") if c.status == "LISTEN"]
        assert {a.port for a in listening} >= {server.http_port, server.grpc_port, server.metrics_port}
        assert {a.ip for a in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}
    assert not server.ready()
    assert not Path(f"/proc/{pid}").exists()
    assert not server.pid_file.exists()
    assert _shm_regions() <= shm_before  # the python stub's shared memory is released
    assert "Started HTTPService at 127.0.0.1" in server.log_file.read_text()


def test_empty_repository_explicit_mode_and_fixed_ports(triton_env, tmp_path):
    import tritonclient.http as th

    (tmp_path / "empty").mkdir()
    port = free_port()
    with ts.TritonServer(tmp_path / "empty", http_port=port, run_dir=tmp_path / "run") as server:
        assert server.http_port == port
        client = th.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.get_model_repository_index() == []
        assert client.is_server_ready()
        client.close()


def test_port_in_use_and_missing_repository_fail_clearly(triton_env, tmp_path):
    with pytest.raises(StackError, match="does not exist"):
        ts.TritonServer(tmp_path / "nope").start()
    (tmp_path / "empty").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = ts.TritonServer(tmp_path / "empty", http_port=port, grpc_port=free_port(),
                                 metrics_port=free_port(), run_dir=tmp_path / "run", startup_timeout=60)
        with pytest.raises(StackError, match="tritonserver"):
            server.start()
        assert not server.running()


def test_detached_server_stops_from_its_pid_file(triton_env, tmp_path):
    (tmp_path / "empty").mkdir()
    server = ts.TritonServer(tmp_path / "empty", run_dir=tmp_path / "run").start()
    url, pid_file = server.url, server.pid_file
    pid = server.detach()
    assert Path(f"/proc/{pid}").exists()
    assert ts.TritonServer.stop_pid_file(pid_file) is True
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    assert not ts.TritonServer.stop_pid_file(pid_file)
    from genexflow.stack._process import http_ok

    assert not http_ok(f"{url}/v2/health/live")

