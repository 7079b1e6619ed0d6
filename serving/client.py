"""Triton client (tritonclient HTTP or gRPC) with timeouts, retries and the model's input contract.

The contract (gene order, covariate encoding, batch levels) of each served version travels in the model's
``config.pbtxt`` parameters (see :mod:`genexflow.serving.repository`), so a remote client needs nothing but
the URL: it reads the contract of the newest ready version, builds the inputs with
:func:`genexflow.serving.inputs.build_inputs` and pins the request to that version (a retry after a version
swap re-reads the contract). Server-side rejections (wrong shape, dtype, NaN covariates, batch too large)
become :class:`InferenceError` with Triton's message; connection failures and unavailable versions are
retried with exponential backoff.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import tenacity

from genexflow.bundle import BundleInfo
from genexflow.errors import GenexflowError, InputError
from genexflow.serving.inputs import build_inputs, output_frame
from genexflow.serving.repository import DEFAULT_MODEL_NAME, decode_sidecar

_NUMPY_TO_TRITON = {"float32": "FP32", "int64": "INT64", "float64": "FP64", "int32": "INT32"}


class InferenceError(InputError):
    """Triton rejected a request (bad shape, dtype, values, unknown model): not retried."""


class VersionGone(InferenceError):
    """The pinned model version was swapped out (a deploy or rollback); re-read the contract and resend."""


class ServerUnavailable(GenexflowError):
    """The server could not be reached or did not answer in time, after all retries."""


@dataclass
class Contract:
    """What a served version expects: its Triton version, input contract and tensor names."""

    version: int
    info: BundleInfo
    inputs: list[str]
    outputs: list[str]
    sha256: str
    registry: dict


def split_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """``(host:port, protocol)`` from ``http://h:p``, ``grpc://h:p`` or ``h:p`` (+ explicit protocol)."""
    proto = protocol
    rest = url
    if "://" in url:
        scheme, rest = url.split("://", 1)
        proto = proto or ("grpc" if scheme == "grpc" else "http")
    rest = rest.rstrip("/")
    proto = proto or "http"
    if proto not in ("http", "grpc"):
        raise InputError(f"unknown protocol {proto!r}; use http or grpc")
    return rest, proto


