"""The container image names of the project, in one place.

``make images`` (``infra/scripts/build_images.py``) tags what it builds with these names, the KFP components
(:mod:`genexflow.components._base`) and so the compiled pipeline specs reference them, and the Kubernetes
manifests pin the same tags (``infra/k8s/*/kustomization.yaml``; ``tests/test_infra_images.py`` checks all
three agree). Override the component images at compile time with ``GENEXFLOW_BASE_IMAGE`` /
``GENEXFLOW_GPU_IMAGE``.
"""

from __future__ import annotations

from genexflow import __version__

REGISTRY = "ghcr.io/genexflow"
#: The MLflow server image is versioned by the MLflow release it ships (infra/docker/mlflow-requirements.txt).
MLFLOW_VERSION = "3.17.2"

COMPONENT_REPOSITORY = f"{REGISTRY}/genexflow"
COMPONENT_CPU = f"{COMPONENT_REPOSITORY}:{__version__}-cpu"
COMPONENT_CUDA = f"{COMPONENT_REPOSITORY}:{__version__}-cuda"
MLFLOW = f"{REGISTRY}/mlflow:{MLFLOW_VERSION}"
#: Production serving image: NGC tritonserver (GPU, onnxruntime/TensorRT backends).
TRITON = f"{REGISTRY}/triton:{__version__}"
#: CPU serving image: the nvidia-pytriton tritonserver with the python backend (the local stack's recipe).
TRITON_CPU = f"{REGISTRY}/triton:{__version__}-cpu"

#: Dockerfile (under infra/docker/) -> image name.
DOCKERFILES = {
    "component-cpu.Dockerfile": COMPONENT_CPU,
    "component-cuda.Dockerfile": COMPONENT_CUDA,
    "mlflow.Dockerfile": MLFLOW,
    "triton.Dockerfile": TRITON,
    "triton-cpu.Dockerfile": TRITON_CPU,
}
