"""Compile the genexflow pipelines to KFP IR YAML, validate compiled specs, find the checked-in ones.

Two targets per pipeline:

``portable``  (``<name>.yaml``)      the plain IR: runs on any KFP backend and with kfp.local; the monitoring
                                     pipeline retrains through the nested training pipeline.
``cluster``   (``<name>.k8s.yaml``)  the IR plus a kfp-kubernetes platform spec (PVC, Secrets as env, GPU
                                     requests, node selector + tolerations, CUDA image for training); the
                                     monitoring pipeline retrains by submitting a separate training run.

The checked-in specs live in ``genexflow/pipelines/compiled/`` and are compiled with the default image
names; ``tests/test_pipelines_compile.py`` fails when one is stale (``genexflow pipeline compile`` rewrites
them).
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from kfp import compiler, components
from kfp.pipeline_spec import pipeline_spec_pb2

from genexflow.components import _base
from genexflow.errors import InputError
from genexflow.pipelines.kubernetes import ClusterSettings, Platform

PIPELINES = {
    "training": "genexflow.pipelines.training",
    "batch-inference": "genexflow.pipelines.batch_inference",
    "monitoring": "genexflow.pipelines.monitoring",
}
TARGETS = ("portable", "cluster")
#: Components whose executor runs the CUDA image on a GPU cluster.
GPU_COMPONENTS = ("train",)


def compiled_dir() -> Path:
    """Folder of the checked-in compiled specs (inside the installed package)."""
    return Path(__file__).resolve().parent / "compiled"


def spec_filename(name: str, target: str = "portable") -> str:
    _check(name, target)
    return f"{name}.yaml" if target == "portable" else f"{name}.k8s.yaml"


def _check(name: str, target: str) -> None:
    if name not in PIPELINES:
        raise InputError(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}")
    if target not in TARGETS:
        raise InputError(f"unknown compile target {target!r}; choose portable or cluster")


def build(name: str, target: str = "portable", settings: Any = None) -> Any:
    """Build the pipeline ``name`` for ``target`` (a kfp GraphComponent)."""
    _check(name, target)
    module = importlib.import_module(PIPELINES[name])
    platform = Platform((settings or ClusterSettings()) if target == "cluster" else None)
    return module.build(platform)


def compile_pipeline(
    name: str,
    path: str | Path,
    *,
    target: str = "portable",
    settings: Any = None,
    base_image: str | None = None,
    gpu_image: str | None = None,
) -> Path:
    """Compile one pipeline to ``path`` (IR YAML; with a platform spec for ``target="cluster"``).

    ``base_image`` / ``gpu_image`` override the image of every executor (default: the names the components
    were built with, from ``GENEXFLOW_BASE_IMAGE`` / ``GENEXFLOW_GPU_IMAGE``).
    """
    pipeline = build(name, target, settings)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(path))
    use_gpu_image = target == "cluster" and getattr(settings, "use_gpu_image", True)
    _set_images(path, base_image or _base.BASE_IMAGE,
                (gpu_image or _base.GPU_IMAGE) if use_gpu_image else None)
    validate_spec(path)
    return path


def compile_all(out_dir: str | Path | None = None, *, base_image: str | None = None,
                gpu_image: str | None = None, settings: Any = None) -> list[Path]:
    """Compile every pipeline for both targets into ``out_dir`` (default: the checked-in folder)."""
    out = Path(out_dir) if out_dir else compiled_dir()
    return [compile_pipeline(n, out / spec_filename(n, t), target=t, settings=settings,
                             base_image=base_image, gpu_image=gpu_image)
            for n in PIPELINES for t in TARGETS]


def _set_images(path: Path, image: str, gpu_image: str | None) -> None:
    """Rewrite executor images in a compiled spec (first YAML document = the pipeline spec)."""
    docs = list(yaml.safe_load_all(path.read_text()))
    spec = docs[0]
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    for exec_name, ex in executors.items():
        container = ex.get("container")
        if not container:
            continue
        comp = exec_name.removeprefix("exec-")
        base = comp.rsplit("-", 1)[0] if comp.rsplit("-", 1)[-1].isdigit() else comp
        container["image"] = gpu_image if (gpu_image and base in GPU_COMPONENTS) else image
    path.write_text(_dump(docs))


def _dump(docs: list[dict]) -> str:
    # kfp writes a header comment and '---' between pipeline and platform spec; keep that layout
    return "---\n".join(yaml.safe_dump(d, sort_keys=True) for d in docs)


def load_spec(path: str | Path) -> tuple[Any, Any]:
    """Parse a compiled file into ``(PipelineSpec, PlatformSpec | None)`` protobuf messages."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such compiled pipeline; run `genexflow pipeline compile`")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if not docs:
        raise InputError(f"{path}: empty pipeline spec")
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(docs[0], spec)  # strict: unknown fields raise
    platform = None
    if len(docs) > 1:
        platform = pipeline_spec_pb2.PlatformSpec()
        json_format.ParseDict(docs[1], platform)
    return spec, platform


def validate_spec(path: str | Path) -> Any:
    """Check a compiled spec: valid protobuf, every task's component and executor exist, and kfp can load
    it back as a component. Returns the PipelineSpec; raises ``InputError`` otherwise."""
    spec, platform = load_spec(path)
    if not spec.pipeline_info.name:
        raise InputError(f"{path}: pipeline spec has no name")
    comps = spec.components
    execs = spec.deployment_spec.fields["executors"].struct_value.fields

    def check_dag(dag: Any, where: str) -> None:
        for tname, task in dag.tasks.items():
            ref = task.component_ref.name
            if ref not in comps:
                raise InputError(f"{path}: task {where}{tname} refers to missing component {ref}")
            comp = comps[ref]
            if comp.HasField("dag"):
                check_dag(comp.dag, f"{where}{tname}/")
            elif comp.executor_label not in execs:
                raise InputError(f"{path}: component {ref} has no executor {comp.executor_label}")

    check_dag(spec.root.dag, "")
    if platform is not None:
        k8s = platform.platforms.get("kubernetes")
        if k8s is None:
            raise InputError(f"{path}: platform spec without a kubernetes section")
        for exec_label in k8s.deployment_spec.executors:
            if exec_label not in execs:
                raise InputError(f"{path}: platform config for unknown executor {exec_label}")
    components.load_component_from_file(str(path))
    return spec


def stale_specs(folder: str | Path | None = None) -> list[str]:
    """Names of checked-in specs that differ from a fresh compile with the default images (empty: fresh)."""
    folder = Path(folder) if folder else compiled_dir()
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_all(tmp, base_image=_base.DEFAULT_BASE_IMAGE, gpu_image=_base.DEFAULT_GPU_IMAGE)
        for f in fresh:
            kept = folder / f.name
            if not kept.exists() or kept.read_text() != f.read_text():
                stale.append(f.name)
    return stale