class TritonClient:
    """One connection to a Triton server for one model. Not thread-safe: use one per thread.

    Parameters
    ----------
    url : str
        ``http://127.0.0.1:8000`` (HTTP) or ``grpc://127.0.0.1:8001`` / ``127.0.0.1:8001`` + ``protocol="grpc"``.
    model_name : str
        The Triton model.
    timeout_s : float
        Per-request timeout (connect + response).
    retries : int
        Extra attempts on connection errors, timeouts and unavailable versions.
    backoff_s : float
        First retry delay, doubled each attempt.
    """

    def __init__(self, url: str, model_name: str = DEFAULT_MODEL_NAME, protocol: str | None = None,
                 timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.2) -> None:
        self.address, self.protocol = split_url(url, protocol)
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._client: Any = None
        self._contracts: dict[int, Contract] = {}
        self._current: int | None = None

    # ------------------------------------------------------------------ connection
    @property
    def client(self) -> Any:
        if self._client is None:
            if self.protocol == "grpc":
                # lazy: tritonclient (and its protobuf messages) takes seconds to import
                import tritonclient.grpc as tc

                self._client = tc.InferenceServerClient(self.address)
            else:
                # lazy: tritonclient (and its protobuf messages) takes seconds to import
                import tritonclient.http as tc

                self._client = tc.InferenceServerClient(
                    self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection is not an error
                pass
            self._client = None

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        """Call a tritonclient method with retries on transport errors; Triton rejections raise at once."""
        # lazy: tritonclient (and its protobuf messages) takes seconds to import
        from tritonclient.utils import InferenceServerException

        if self.protocol == "grpc" and fn in _GRPC_DEADLINE_CALLS:
            kwargs.setdefault("client_timeout", self.timeout_s)

        def attempt() -> Any:
            try:
                return getattr(self.client, fn)(*args, **kwargs)
            except InferenceServerException as exc:
                if _version_gone(exc):
                    self._current = None
                    raise VersionGone(f"{self.model_name}: {_clean(exc)}") from None
                if not _retryable(exc):
                    raise InferenceError(f"{self.model_name}: {_clean(exc)}") from None
                self._contracts.clear()
                self._current = None
                raise _Transient(exc) from exc
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.close()
                raise _Transient(exc) from exc

        retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(self.retries + 1),
                                     wait=tenacity.wait_exponential(multiplier=self.backoff_s),
                                     retry=tenacity.retry_if_exception_type(_Transient))
        try:
            return retrying(attempt)
        except tenacity.RetryError as err:
            last = err.last_attempt.exception().__cause__
            raise ServerUnavailable(f"Triton at {self.address} ({self.protocol}) failed after {self.retries + 1} "
                                    f"attempts: {_clean(last)}; is the server running (`genexflow serve`)?") from None

    # ------------------------------------------------------------------ server / repository API
    def is_ready(self) -> bool:
        try:
            return bool(self.client.is_server_ready())
        except Exception:  # noqa: BLE001 - any failure means not ready
            self.close()
            return False

    def is_live(self) -> bool:
        try:
            return bool(self.client.is_server_live())
        except Exception:  # noqa: BLE001 - any failure means not live
            self.close()
            return False

    def model_ready(self, version: int | None = None) -> bool:
        """Is this model (version) ready? Unlike server readiness, unaffected by other models swapping
        versions (a strict-readiness server reports not-ready while any model is UNLOADING)."""
        try:
            return bool(self.client.is_model_ready(self.model_name, str(version) if version else ""))
        except Exception:  # noqa: BLE001
            self.close()
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            if self.is_ready():
                return
            time.sleep(0.2)
        raise ServerUnavailable(f"Triton at {self.address} was not ready after {timeout_s:.0f} s")

    def load(self, version: int | None = None) -> None:
        """(Re)load the model from the repository (explicit mode); returns when the new version serves."""
        self._call("load_model", self.model_name)
        self._contracts.clear()
        self._current = None
        if version is not None and version not in self.ready_versions():
            raise InferenceError(f"{self.model_name} version {version} did not become ready; see the server log")

    def unload(self) -> None:
        self._call("unload_model", self.model_name)

    def ready_versions(self) -> list[int]:
        idx = self._call("get_model_repository_index")
        rows = idx if isinstance(idx, list) else [_msg_dict(m) for m in idx.models]
        return sorted(int(r["version"]) for r in rows
                      if r.get("name") == self.model_name and r.get("state") == "READY" and r.get("version"))

    def model_config(self) -> dict:
        cfg = self._call("get_model_config", self.model_name)
        if self.protocol == "grpc":
            # lazy: tritonclient (and its protobuf messages) takes seconds to import
            from google.protobuf.json_format import MessageToDict

            return MessageToDict(cfg.config, preserving_proto_field_name=True)
        return cfg

    # ------------------------------------------------------------------ contract + inference
    def contract(self, refresh: bool = False) -> Contract:
        """The input contract of the newest ready version (cached until a retry or ``refresh``)."""
        if refresh or self._current is None:
            self._contracts.clear()
            cfg = self.model_config()
            params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}

            vmap = json.loads(params.get("genexflow_versions", "{}") or "{}")
            ready = self.ready_versions()
            if not ready:
                raise ServerUnavailable(f"model {self.model_name!r} has no ready version; deploy or load it")
            for v in ready:
                key = f"genexflow_sidecar_{v}"
                if key not in params:
                    continue
                side = decode_sidecar(params[key])
                info = BundleInfo.from_json(json.dumps(side["bundle"]))
                self._contracts[v] = Contract(
                    v, info, [i["name"] for i in side["onnx"]["inputs"]],
                    [o["name"] for o in side["onnx"]["outputs"]], side["onnx"]["sha256"], vmap.get(str(v), {}))
            if not self._contracts:
                raise InferenceError(f"model {self.model_name!r} carries no genexflow contract; "
                                     "deploy it with `genexflow models deploy`")
            self._current = max(self._contracts)
        return self._contracts[self._current]

    def infer(self, feeds: dict[str, np.ndarray], version: int | None = None,
              outputs: list[str] | None = None) -> tuple[dict[str, np.ndarray], int]:
        """One request: ``feeds`` name -> array with a leading batch axis. Returns (outputs, served version)."""
        if self.protocol == "grpc":
            # lazy: tritonclient (and its protobuf messages) takes seconds to import
            import tritonclient.grpc as tc
        else:
            # lazy: tritonclient (and its protobuf messages) takes seconds to import
            import tritonclient.http as tc
        inputs = []
        for name, arr in feeds.items():
            arr = np.ascontiguousarray(arr)
            dtype = _NUMPY_TO_TRITON.get(arr.dtype.name)
            if dtype is None:
                raise InputError(f"input {name!r} has dtype {arr.dtype}; send float32 or int64")
            if name == "batch_index" and arr.ndim == 1:
                arr = arr[:, None]
            inp = tc.InferInput(name, list(arr.shape), dtype)
            if self.protocol == "grpc":
                inp.set_data_from_numpy(arr)
            else:
                inp.set_data_from_numpy(arr, binary_data=True)
            inputs.append(inp)
        req_out = None
        if outputs:
            req_out = [tc.InferRequestedOutput(n) if self.protocol == "grpc"
                       else tc.InferRequestedOutput(n, binary_data=True) for n in outputs]
        kwargs: dict[str, Any] = {"model_version": str(version) if version else "", "outputs": req_out}
        if self.protocol == "http":
            kwargs["timeout"] = int(self.timeout_s * 1e6)
        res = self._call("infer", self.model_name, inputs, **kwargs)
        resp = res.get_response()
        served = int(resp["model_version"] if isinstance(resp, dict) else resp.model_version)
        if isinstance(resp, dict):
            names = outputs or [o["name"] for o in resp["outputs"]]
        else:
            names = outputs or [o.name for o in resp.outputs]
        return {n: res.as_numpy(n) for n in names}, served

    def predict_feeds(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Contract]:
        """Infer prepared feeds against the current contract's version; after a version swap
        (:class:`VersionGone`) re-read the contract and resend, a few times."""
        for attempt in range(4):
            c = self.contract(refresh=attempt > 0)
            try:
                out, _ = self.infer({k: feeds[k] for k in c.inputs}, version=c.version, outputs=c.outputs)
                return out, c
            except VersionGone:
                if attempt == 3:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def predict(self, frame: pd.DataFrame, samples: pd.DataFrame | None = None, max_batch: int = 256,
                max_missing_fraction: float = 0.2) -> tuple[pd.DataFrame, Contract, list[str]]:
        """Predict a samples x genes frame (gene IDs as columns). Returns (predictions, contract, missing genes)."""
        c = self.contract()
        feeds, missing = build_inputs(c.info, frame, samples, c.inputs, max_missing_fraction)
        parts = []
        for lo in range(0, len(frame), max_batch):
            chunk = {k: v[lo:lo + max_batch] for k, v in feeds.items()}
            out, c = self.predict_feeds(chunk)
            parts.append(out)
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
        return output_frame(c.info, merged, frame.index), c, missing


