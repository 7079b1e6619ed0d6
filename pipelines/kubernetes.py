"""Cluster settings applied when a pipeline is compiled for Kubernetes (kfp-kubernetes platform spec).

Locally (kfp.local) and in the portable spec none of this applies. For the cluster:

* every step mounts the data PVC (raw cohorts, quarantine, Triton model repository) at ``data_mount``;
* steps that talk to MLflow or the object store get their credentials from Kubernetes Secrets as
  environment variables (``MLFLOW_TRACKING_URI``, ``AWS_ACCESS_KEY_ID`` ...), never as pipeline parameters;
* the training step requests GPUs, and training and the Triton steps (infra-validate, batch scoring) get a
  node selector and tolerations for the GPU node pool; training runs in the CUDA image;
* the retrain trigger reads the in-cluster KFP endpoint (``KFP_HOST``) and the service-account token path
  from the ``kfp-settings`` ConfigMap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kfp import kubernetes

#: Roles a task can have; pipelines tag tasks with roles, settings decide what each role gets.
ROLES = ("data", "mlflow", "object_store", "gpu", "triton", "kfp")


@dataclass
class ClusterSettings:
    """What the pipelines need from the cluster. Defaults match ``infra/k8s``."""

    data_pvc: str = "genexflow-data"
    data_mount: str = "/data"
    mlflow_secret: str = "genexflow-mlflow"
    mlflow_secret_env: dict[str, str] = field(default_factory=lambda: {
        "tracking_uri": "MLFLOW_TRACKING_URI",
        "username": "MLFLOW_TRACKING_USERNAME",
        "password": "MLFLOW_TRACKING_PASSWORD",
    })
    object_store_secret: str = "genexflow-object-store"
    object_store_secret_env: dict[str, str] = field(default_factory=lambda: {
        "access_key": "AWS_ACCESS_KEY_ID",
        "secret_key": "AWS_SECRET_ACCESS_KEY",
        "endpoint": "MLFLOW_S3_ENDPOINT_URL",
    })
    gpu_resource: str = "nvidia.com/gpu"
    gpus: int = 1
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: list[dict[str, Any]] = field(default_factory=lambda: [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ])
    kfp_config_map: str = "kfp-settings"
    kfp_config_env: dict[str, str] = field(default_factory=lambda: {
        "KFP_HOST": "KFP_HOST", "KF_PIPELINES_SA_TOKEN_PATH": "KF_PIPELINES_SA_TOKEN_PATH"})
    train_cpu: str = "4"
    train_memory: str = "16G"
    use_gpu_image: bool = True

    def apply(self, task: Any, *roles: str) -> Any:
        """Apply the settings for ``roles`` to a ``PipelineTask``; returns the task."""
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown task role(s) {sorted(unknown)}; known: {ROLES}")
        kubernetes.mount_pvc(task, pvc_name=self.data_pvc, mount_path=self.data_mount)
        if "mlflow" in roles:
            kubernetes.use_secret_as_env(task, secret_name=self.mlflow_secret,
                                         secret_key_to_env=dict(self.mlflow_secret_env))
        if "mlflow" in roles or "object_store" in roles:
            # MLflow artifacts live in the object store, so MLflow users need its credentials too
            kubernetes.use_secret_as_env(task, secret_name=self.object_store_secret,
                                         secret_key_to_env=dict(self.object_store_secret_env))
        if "kfp" in roles:
            kubernetes.use_config_map_as_env(task, config_map_name=self.kfp_config_map,
                                             config_map_key_to_env=dict(self.kfp_config_env))
        if "gpu" in roles and self.gpus > 0:
            task.set_accelerator_type(self.gpu_resource).set_accelerator_limit(self.gpus)
            task.set_cpu_request(self.train_cpu).set_memory_request(self.train_memory)
        if ("gpu" in roles or "triton" in roles) and self.gpus > 0:
            for key, value in self.gpu_node_selector.items():
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for tol in self.gpu_tolerations:
                kubernetes.add_toleration(task, **tol)
        return task


class Platform:
    """What a pipeline factory calls on every task: no-op locally, :class:`ClusterSettings` on a cluster."""

    def __init__(self, settings: ClusterSettings | None = None):
        self.settings = settings

    @property
    def cluster(self) -> bool:
        return self.settings is not None

    def __call__(self, task: Any, *roles: str) -> Any:
        if self.settings is not None:
            self.settings.apply(task, *roles)
        return task
