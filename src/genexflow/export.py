"""Export one serving artifact: fitted preprocessing + model (+ softmax) as ONE ONNX graph, with a JSON sidecar.

The graph takes what a client has, never what the model sees::

    expression   float32 (B, G_in)  RAW values in the training gene order (``BundleInfo.input_genes``),
                                    same value type as training; NaN marks an absent gene (filled inside)
    covariates   float32 (B, C)     encoded with ``bundle.encode_covariates`` (only when C > 0)
    batch_index  int64   (B,)       ``BundleInfo.batch_index`` (a training batch's level, or -1 - k for the
                                    k-th batch unseen in training; only when the preprocessing corrects batches)
    ->
    probabilities float32 (B, K)    classification (softmax over ``class_names``), or
    prediction    float32 (B, 1)    regression
    latent        float32 (B, L)    optional (``include_latent=True``)
    batch_status  int64   (B,)      with batch correction: 1 training batch, 2 unseen batch estimated from
                                    the request, 0 unseen batch passed through uncorrected

The batch axis is dynamic. The sidecar ``model.json`` next to ``model.onnx`` carries the input contract
(:class:`~genexflow.bundle.BundleInfo`: gene order, value type, label names, covariate encoding, batch
levels), the ONNX input/output specs and the sha256 of the exact ONNX bytes; the registry copies it into
the MLflow model signature/metadata, the Triton repository builder derives ``config.pbtxt`` from it, and
clients use it to build requests.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genexflow import __version__
from genexflow.bundle import BundleInfo, load_bundle, module_from_state
from genexflow.errors import InputError

SIDECAR_NAME = "model.json"
ONNX_NAME = "model.onnx"
SIDECAR_FORMAT = "genexflow-serving/1"

_ONNX_DTYPES = {1: "float32", 7: "int64", 11: "float64", 6: "int32", 10: "float16"}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class TensorSpec:
    """One graph input or output. ``shape`` uses -1 for dynamic axes (the batch axis is always -1)."""

    name: str
    dtype: str  # numpy dtype name: float32 | int64
    shape: list[int]


@dataclass
class ServingArtifact:
    """What :func:`export_onnx_artifact` wrote: the graph, its sidecar and their contract."""

    onnx_path: Path
    sidecar_path: Path
    sha256: str
    info: BundleInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.onnx_path.parent

    def sidecar(self) -> dict[str, Any]:
        return json.loads(self.sidecar_path.read_text())


def onnx_io(path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec], int]:
    """Inputs, outputs and default-domain opset of an ONNX file (shapes: -1 for symbolic dims)."""
    # lazy: onnx is only needed for export
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return TensorSpec(v.name, _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), dims)

    inits = {i.name for i in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in inits]
    outputs = [spec(v) for v in model.graph.output]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return inputs, outputs, opset


class ServingModule:
    """Factory for the end-to-end ``nn.Module`` (kept as a function so torch is imported lazily)."""

    @staticmethod
    def build(preprocess: Any, model: Any, task: str, *, use_covariates: bool, use_batch: bool,
              preprocess_takes_covariates: bool = False, include_latent: bool = False,
              target_mean: float = 0.0, target_std: float = 1.0, batch_status: bool = False) -> Any:
        """Wrap ``preprocess`` (``preprocess(x, batch_index=..., covariates=...)``: raw (B, G_in) ->
        (B, G_out)) and ``model`` (``model(x, covariates)`` -> logits, or a tuple/dict/NamedTuple carrying
        ``logits`` and ``latent``) into one module: softmax for classification; for regression the
        standardized output is mapped back with ``target_std`` / ``target_mean`` as training predicts.

        The wrapped module's ``forward`` takes only the inputs the graph needs, in the order
        expression, covariates, batch_index. ``batch_status`` adds the last output, ``preprocess.batch_status
        (batch_index)``: how each row's batch was corrected (1 training batch, 2 an unseen batch estimated
        from the request, 0 an unseen batch passed through uncorrected).
        """
        class _Serving(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.preprocess = preprocess
                self.model = model

            def _run(self, expression, covariates, batch_index):
                x = expression
                if self.preprocess is not None:
                    kw = {}
                    if use_batch:
                        kw["batch_index"] = batch_index
                    if preprocess_takes_covariates:
                        kw["covariates"] = covariates
                    x = self.preprocess(expression, **kw)
                out = self.model(x, covariates if use_covariates else None)
                logits, latent = _split_output(out)
                if task == "classification":
                    y = torch.softmax(logits, dim=-1)
                else:
                    y = logits.reshape(logits.shape[0], -1)[:, :1] * target_std + target_mean
                outs = [y] + ([latent] if include_latent else [])
                if batch_status:
                    outs.append(self.preprocess.batch_status(batch_index))
                return tuple(outs) if len(outs) > 1 else y

        # Distinct forward signatures so the exported graph has exactly the inputs it uses.
        if use_covariates and use_batch:
            class M(_Serving):
                def forward(self, expression, covariates, batch_index):
                    return self._run(expression, covariates, batch_index)
        elif use_covariates:
            class M(_Serving):
                def forward(self, expression, covariates):
                    return self._run(expression, covariates, None)
        elif use_batch:
            class M(_Serving):
                def forward(self, expression, batch_index):
                    return self._run(expression, _empty_cov(expression), batch_index)
        else:
            class M(_Serving):
                def forward(self, expression):
                    return self._run(expression, _empty_cov(expression), None)
        return M().eval()


def _empty_cov(expression):
    return expression[:, :0]


def _split_output(out: Any) -> tuple[Any, Any]:
    """(logits, latent) from a tensor, tuple, dict or dataclass model output."""
    if isinstance(out, torch.Tensor):
        return out, None
    if isinstance(out, dict):
        return out.get("logits", out.get("output")), out.get("latent", out.get("z"))
    if hasattr(out, "logits"):  # PathwayNetOutput (a NamedTuple) or a dataclass
        return out.logits, getattr(out, "latent", None)
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out.output, getattr(out, "latent", None)


def export_graph(module: Any, feeds: dict[str, np.ndarray], path: str | Path, output_names: list[str], *,
                 opset: int = 17, atol: float = 1e-4) -> Path:
    """The one ONNX export of genexflow: ``module(*feeds.values())`` -> ``path`` with a dynamic batch axis on
    every input and output, checked against torch in onnxruntime.

    Parameters
    ----------
    module : torch.nn.Module
        Exported in eval mode (its training flag is restored afterwards).
    feeds : dict of input name -> ndarray
        The graph's inputs in ``forward`` order, used for tracing and for the parity check.
    output_names : list of str
    opset : int
        ONNX opset (>= 17).
    atol : float
        Max abs difference allowed between torch and onnxruntime on ``feeds`` (raises otherwise).

    Notes
    -----
    The TorchScript-based exporter (``dynamo=False``) is used: it needs no onnxscript and keeps the
    edge-list message passing exact (repeated scatter targets are summed).
    """
    if opset < 17:
        raise InputError(f"opset must be >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(feeds)
    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(path), input_names=names, output_names=list(output_names),
                dynamic_axes={n: {0: "batch"} for n in names + list(output_names)}, opset_version=opset,
                dynamo=False, do_constant_folding=True,
            )
            expected = module(*args)
    finally:
        module.train(was_training)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    got = run_onnx(path, feeds)
    for name, e in zip(output_names, expected, strict=True):
        diff = float(np.nanmax(np.abs(e.numpy() - got[name]))) if e.numel() else 0.0
        if not diff <= atol:
            raise InputError(f"ONNX export of {name!r} disagrees with torch (max abs diff {diff:.3g} > {atol})")
    return path


def export_onnx_artifact(
    module: Any,
    info: BundleInfo,
    out_dir: str | Path,
    *,
    use_covariates: bool | None = None,
    use_batch: bool | None = None,
    include_latent: bool = False,
    batch_status: bool = False,
    preprocessing_meta: dict[str, Any] | None = None,
    example: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    atol: float = 1e-4,
) -> ServingArtifact:
    """Export an end-to-end serving ``module`` to ``out_dir/model.onnx`` + ``out_dir/model.json``.

    Parameters
    ----------
    module : torch.nn.Module
        ``forward(expression[, covariates][, batch_index])`` in that order (see :meth:`ServingModule.build`).
    info : BundleInfo
        The input contract; ``len(info.input_genes)`` is G_in, ``info.n_covariates`` is C.
    use_covariates, use_batch : bool, optional
        Which optional inputs ``module.forward`` takes (default: C > 0; ``info.batch_column`` is set).
    example : dict of name -> ndarray, optional
        Inputs used for tracing and for the torch-vs-onnxruntime check (default: 8 random rows).
    atol : float
        Max abs difference allowed between torch and onnxruntime on ``example`` (raises otherwise).

    Returns
    -------
    ServingArtifact
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    use_covariates = info.n_covariates > 0 if use_covariates is None else use_covariates
    use_batch = bool(info.batch_column) if use_batch is None else use_batch
    names = ["expression"] + (["covariates"] if use_covariates else []) + (["batch_index"] if use_batch else [])
    out_name = "probabilities" if info.task == "classification" else "prediction"
    out_names = [out_name] + (["latent"] if include_latent else []) + (["batch_status"] if batch_status else [])
    if example is None:
        example = example_inputs(info, 8, use_covariates=use_covariates, use_batch=use_batch)
    onnx_path = export_graph(module, {n: example[n] for n in names}, out_dir / ONNX_NAME, out_names, opset=opset,
                             atol=atol)
    inputs, outputs, opset_used = onnx_io(onnx_path)
    if [i.name for i in inputs] != names:
        raise InputError(f"exported graph has inputs {[i.name for i in inputs]}, expected {names}: "
                         "an input is unused by the module (check use_covariates/use_batch)")
    artifact = ServingArtifact(
        onnx_path=onnx_path, sidecar_path=out_dir / SIDECAR_NAME, sha256=sha256_file(onnx_path), info=info,
        inputs=inputs, outputs=outputs, opset=opset_used, preprocessing=preprocessing_meta or {},
    )
    write_sidecar(artifact)
    return artifact