class _Transient(Exception):
    """A transport error or a model between versions: :meth:`TritonClient._call` tries again."""


#: gRPC calls that take a deadline (``client_timeout``).
_GRPC_DEADLINE_CALLS = frozenset({"infer", "load_model", "unload_model", "is_server_ready", "is_model_ready",
                                  "get_model_config", "get_model_metadata", "get_model_repository_index"})


def _retryable(exc: Any) -> bool:
    status = str(exc.status() or "")
    msg = str(exc.message() or "").lower()
    if "load failed" in msg or "failed to load" in msg:
        return False  # the model itself is broken: retrying the same load cannot help
    if any(s in status for s in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "503", "502", "504")):
        return True
    if "timed out" in msg or "deadline" in msg or "socket" in msg or "connect" in msg:
        return True
    # the model is between an unload and a load: it comes back
    return "has no available versions" in msg or "unavailable" in msg


def _version_gone(exc: Any) -> bool:
    msg = str(exc.message() or "")
    return "version" in msg and ("is not at ready state" in msg or "is not found" in msg)


def _clean(exc: Any) -> str:
    if exc is None:
        return "unknown error"
    msg = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return " ".join(str(msg).split())


def _msg_dict(m: Any) -> dict:
    return {"name": m.name, "version": m.version, "state": m.state}


_local = threading.local()


def thread_client(url: str, model_name: str, protocol: str | None = None, **kw: Any) -> TritonClient:
    """A per-thread cached :class:`TritonClient` (tritonclient connections are not thread-safe)."""
    key = (url, model_name, protocol)
    cache = getattr(_local, "clients", None)
    if cache is None:
        cache = _local.clients = {}
    if key not in cache:
        cache[key] = TritonClient(url, model_name, protocol, **kw)
    return cache[key]
