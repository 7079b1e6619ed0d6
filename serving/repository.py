"""Triton model repository: ``config.pbtxt`` generation and versioned deploys.

Layout (one model, versions are integers, the newest serves with ``version_policy: latest {1}``)::

    <repository>/<model name>/config.pbtxt
    <repository>/<model name>/<N>/model.onnx      the exact exported bytes (sha256-checked)
    <repository>/<model name>/<N>/model.json      the sidecar (input contract)
    <repository>/<model name>/<N>/model.py        python backend (local target only)

Two targets share inputs, outputs, batching and version policy:

* ``local``: ``backend: "python"`` running onnxruntime inside ``model.py``, ``KIND_CPU`` instances. This is what
  the tritonserver bundled with nvidia-pytriton can run (it ships only the python backend).
* ``gpu``: ``platform: "onnxruntime_onnx"``, ``KIND_GPU`` instances, optional TensorRT FP16 accelerator. For the
  NGC tritonserver image on GPU nodes (``infra/``).

A deploy copies a new version directory in (staged, then renamed, so Triton never sees a half-written
version), rewrites ``config.pbtxt`` (which records which registry version each Triton version holds) and
asks a running server to ``load_model``: Triton loads the new version beside the old one and switches when it
is ready, so in-flight and new requests never fail.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from genexflow.errors import InputError
from genexflow.export import ServingArtifact, load_artifact, sha256_file

DEFAULT_MODEL_NAME = "genexflow_classifier"
_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "float64": "TYPE_FP64", "int32": "TYPE_INT32"}


@dataclass
class TritonConfig:
    """Serving knobs that go into ``config.pbtxt``.

    Parameters
    ----------
    max_batch_size : int
        Largest batch Triton forms or accepts (requests above it are rejected by Triton).
    preferred_batch_sizes : list of int
        Dynamic batcher targets; each must be <= ``max_batch_size``.
    max_queue_delay_us : int
        How long the dynamic batcher may hold a request to fill a batch.
    instance_count : int
        Model instances (per GPU for ``gpu``).
    num_versions : int
        ``version_policy: latest { num_versions }``; 1 = only the newest version serves.
    intra_op_threads : int
        onnxruntime threads per instance (``local`` target).
    gpus : list of int
        GPU ids for ``KIND_GPU`` (empty = all).
    tensorrt_fp16 : bool
        Add the TensorRT execution accelerator with FP16 (``gpu`` target).
    execution_env_path : str, optional
        Python environment for ``model.py`` (``EXECUTION_ENV_PATH``); by default the server's own.
    """

    max_batch_size: int = 256
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [16, 64])
    max_queue_delay_us: int = 500
    instance_count: int = 1
    num_versions: int = 1
    intra_op_threads: int = 1
    gpus: list[int] = field(default_factory=list)
    tensorrt_fp16: bool = False
    execution_env_path: str | None = None

    def check(self) -> None:
        if self.max_batch_size < 1:
            raise InputError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise InputError(f"preferred batch sizes {bad} are outside [1, max_batch_size={self.max_batch_size}]")
        if self.max_queue_delay_us < 0 or self.instance_count < 1 or self.num_versions < 1:
            raise InputError("max_queue_delay_us must be >= 0, instance_count and num_versions >= 1")


def build_config(artifact: ServingArtifact, name: str = DEFAULT_MODEL_NAME, target: str = "local",
                 config: TritonConfig | None = None, versions: dict[int, dict] | None = None,
                 sidecars: dict[int, str] | None = None) -> Any:
    """The ``ModelConfig`` protobuf for ``artifact`` (inputs/outputs straight from the ONNX graph).

    ``versions`` maps Triton version -> registry metadata; it is stored as the ``genexflow_versions``
    parameter so a client can tell which registered model answered. ``sidecars`` maps Triton version ->
    ``model.json`` text; each is stored compressed as ``genexflow_sidecar_<version>`` so a remote client can
    read the input contract (gene order, covariate encoding) of the version it calls.
    """
    # lazy: tritonclient (and its protobuf messages) takes seconds to import
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = config or TritonConfig()
    cfg.check()
    if target not in ("local", "gpu"):
        raise InputError(f"unknown target {target!r}; use 'local' (python backend, CPU) or 'gpu' (onnxruntime_onnx)")
    m = mc.ModelConfig(name=name, max_batch_size=cfg.max_batch_size)
    if target == "local":
        m.backend = "python"
    else:
        m.platform = "onnxruntime_onnx"
    for spec in artifact.inputs:
        _tensor(m.input.add(), spec, mc)
    for spec in artifact.outputs:
        _tensor(m.output.add(), spec, mc)
    m.dynamic_batching.preferred_batch_size.extend(cfg.preferred_batch_sizes)
    m.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
    m.version_policy.latest.num_versions = cfg.num_versions
    group = m.instance_group.add(count=cfg.instance_count)
    if target == "local":
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        params = {"intra_op_threads": str(cfg.intra_op_threads),
                  "nan_allowed_inputs": "expression",
                  "n_batch_levels": str(len(artifact.info.batch_levels))}
        if cfg.execution_env_path:
            params["EXECUTION_ENV_PATH"] = cfg.execution_env_path
    else:
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        group.gpus.extend(cfg.gpus)
        params = {}
        if cfg.tensorrt_fp16:
            acc = m.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            acc.parameters["precision_mode"] = "FP16"
            acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
    params["genexflow_versions"] = json.dumps(versions or {}, sort_keys=True)
    for v, text in (sidecars or {}).items():
        params[f"genexflow_sidecar_{v}"] = encode_sidecar(text)
    for k, v in params.items():
        m.parameters[k].string_value = v
    return m


def encode_sidecar(text: str) -> str:
    """gzip + base64 (a config parameter is a string; gene lists compress about 5x)."""
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def decode_sidecar(value: str) -> dict:
    return json.loads(gzip.decompress(base64.b64decode(value)).decode())


def _tensor(t: Any, spec: Any, mc: Any) -> None:
    if spec.dtype not in _TYPES:
        raise InputError(f"tensor {spec.name!r} has dtype {spec.dtype} that the serving stack does not map")
    t.name = spec.name
    t.data_type = getattr(mc, _TYPES[spec.dtype])
    dims = list(spec.shape[1:])  # max_batch_size > 0: dims exclude the batch axis
    if not dims:
        dims = [1]
        t.reshape.SetInParent()  # (B,) in the graph, (B, 1) on the wire: reshape drops the trailing 1
    if any(d < 0 for d in dims):
        raise InputError(f"tensor {spec.name!r} has a dynamic non-batch dimension {spec.shape}; export fixed sizes")
    t.dims.extend(dims)


def render_config(model_config: Any) -> str:
    """``config.pbtxt`` text of a ``ModelConfig``."""
    # lazy: tritonclient (and its protobuf messages) takes seconds to import
    from google.protobuf import text_format

    return text_format.MessageToString(model_config)


def parse_config(text: str) -> Any:
    """Parse ``config.pbtxt`` text strictly with tritonclient's ``model_config_pb2`` (raises on typos)."""
    # lazy: tritonclient (and its protobuf messages) takes seconds to import
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise InputError(f"invalid config.pbtxt: {exc}") from None