def example_inputs(info: BundleInfo, n: int, *, use_covariates: bool = True, use_batch: bool = True,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible random inputs of the right shapes/dtypes (positive values: counts-like or log-like)."""
    rng = np.random.default_rng(seed)
    g = len(info.input_genes)
    if info.value_type == "counts":
        x = rng.poisson(20.0, size=(n, g)).astype(np.float32)
    else:
        x = rng.gamma(2.0, 2.0, size=(n, g)).astype(np.float32)
    feeds = {"expression": x}
    if use_covariates:
        feeds["covariates"] = rng.normal(size=(n, info.n_covariates)).astype(np.float32)
    if use_batch:
        levels = max(1, len(info.batch_levels))
        feeds["batch_index"] = rng.integers(0, levels, size=n).astype(np.int64)
    return feeds


def write_sidecar(artifact: ServingArtifact) -> Path:
    doc = {
        "format": SIDECAR_FORMAT,
        "onnx": {
            "file": artifact.onnx_path.name, "sha256": artifact.sha256, "opset": artifact.opset,
            "inputs": [asdict(s) for s in artifact.inputs], "outputs": [asdict(s) for s in artifact.outputs],
        },
        "bundle": json.loads(artifact.info.to_json()),
        "preprocessing": artifact.preprocessing,
        "exported_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "genexflow_version": __version__,
    }
    artifact.sidecar_path.write_text(json.dumps(doc, indent=1, default=str))
    return artifact.sidecar_path


def load_artifact(folder: str | Path, verify: bool = True) -> ServingArtifact:
    """Read ``model.onnx`` + ``model.json`` from ``folder``; with ``verify`` refuse a sha256 mismatch."""
    folder = Path(folder)
    side = folder / SIDECAR_NAME
    if not side.exists() or not (folder / ONNX_NAME).exists():
        raise InputError(f"{folder}: not a genexflow serving artifact (needs {ONNX_NAME} and {SIDECAR_NAME}); "
                         "create one with `genexflow export`")
    doc = json.loads(side.read_text())
    if doc.get("format") != SIDECAR_FORMAT:
        raise InputError(f"{side}: unknown sidecar format {doc.get('format')!r}")
    onnx_path = folder / doc["onnx"]["file"]
    sha = doc["onnx"]["sha256"]
    if verify:
        actual = sha256_file(onnx_path)
        if actual != sha:
            raise InputError(f"{onnx_path}: sha256 {actual[:12]}… differs from its sidecar ({sha[:12]}…); "
                             "the artifact was modified after export")
    b = dict(doc["bundle"])
    info = BundleInfo.from_json(json.dumps(b))
    return ServingArtifact(
        onnx_path=onnx_path, sidecar_path=side, sha256=sha, info=info,
        inputs=[TensorSpec(**s) for s in doc["onnx"]["inputs"]],
        outputs=[TensorSpec(**s) for s in doc["onnx"]["outputs"]],
        opset=int(doc["onnx"].get("opset", 0)), preprocessing=doc.get("preprocessing", {}),
    )


def run_onnx(path: str | Path, feeds: dict[str, np.ndarray], threads: int = 1) -> dict[str, np.ndarray]:
    """One onnxruntime run (CPU); returns ``{output name: array}``."""
    sess = ort_session(path, threads)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def ort_session(path: str | Path, threads: int = 1, arena: bool = True) -> Any:
    """An onnxruntime CPU session with a fixed thread count (predictable on shared machines).

    ``arena=False`` returns activation memory after each run (bounded RSS for long streaming jobs).
    """
    # lazy: onnxruntime is only needed to run exported graphs
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = arena
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_bundle(bundle_dir: str | Path, out_dir: str | Path | None = None, *, include_latent: bool = False,
                  opset: int = 17, atol: float = 1e-4) -> ServingArtifact:
    """Export a trained model bundle (``genexflow.bundle``) to ``out_dir`` (default: the bundle folder).

    Builds ``PreprocessingPipeline.to_torch()`` + the network from ``model.pt`` and exports them as one graph
    (raw expression + covariates + batch index -> probabilities / prediction [+ latent]). The covariates
    input feeds both the model and ComBat (training fits both encodings on the same columns and rows).
    """

    info, pre, state = load_bundle(bundle_dir)
    model = module_from_state(state)
    pre_module = pre.to_torch() if pre is not None else None
    takes_cov = bool(getattr(pre_module, "takes_covariates", False))
    use_batch = bool(getattr(pre_module, "takes_batch", False))
    if use_batch and list(map(str, getattr(pre, "batch_levels_", info.batch_levels))) != list(info.batch_levels):
        raise InputError("the preprocessing's batch levels differ from bundle.json's; re-save the bundle")
    if takes_cov:
        specs = [asdict(c) for c in getattr(pre, "covariate_specs_", [])]
        if specs != [asdict(c) for c in info.covariates]:
            raise InputError("ComBat's covariate encoding differs from the model's (bundle.json covariates); "
                             "the single `covariates` graph input cannot feed both")
    use_cov = info.n_covariates > 0
    ex = info.extra or {}
    status = use_batch and hasattr(pre_module, "batch_status")
    module = ServingModule.build(
        pre_module, model, info.task, use_covariates=use_cov, use_batch=use_batch,
        preprocess_takes_covariates=takes_cov, include_latent=include_latent,
        target_mean=float(ex.get("target_mean", 0.0) or 0.0), target_std=float(ex.get("target_std", 1.0) or 1.0),
        batch_status=status,
    )
    meta = {"pipeline": repr(pre), "sha256": info.preprocessing_sha256, "n_genes_in": len(info.input_genes),
            "n_genes_out": len(getattr(pre, "genes_out_", [])), "batch_corrected": use_batch,
            "combat_covariates": takes_cov, "architecture": ex.get("architecture", ""),
            "unseen_batch_min_samples": int(getattr(pre_module, "unseen_min_samples", 0) or 0)}
    return export_onnx_artifact(
        module, info, out_dir or bundle_dir, use_covariates=use_cov, use_batch=use_batch,
        include_latent=include_latent, batch_status=status, preprocessing_meta=meta, opset=opset, atol=atol,
    )
