"""Infra validation: does the exact artifact load and answer correctly in a real Triton server?

Before a promotion the artifact is deployed under a separate canary model name (never the production
model), loaded in a real ``tritonserver`` (a given running one, or a fresh local one started for the
check), and sent canary requests over HTTP and gRPC:

* real held-out samples when given (plus random inputs of the right shape otherwise),
* absent genes (NaN) and an unseen batch (-1), a single-row request and a ``max_batch_size`` request,
* one malformed request that must be rejected while the server stays ready.

Every answer is compared with in-process onnxruntime on the same inputs (``atol`` 1e-5). A model that
fails to load, answers differently or takes the server down does not pass, and the registry refuses to
promote a version without a passing ``infra.decision`` tag.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genexflow.errors import GenexflowError, InputError
from genexflow.export import ServingArtifact, example_inputs, load_artifact, run_onnx
from genexflow.serving.client import InferenceError, ServerUnavailable, TritonClient, split_url
from genexflow.serving.inputs import build_inputs
from genexflow.serving.repository import ModelRepository
from genexflow.serving.triton_server import TritonServer

CANARY_MODEL = "genexflow_canary"


@dataclass
class InfraResult:
    passed: bool
    reason: str
    max_abs_diff: float = float("nan")
    n_requests: int = 0
    n_rows: int = 0
    load_seconds: float = float("nan")
    checks: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def canary_feeds(artifact: ServingArtifact, cohort: Any = None, n_random: int = 32,
                 seed: int = 7) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Named canary request payloads for ``artifact`` (graph input names only)."""
    names = [i.name for i in artifact.inputs]
    info = artifact.info
    out: list[tuple[str, dict[str, np.ndarray]]] = []
    if cohort is not None:
        feeds, _ = build_inputs(info, cohort.frame(), cohort.samples, names)
        out.append(("heldout", feeds))
    rnd = example_inputs(info, n_random, use_covariates="covariates" in names,
                         use_batch="batch_index" in names, seed=seed)
    out.append(("random", rnd))
    edge = {k: v.copy() for k, v in rnd.items()}
    rng = np.random.default_rng(seed)
    g = edge["expression"].shape[1]
    absent = rng.choice(g, size=max(1, g // 10), replace=False)
    edge["expression"][:, absent] = np.nan  # absent genes: filled inside the graph
    if "batch_index" in edge:
        edge["batch_index"][: max(1, len(edge["batch_index"]) // 4)] = -1  # unseen batch
    out.append(("absent-genes+unseen-batch", edge))
    out.append(("single-row", {k: v[:1] for k, v in rnd.items()}))
    return out


def infra_validate(artifact: ServingArtifact | str | Path, *, url: str | None = None,
                   grpc_url: str | None = None, repository: str | Path | None = None, cohort: Any = None, model_name: str = CANARY_MODEL,
                   atol: float = 1e-5, n_random: int = 32, protocols: tuple[str, ...] = ("http", "grpc"),
                   timeout_s: float = 120.0) -> InfraResult:
    """Load ``artifact`` in a real Triton and compare canary answers with onnxruntime.

    Parameters
    ----------
    url, repository : str, optional
        A running server (explicit model control) and the model repository it serves. When both are
        omitted a local server is started on a temporary repository for the check and stopped afterwards.
    grpc_url : str, optional
        gRPC address of the running server (default: the HTTP port + 1).
    cohort : Cohort, optional
        Real samples for the canary requests (recommended: the held-out set).
    atol : float
        Max abs difference allowed between Triton and in-process onnxruntime.
    """
    art = artifact if isinstance(artifact, ServingArtifact) else load_artifact(artifact, verify=True)
    if (url is None) != (repository is None):
        raise InputError("pass both url and repository (a running server) or neither (start a local one)")
    if url is not None:
        return _validate(art, url, Path(repository), cohort, model_name, atol, n_random, protocols, timeout_s,
                         grpc_url=grpc_url)

    with tempfile.TemporaryDirectory(prefix="genexflow-infra-") as tmp, \
            tempfile.TemporaryDirectory(prefix="genexflow-infra-run-") as run:
        server = TritonServer(Path(tmp), models=[], run_dir=run)
        try:
            server.start()
        except GenexflowError as exc:
            return InfraResult(False, f"could not start a local Triton server: {exc}")
        try:
            return _validate(art, server.url, Path(tmp), cohort, model_name, atol, n_random, protocols,
                             timeout_s, grpc_url=f"grpc://{server.grpc_url}")
        finally:
            server.stop()


def _validate(art: ServingArtifact, url: str, repository: Path, cohort: Any, model_name: str, atol: float,
              n_random: int, protocols: tuple[str, ...], timeout_s: float,
              grpc_url: str | None = None) -> InfraResult:
    checks: dict[str, Any] = {}
    repo = ModelRepository(repository)
    if repo.model_dir(model_name).exists():
        # the canary model is ours alone: start from a clean slate so any artifact can be checked
        _cleanup(TritonClient(url, model_name, timeout_s=timeout_s, retries=0))
        shutil.rmtree(repo.model_dir(model_name))
    try:
        version, _ = repo.add_version(art, model_name, registry={"purpose": "infra-validation"},
                                      expected_sha256=art.sha256)
    except InputError as exc:
        return InfraResult(False, f"artifact rejected before load: {exc}")
    http = TritonClient(url, model_name, timeout_s=timeout_s, retries=1)
    clients = {"http": http}
    if "grpc" in protocols:
        clients["grpc"] = TritonClient(grpc_url or _grpc_url(url), model_name, "grpc", timeout_s=timeout_s,
                                       retries=1)
    t0 = time.perf_counter()
    try:
        http.load(version=version)
    except (InferenceError, ServerUnavailable) as exc:
        _cleanup(http)
        return InfraResult(False, f"model failed to load in Triton: {exc}")
    load_s = time.perf_counter() - t0
    worst, n_req, n_rows = 0.0, 0, 0
    try:
        max_bs = int(http.model_config().get("max_batch_size", 0))
        payloads = canary_feeds(art, cohort, n_random)
        rnd = dict(payloads)["random"]
        big = {k: np.resize(v, (max_bs, *v.shape[1:])).astype(v.dtype) for k, v in rnd.items()}
        payloads.append((f"max-batch-{max_bs}", big))
        for label, feeds in payloads:
            expected = run_onnx(art.onnx_path, feeds)
            for proto, client in clients.items():
                if proto not in protocols:
                    continue
                got, served = client.infer(feeds, version=version)
                n_req += 1
                n_rows += len(feeds["expression"])
                if served != version:
                    return InfraResult(False, f"{proto} {label}: answered by version {served}, expected {version}",
                                       worst, n_req, n_rows, load_s, checks)
                for name, e in expected.items():
                    g = np.asarray(got[name])
                    if g.size == e.size:  # a (B,) output may come back as (B, 1): never broadcast the two
                        g = g.reshape(e.shape)
                    d = float(np.max(np.abs(e - g))) if e.size else 0.0
                    if not np.isfinite(d):
                        d = float("inf")
                    worst = max(worst, d)
                    checks[f"{proto}/{label}/{name}"] = d
                    if not d <= atol:
                        return InfraResult(False, f"{proto} {label}: output {name!r} differs from onnxruntime by "
                                           f"{d:.3g} > {atol}", worst, n_req, n_rows, load_s, checks)
        # a malformed request must be rejected with a clear error and leave the server up
        bad = dict(rnd)
        bad["expression"] = bad["expression"][:, :-1]
        try:
            http.infer(bad, version=version)
            return InfraResult(False, "a malformed request (wrong gene count) was accepted", worst, n_req, n_rows,
                               load_s, checks)
        except InferenceError as exc:
            checks["malformed_rejected"] = str(exc)[:200]
        if not (http.is_live() and http.model_ready(version)):
            return InfraResult(False, "server or model not ready after a malformed request", worst, n_req,
                               n_rows, load_s, checks)
    except (InferenceError, ServerUnavailable) as exc:
        return InfraResult(False, f"canary request failed: {exc}", worst, n_req, n_rows, load_s, checks)
    finally:
        _cleanup(http)
        for c in clients.values():
            c.close()
    return InfraResult(True, f"loaded in {load_s:.1f} s; {n_req} canary requests ({n_rows} rows) over "
                       f"{'+'.join(protocols)} agree with onnxruntime (max abs diff {worst:.2e} <= {atol})",
                       worst, n_req, n_rows, load_s, checks)


def _cleanup(client: Any, timeout_s: float = 30.0) -> None:
    """Unload the canary and wait until it is gone: while a model is UNLOADING, a strict-readiness
    Triton reports not-ready, and the check must leave the server as it found it."""
    try:
        client.unload()
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            idx = client._call("get_model_repository_index")
            rows = idx if isinstance(idx, list) else [{"name": m.name, "state": m.state} for m in idx.models]
            if not any(r.get("name") == client.model_name and r.get("state") == "UNLOADING" for r in rows):
                break
            time.sleep(0.1)
    except GenexflowError:
        pass


def _grpc_url(http_url: str) -> str:
    """grpc://host:(http port + 1), the launcher's convention."""
    address, _ = split_url(http_url)
    host, port = address.rsplit(":", 1)
    return f"grpc://{host}:{int(port) + 1}"


def validate_registered(registry: Any, name: str, ref: str | int = "challenger", **kwargs: Any) -> InfraResult:
    """Infra-validate a registered version (downloaded, sha256-checked) and record ``infra.*`` tags."""
    v = registry.get(name, ref)
    with tempfile.TemporaryDirectory() as tmp:
        art, _ = registry.download(name, v.version, Path(tmp) / "artifact")
        result = infra_validate(art, **kwargs)
    details = {"max_abs_diff": result.max_abs_diff, "n_requests": result.n_requests, "n_rows": result.n_rows,
               "load_seconds": result.load_seconds}
    registry.record_infra(name, v.version, result.passed, result.reason, details)
    return result