def check_config(model_config: Any, artifact: ServingArtifact) -> None:
    """Semantic checks a parse cannot do: tensors, dtypes and dims agree with the ONNX graph."""
    # lazy: tritonclient (and its protobuf messages) takes seconds to import
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = model_config
    if cfg.max_batch_size < 1:
        raise InputError("config.pbtxt: max_batch_size must be > 0 (the graph has a batch axis)")
    if bool(cfg.backend) == bool(cfg.platform):
        raise InputError("config.pbtxt: set exactly one of backend (python) and platform (onnxruntime_onnx)")
    for kind, tensors, specs in (("input", cfg.input, artifact.inputs), ("output", cfg.output, artifact.outputs)):
        got = {t.name: t for t in tensors}
        if set(got) != {s.name for s in specs}:
            raise InputError(f"config.pbtxt {kind}s {sorted(got)} != graph {kind}s {sorted(s.name for s in specs)}")
        for s in specs:
            t = got[s.name]
            want_type = getattr(mc, _TYPES[s.dtype])
            want_dims = list(s.shape[1:]) or [1]
            if t.data_type != want_type or list(t.dims) != want_dims:
                raise InputError(f"config.pbtxt {kind} {s.name!r}: {mc.DataType.Name(t.data_type)} {list(t.dims)}"
                                 f" but the graph has {_TYPES[s.dtype]} {want_dims}")
    db = cfg.dynamic_batching
    if any(b > cfg.max_batch_size for b in db.preferred_batch_size):
        raise InputError("config.pbtxt: a preferred batch size exceeds max_batch_size")
    kinds = {g.kind for g in cfg.instance_group}
    if cfg.platform == "onnxruntime_onnx" and kinds - {mc.ModelInstanceGroup.KIND_GPU}:
        raise InputError("config.pbtxt: the production (onnxruntime_onnx) target must use KIND_GPU instances")


@dataclass
class DeployResult:
    """What a deploy did."""

    model_name: str
    triton_version: int
    path: Path
    sha256: str
    loaded: bool
    registry: dict = field(default_factory=dict)


