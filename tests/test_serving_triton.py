"""Against a REAL local tritonserver (one per test session) and a REAL MLflow tracking server process:
HTTP/gRPC parity, malformed requests, hot swap under load, infra validation, the CLI, and the whole
register -> gate -> infra-validate -> promote -> serve -> predict -> rollback path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _serving_servers import mlflow_server, prestart_mlflow, triton_server

from genexflow.export import ServingArtifact, export_onnx_artifact, run_onnx, sha256_file, write_sidecar
from genexflow.serving.client import InferenceError, ServerUnavailable, TritonClient
from genexflow.serving.inputs import build_inputs
from genexflow.serving.repository import deploy
from genexflow.serving.toy import make_toy_artifact, toy_cohort, toy_info, toy_module

GENEXFLOW = str(Path(sys.executable).parent / "genexflow")

prestart_mlflow()  # its first start migrates a sqlite DB; let that overlap collection and other tests


@pytest.fixture(scope="module")
def triton():
    server, repo = triton_server()
    return server, repo


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    root = tmp_path_factory.mktemp("arts")
    return make_toy_artifact(root / "a", seed=0), make_toy_artifact(root / "b", seed=5)


def _expected(art: ServingArtifact, cohort) -> np.ndarray:
    feeds, _ = build_inputs(art.info, cohort.frame(), cohort.samples, [i.name for i in art.inputs])
    return run_onnx(art.onnx_path, feeds)["probabilities"]


def _grpc(server) -> str:
    return f"grpc://{server.grpc_url}"


def test_http_and_grpc_match_onnxruntime(triton, arts):
    server, repo = triton
    a, _ = arts
    res = deploy(a, repo, "parity", server.url)
    assert res.loaded
    co = toy_cohort(a.info, 300, seed=2)
    want = _expected(a, co)
    for url in (server.url, _grpc(server)):
        with TritonClient(url, "parity") as c:
            df, contract, missing = c.predict(co.frame(), co.samples, max_batch=128)
            assert contract.version == res.triton_version and contract.sha256 == a.sha256
            assert np.abs(df.filter(like="p_").to_numpy() - want).max() <= 1e-6
            assert df.index.tolist() == co.sample_ids.tolist()


def test_malformed_requests_get_clear_errors_and_server_stays_up(triton, arts):
    server, repo = triton
    a, _ = arts
    deploy(a, repo, "malformed", server.url)
    co = toy_cohort(a.info, 8)
    feeds, _ = build_inputs(a.info, co.frame(), co.samples, ["expression", "covariates", "batch_index"])
    nan_cov = dict(feeds, covariates=np.full_like(feeds["covariates"], np.nan))
    cases = {
        "shape": (dict(feeds, expression=feeds["expression"][:, :-1]), "unexpected shape"),
        "dtype": (dict(feeds, expression=feeds["expression"].astype(np.float64)), "FP64"),
        "nan": (nan_cov, "NaN"),
        "inf": (dict(feeds, expression=np.where(feeds["expression"] > 25, np.inf, feeds["expression"])
                     .astype(np.float32)), "infinite"),
        "batch-range": (dict(feeds, batch_index=feeds["batch_index"] + 7), "batch_index"),
        "too-big": ({k: np.resize(v, (300, *v.shape[1:])).astype(v.dtype) for k, v in feeds.items()}, "256"),
        "missing-input": ({"expression": feeds["expression"], "covariates": feeds["covariates"]}, "batch_index"),
    }
    for url in (server.url, _grpc(server)):
        with TritonClient(url, "malformed", retries=0) as c:
            for bad, needle in cases.values():
                with pytest.raises(InferenceError, match=needle):
                    c.infer(bad)
            with pytest.raises(InferenceError, match="unknown model|not found"):
                TritonClient(url, "no_such_model", retries=0).infer(feeds)
            assert c.is_live() and c.model_ready()
            out, _ = c.infer(feeds)  # still serving
            assert out["probabilities"].shape == (8, 3)
    # NaN expression = absent genes: accepted and filled inside the graph
    with TritonClient(server.url, "malformed") as c:
        holes = feeds["expression"].copy()
        holes[:, :3] = np.nan
        out, _ = c.infer(dict(feeds, expression=holes))
        assert np.isfinite(out["probabilities"]).all()
    # a dead server: retries then a clear error
    with pytest.raises(ServerUnavailable, match="failed after 2 attempts"):
        TritonClient("http://127.0.0.1:9", "x", retries=1, backoff_s=0.01, timeout_s=1).infer(feeds)


def test_hot_swap_under_load_has_no_failed_request(triton, arts):
    server, repo = triton
    a, b = arts
    deploy(a, repo, "swap", server.url)
    co = toy_cohort(a.info, 8)
    want = {a.sha256: _expected(a, co), b.sha256: _expected(b, co)}
    stop = threading.Event()
    served: Counter = Counter()
    failures: list[str] = []

    def hammer(url: str) -> None:
        with TritonClient(url, "swap") as c:
            while not stop.is_set():
                try:
                    df, contract, _ = c.predict(co.frame(), co.samples)
                    assert np.abs(df.filter(like="p_").to_numpy() - want[contract.sha256]).max() <= 1e-6
                    served[contract.version] += 1
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer, args=(u,)) for u in (server.url, _grpc(server)) * 2]
    for t in threads:
        t.start()
    time.sleep(0.7)
    v2 = deploy(b, repo, "swap", server.url).triton_version  # promotion: new version, hot swap
    time.sleep(0.7)
    v3 = deploy(a, repo, "swap", server.url).triton_version  # rollback: old artifact as a newer version
    time.sleep(0.7)
    stop.set()
    for t in threads:
        t.join(30)
    assert failures == []
    assert served[v2] > 0 and served[v3] > 0 and sum(served.values()) > 50


def test_infra_validation_passes_good_and_rejects_bad_models(triton, arts, tmp_path):
    from genexflow.serving.infra_validate import infra_validate

    server, repo = triton
    a, _ = arts
    kw = {"url": server.url, "grpc_url": _grpc(server), "repository": repo}
    good = infra_validate(a, cohort=toy_cohort(a.info, 40), **kw)
    assert good.passed, good.reason
    assert good.max_abs_diff <= 1e-5 and good.n_requests >= 8 and "malformed_rejected" in good.checks
    # a graph that does not load in Triton (bytes onnxruntime cannot parse; sidecar consistent)
    broken = ServingArtifact(tmp_path / "broken" / "model.onnx", tmp_path / "broken" / "model.json", "", a.info,
                             a.inputs, a.outputs, a.opset)
    broken.onnx_path.parent.mkdir()
    broken.onnx_path.write_bytes(b"this is not an onnx graph")
    broken.sha256 = sha256_file(broken.onnx_path)
    write_sidecar(broken)
    # default path: a fresh local server just for the check (a failed load leaves a Triton server
    # "not ready" under strict readiness, so never point a broken canary at the serving instance)
    bad_load = infra_validate(broken)
    assert not bad_load.passed and "failed to load" in bad_load.reason and "INVALID_PROTOBUF" in bad_load.reason
    # a graph whose answers differ between runs (random noise) disagrees with onnxruntime
    import torch

    info = toy_info()
    base = toy_module(info)

    class Noisy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base

        def forward(self, expression, covariates, batch_index):
            p = self.base(expression, covariates, batch_index)
            return p + 1e-3 * torch.rand_like(p)

    noisy = export_onnx_artifact(Noisy(), info, tmp_path / "noisy", atol=1.0)
    disagree = infra_validate(noisy, **kw)
    assert not disagree.passed and "differs from onnxruntime" in disagree.reason
    assert TritonClient(server.url, "x").is_live()


def run_cli(capsys, *args: str) -> subprocess.CompletedProcess:
    from genexflow.cli.main import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def test_end_to_end_register_gate_validate_promote_serve_predict_rollback(triton, arts, tmp_path, capsys):
    from genexflow.serving.infra_validate import validate_registered
    from genexflow.serving.registry import GatePolicy, Registry

    server, repo = triton
    a, b = arts
    uri = mlflow_server().url
    reg = Registry(uri)
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    model = f"e2e_{uuid.uuid4().hex[:6]}"
    heldout = toy_cohort(a.info, 150, seed=9)
    heldout.samples["label"] = np.asarray(a.info.class_names)[_expected(a, heldout).argmax(1)]
    heldout.write(tmp_path / "heldout")

    def cli(*args: str) -> subprocess.CompletedProcess:
        """The CLI in-process (importing mlflow per subprocess costs seconds on a busy 2-core box)."""
        return run_cli(capsys, *args)

    # v1: register -> gate (no champion) -> infra-validate in the real Triton -> promote + deploy + load
    v1 = reg.register(a, name, baselines={"logreg": {"balanced_accuracy": 0.3}})
    assert cli("models", "gate", str(tmp_path / "heldout"), "-n", name, "--tracking-uri", uri).returncode == 0
    r = validate_registered(reg, name, "challenger", url=server.url, grpc_url=_grpc(server), repository=repo,
                            cohort=heldout)
    assert r.passed, r.reason
    assert reg.get(name, v1.version).tags["infra.decision"] == "pass"
    p = cli("models", "promote", "-n", name, "--tracking-uri", uri, "--repository", str(repo), "--url", server.url)
    assert p.returncode == 0, p.stderr
    # promote deploys under the default Triton model name; serve the e2e copy under its own name too
    reg.deploy(name, "champion", repo, url=server.url, model_name=model)

    frame = heldout.frame().iloc[:20]
    frame.T.to_csv(tmp_path / "genes_by_samples.csv", index_label="gene_id")  # other orientation
    heldout.samples.iloc[:20].to_csv(tmp_path / "samples.csv")

    def predict(url: str, subprocess_run: bool = False) -> pd.DataFrame:
        out = tmp_path / f"pred-{uuid.uuid4().hex[:4]}.csv"
        args = ["predict", str(tmp_path / "genes_by_samples.csv"), "--samples", str(tmp_path / "samples.csv"),
                "--url", url, "--model-name", model, "-o", str(out)]
        q = subprocess.run([GENEXFLOW, *args], capture_output=True, text=True, timeout=300) if subprocess_run \
            else cli(*args)
        assert q.returncode == 0, q.stderr
        return pd.read_csv(out, index_col=0)

    first = predict(server.url, subprocess_run=True)
    assert (first["model_version"] == f"{name}/{v1.version}").all()
    assert np.abs(first.filter(like="p_").to_numpy() - _expected(a, heldout)[:20]).max() < 1e-6

    # v2: worse on held-out -> gate fails -> promotion refused; with a tolerance it passes
    v2 = reg.register(b, name)
    assert cli("models", "gate", str(tmp_path / "heldout"), "-n", name, "--tracking-uri", uri).returncode == 1
    refused = cli("models", "promote", "-n", name, "--tracking-uri", uri)
    assert refused.returncode == 2 and "refusing to promote" in refused.stderr
    assert reg.gate(name, heldout, policy=GatePolicy(margin=-1.0)).passed
    assert validate_registered(reg, name, v2.version, url=server.url, grpc_url=_grpc(server),
                               repository=repo).passed
    reg.promote(name, v2.version)
    reg.deploy(name, "champion", repo, url=server.url, model_name=model)
    second = predict(_grpc(server))
    assert (second["model_version"] == f"{name}/{v2.version}").all()
    assert np.abs(second.filter(like="p_").to_numpy() - _expected(b, heldout)[:20]).max() < 1e-6

    # rollback re-points champion to v1 and redeploys it
    rb = cli("models", "rollback", "-n", name, "--tracking-uri", uri, "--reason", "e2e", "--repository", str(repo),
             "--url", server.url)
    assert rb.returncode == 0, rb.stderr
    reg.deploy(name, "champion", repo, url=server.url, model_name=model)
    third = predict(server.url)
    assert (third["model_version"] == f"{name}/{v1.version}").all()
    pd.testing.assert_frame_equal(first, third)
    listing = json.loads(cli("models", "list", "-n", name, "--tracking-uri", uri, "--json").stdout)
    assert {v["version"]: v["aliases"] for v in listing} == {v1.version: ["champion"], v2.version: []}
    events = [e["event"] for e in reg.history(name)]
    assert events[-1] == "rollback" and events.count("promote") == 2

    # batch scoring through Triton equals in-process scoring
    heldout.write(tmp_path / "cohort")
    s = cli("score", str(tmp_path / "cohort"), "-o", str(tmp_path / "t.parquet"), "--url", _grpc(server),
            "--model-name", model, "--chunk-size", "40", "--concurrency", "3")
    assert s.returncode == 0, s.stderr
    scored = pd.read_parquet(tmp_path / "t.parquet")
    assert np.abs(scored.filter(like="p_").to_numpy() - _expected(a, heldout)).max() < 1e-6
    assert (scored["model_version"] == f"{name}/{v1.version}").all()


def test_serve_cli_starts_triton_and_loads_the_model(arts, tmp_path):
    triton_server()  # skips with the same message when the Triton env cannot be made
    a, _ = arts
    r = subprocess.run([GENEXFLOW, "serve", "--artifact", str(a.folder), "--repository", str(tmp_path / "models"),
                        "--no-block"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pid = int(r.stderr.split("server pid ")[1].split(";")[0])
    try:
        url = r.stderr.split(" at ")[1].split()[0]
        co = toy_cohort(a.info, 5)
        with TritonClient(url) as c:
            df, contract, _ = c.predict(co.frame(), co.samples)
        assert contract.sha256 == a.sha256 and len(df) == 5
    finally:
        os.kill(pid, signal.SIGTERM)