class ModelRepository:
    """A Triton model repository folder that genexflow writes versions into.

    Examples
    --------
    >>> repo = ModelRepository("models")                       # doctest: +SKIP
    >>> repo.add_version(artifact, registry={"version": "3"})  # doctest: +SKIP
    """

    def __init__(self, root: str | Path, target: str = "local", config: TritonConfig | None = None) -> None:
        self.root = Path(root)
        self.target = target
        self.config = config or TritonConfig()

    def model_dir(self, name: str) -> Path:
        return self.root / name

    def versions(self, name: str = DEFAULT_MODEL_NAME) -> list[int]:
        d = self.model_dir(name)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())

    def version_map(self, name: str = DEFAULT_MODEL_NAME) -> dict[int, dict]:
        """Triton version -> registry metadata, as recorded in ``config.pbtxt``."""
        p = self.model_dir(name) / "config.pbtxt"
        if not p.exists():
            return {}
        cfg = parse_config(p.read_text())
        raw = cfg.parameters["genexflow_versions"].string_value if "genexflow_versions" in cfg.parameters else "{}"
        return {int(k): v for k, v in json.loads(raw or "{}").items()}

    def add_version(self, artifact: ServingArtifact | str | Path, name: str = DEFAULT_MODEL_NAME,
                    registry: dict | None = None, expected_sha256: str | None = None,
                    keep: int = 3) -> tuple[int, Path]:
        """Copy ``artifact`` in as the next version and rewrite ``config.pbtxt``; returns (version, dir).

        Refuses an artifact whose sha256 differs from its sidecar or from ``expected_sha256`` (the registry's).
        Keeps the newest ``keep`` version directories.
        """
        art = artifact if isinstance(artifact, ServingArtifact) else load_artifact(artifact, verify=True)
        actual = sha256_file(art.onnx_path)
        for label, want in (("its sidecar", art.sha256), ("the registry", expected_sha256)):
            if want is not None and actual != want:
                raise InputError(f"refusing to deploy {art.onnx_path}: sha256 {actual[:16]}… differs from {label} "
                                 f"({want[:16]}…); the artifact is not the one that was registered")
        model_dir = self.model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        existing = self.versions(name)
        self._check_compatible(name, art)
        version = (existing[-1] + 1) if existing else 1
        stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
        try:
            shutil.copy2(art.onnx_path, stage / "model.onnx")
            shutil.copy2(art.sidecar_path, stage / "model.json")
            if self.target == "local":
                template = resources.files("genexflow.serving") / "templates" / "model.py"
                (stage / "model.py").write_text(template.read_text())
            if sha256_file(stage / "model.onnx") != actual:
                raise InputError("the artifact changed while it was being copied; retry the deploy")
            stage.rename(model_dir / str(version))
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
        vmap = {v: meta for v, meta in self.version_map(name).items() if (model_dir / str(v)).is_dir()}
        vmap[version] = {"sha256": actual, **(registry or {})}
        for old in self.versions(name)[:-keep] if keep > 0 else []:
            shutil.rmtree(model_dir / str(old), ignore_errors=True)
            vmap.pop(old, None)
        self.write_config(art, name, vmap)
        return version, model_dir / str(version)

    def _check_compatible(self, name: str, art: ServingArtifact) -> None:
        """A new version must keep the served tensor contract (Triton has one config for all versions)."""
        p = self.model_dir(name) / "config.pbtxt"
        if not p.exists() or not self.versions(name):
            return
        try:
            check_config(parse_config(p.read_text()), art)
        except InputError as exc:
            raise InputError(f"the new artifact does not fit the served model {name!r} ({exc}); deploy it under "
                             "another model name") from None

    def write_config(self, artifact: ServingArtifact, name: str = DEFAULT_MODEL_NAME,
                     versions: dict[int, dict] | None = None) -> Path:
        d = self.model_dir(name)
        sidecars = {v: (d / str(v) / "model.json").read_text() for v in (versions or {})
                    if (d / str(v) / "model.json").exists()}
        cfg = build_config(artifact, name, self.target, self.config,
                           {str(k): v for k, v in (versions or {}).items()}, sidecars)
        text = render_config(cfg)
        check_config(parse_config(text), artifact)
        path = self.model_dir(name) / "config.pbtxt"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return path


def deploy(artifact: ServingArtifact | str | Path, repository: str | Path | ModelRepository,
           name: str = DEFAULT_MODEL_NAME, url: str | None = None, *, expected_sha256: str | None = None,
           registry: dict | None = None, timeout_s: float = 120.0) -> DeployResult:
    """Add ``artifact`` as a new version of ``name`` in ``repository`` and, with ``url``, load it in a running
    Triton (explicit model control) so it replaces the served version without failed requests."""
    repo = repository if isinstance(repository, ModelRepository) else ModelRepository(repository)
    art = artifact if isinstance(artifact, ServingArtifact) else load_artifact(artifact, verify=True)
    version, path = repo.add_version(art, name, registry=registry, expected_sha256=expected_sha256)
    loaded = False
    if url:
        from genexflow.serving.client import TritonClient  # lazy: the client imports this module (sidecars)

        with TritonClient(url, model_name=name, timeout_s=timeout_s) as client:
            client.load(version=version)
        loaded = True
    return DeployResult(name, version, path, art.sha256, loaded, registry or {})
