"""MLflow tracking of training runs: params, per-epoch metrics, dataset lineage, the fitted preprocessing, the
model (signature + input example), the environment, plots and the baseline comparison table.

The default store is embedded: ``sqlite:///<project>/.genexflow/mlflow.db`` with artifacts under
``<project>/.genexflow/mlartifacts``. ``MLFLOW_TRACKING_URI`` (or ``tracking_uri=``) points the same code at
a tracking server (``http://...``), Postgres or any other store MLflow accepts.

:class:`RunTracker` is the only place that talks to MLflow; the trainer and cross-validation call its
methods (or the no-op :class:`NullTracker`), so DDP worker ranks and tests can turn tracking off.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from genexflow import paths
from genexflow.cohort import Cohort
from genexflow.io import json_default
from genexflow.training._pyfunc import SingleInputModel
from genexflow.training.trainer import call_module, task_output

DEFAULT_EXPERIMENT = "genexflow"
_PARAM_MAX = 6000  # MLflow param values are limited (8000 chars in recent stores); stay safely below


def project_dir() -> Path:
    """The folder that holds the workspace (:func:`genexflow.paths.workspace_dir`)."""
    return paths.workspace_dir().parent


def default_tracking_uri(project: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the workspace's store (:func:`genexflow.paths.default_tracking_uri`);
    with ``project``: ``sqlite:///<project>/.genexflow/mlflow.db``."""
    if project is None:
        return paths.default_tracking_uri()
    folder = Path(project) / ".genexflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Local artifact folder next to an embedded sqlite store; ``None`` (server default) otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """Experiment id for ``name``, created (with the local artifact root for sqlite) when missing."""
    # lazy: mlflow takes seconds to import
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))
    except Exception:  # created concurrently by another process (parallel tests, DDP ranks)
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _clean_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space : / ; fold anything else to "_".
    return "".join(ch if ch.isalnum() or ch in "_-. :/" else "_" for ch in str(key))


def environment_info() -> dict[str, Any]:
    """Python, platform, key package versions, torch/CUDA devices: what reproduces the run."""
    pkgs = {}
    for name in ("genexflow", "torch", "numpy", "pandas", "scikit-learn", "scipy", "mlflow", "optuna", "captum",
                 "shap", "onnx", "onnxruntime", "torch-geometric"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "machine": platform.machine(), "packages": pkgs}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def dataset_lineage(cohort: Cohort, path: str | Path | None = None) -> dict[str, Any]:
    """Name, shape and DVC md5 of a cohort.

    The md5 is the one DVC records (``dvc add`` value, ``<md5>.dir`` for a folder) for ``path``, else
    ``cohort.meta["dvc_md5"]`` / ``meta["md5"]`` when ingestion stored it, else a content md5 of the matrix
    and sample sheet (``source: content``) so every run still pins its data.
    """
    rec: dict[str, Any] = {"name": cohort.name, "n_samples": int(cohort.n_samples), "n_genes": int(cohort.n_genes),
                           "value_type": cohort.value_type.value}
    md5 = None
    if path is not None and Path(path).exists():
        try:
            from genexflow.ingest.lineage import dvc_md5

            md5, rec["md5_source"] = dvc_md5(path), "dvc"
            rec["path"] = str(Path(path).resolve())
        except ImportError:  # ingestion's lineage helpers not installed: fall back to the content hash
            md5 = None
    if md5 is None:
        for key in ("dvc_md5", "md5"):
            if isinstance(cohort.meta.get(key), str):
                md5, rec["md5_source"] = cohort.meta[key], f"meta.{key}"
                break
    if md5 is None:
        h = hashlib.md5(usedforsecurity=False)
        h.update(np.ascontiguousarray(cohort.X).tobytes())
        h.update("\t".join(cohort.genes).encode())
        h.update(cohort.samples.to_csv().encode())
        md5, rec["md5_source"] = h.hexdigest(), "content"
    rec["md5"] = md5
    return rec


class NullTracker:
    """Does nothing; stands in for :class:`RunTracker` when tracking is off (and on DDP worker ranks)."""

    run_id: str | None = None
    active = False

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __getattr__(self, name: str):
        def _noop(*args: Any, **kwargs: Any) -> None:
            return None

        return _noop

    @contextmanager
    def child(self, run_name: str, **kwargs: Any) -> Iterator[NullTracker]:
        yield self

    def epoch_callback(self, prefix: str = ""):
        return lambda epoch, metrics: None


class RunTracker:
    """One MLflow run (optionally nested in the active one).

    Parameters
    ----------
    experiment : str
    run_name : str, optional
    tracking_uri : str, optional
        Defaults to :func:`default_tracking_uri`.
    nested : bool
        Start a child of the currently active run (HPO trials, CV folds).
    tags : dict, optional

    Examples
    --------
    >>> import tempfile
import warnings
    >>> with RunTracker(tracking_uri=f"sqlite:///{tempfile.mkdtemp()}/m.db", run_name="demo") as tr:
    ...     tr.log_params({"lr": 1e-3}); tr.log_metrics({"acc": 0.9})
    """

    active = True

    def __init__(self, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                 tracking_uri: str | None = None, nested: bool = False, tags: Mapping[str, Any] | None = None):
        self.experiment = experiment
        self.run_name = run_name
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.nested = nested
        self.tags = dict(tags or {})
        self.run_id: str | None = None
        self._run = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> RunTracker:
        # lazy: mlflow takes seconds to import
        import mlflow

        exp_id = ensure_experiment(self.experiment, self.tracking_uri)
        self._run = mlflow.start_run(experiment_id=exp_id, run_name=self.run_name, nested=self.nested,
                                     tags={k: str(v) for k, v in self.tags.items()})
        self.run_id = self._run.info.run_id
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # lazy: mlflow takes seconds to import
        import mlflow

        mlflow.end_run(status="FAILED" if exc_type is not None else "FINISHED")

    @property
    def artifact_uri(self) -> str:
        # lazy: mlflow takes seconds to import
        import mlflow

        return mlflow.get_artifact_uri()

    @contextmanager
    def child(self, run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[RunTracker]:
        """A nested run (HPO trial, fold) in the same experiment."""
        with RunTracker(self.experiment, run_name, self.tracking_uri, nested=True, tags=tags) as ch:
            yield ch

    # ------------------------------------------------------------------ scalars
    def log_params(self, params: Mapping[str, Any]) -> None:
        # lazy: mlflow takes seconds to import
        import mlflow

        clean = {}
        for k, v in params.items():
            s = json.dumps(v, default=str) if isinstance(v, dict | list | tuple) else str(v)
            clean[_clean_key(k)] = s[:_PARAM_MAX]
        for i in range(0, len(clean), 90):  # MLflow batches at most 100 params per call
            mlflow.log_params(dict(list(clean.items())[i:i + 90]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
        # lazy: mlflow takes seconds to import
        import mlflow

        clean = {_clean_key(prefix + k): float(v) for k, v in metrics.items()
                 if isinstance(v, int | float | np.floating | np.integer) and np.isfinite(v)}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        # lazy: mlflow takes seconds to import
        import mlflow

        mlflow.set_tags({_clean_key(k): str(v)[:5000] for k, v in tags.items()})

    def epoch_callback(self, prefix: str = ""):
        """A trainer callback that logs each epoch's metrics at ``step=epoch`` (``prefix`` per fold)."""

        def cb(epoch: int, metrics: Mapping[str, float]) -> None:
            self.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch, prefix=prefix)

        return cb

    # ------------------------------------------------------------------ data lineage
    def log_dataset(self, cohort: Cohort, path: str | Path | None = None, context: str = "training") -> dict:
        """Record the cohort as a run input (``mlflow.log_input``): DVC md5 as digest, shape in the tags."""
        # lazy: mlflow takes seconds to import
        import mlflow
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        lin = dataset_lineage(cohort, path)
        if lin.get("path"):
            with warnings.catch_warnings():  # several local-artifact source classes claim file paths
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(Path(lin["path"]).as_uri())
        else:  # an in-memory cohort (shipped dataset, simulator): name where it came from
            # lazy: mlflow takes seconds to import
            from mlflow.data.code_dataset_source import CodeDatasetSource

            source = CodeDatasetSource({"source": str(cohort.meta.get("source", cohort.name))})
        ds = MetaDataset(source=source, name=cohort.name, digest=str(lin["md5"])[:36])
        mlflow.log_input(ds, context=context, tags={
            "dvc_md5": str(lin["md5"]), "md5_source": lin["md5_source"],
            "shape": f"{lin['n_samples']}x{lin['n_genes']}", "value_type": lin["value_type"],
        })
        self.log_params({f"data.{k}": v for k, v in lin.items()})
        return lin

    # ------------------------------------------------------------------ artifacts
    def log_dict(self, obj: Any, path: str) -> None:
        # lazy: mlflow takes seconds to import
        import mlflow

        mlflow.log_dict(json.loads(json.dumps(obj, default=json_default)), path)

    def log_text(self, text: str, path: str) -> None:
        # lazy: mlflow takes seconds to import
        import mlflow

        mlflow.log_text(text, path)

    def log_table(self, df: pd.DataFrame, name: str) -> None:
        """A table as ``<name>.csv`` and ``<name>.md`` artifacts."""
        # lazy: mlflow takes seconds to import
        import mlflow

        mlflow.log_text(df.to_csv(index=True), f"{name}.csv")
        mlflow.log_text(markdown_table(df), f"{name}.md")

    def log_figure(self, fig: Any, path: str) -> None:
        # lazy: matplotlib is only needed for plots; mlflow takes seconds to import
        import matplotlib.pyplot as plt
        import mlflow

        mlflow.log_figure(fig, path)
        plt.close(fig)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        # lazy: mlflow takes seconds to import
        import mlflow

        mlflow.log_artifacts(str(folder), artifact_path)

    def log_preprocessing(self, pickled: Any, path: str = "preprocessing") -> None:
        """The fitted preprocessing as the exact bytes the bundle holds (a
        :class:`~genexflow.bundle.PickledPreprocessing`), and its sha256 as tag ``genexflow.preprocessing_sha256``."""
        # lazy: mlflow takes seconds to import
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(pickled.write(Path(tmp) / "preprocessing.pkl")), path)
        self.set_tags({"genexflow.preprocessing_sha256": pickled.sha256})

    def log_environment(self) -> dict:
        # lazy: mlflow takes seconds to import
        import mlflow

        env = environment_info()
        self.log_dict(env, "environment/environment.json")
        try:
            from importlib import metadata

            reqs = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"])
            mlflow.log_text("\n".join(reqs) + "\n", "environment/requirements.txt")
        except Exception:  # a broken dist-info must not fail the run
            pass
        return env

    def log_model(self, module: Any, example: tuple[np.ndarray, np.ndarray], task: str,
                  name: str = "model") -> Any:
        """Log the torch module with an inferred signature and input example.

        ``example`` is ``(expression, covariates)`` as float32 arrays: the model's (preprocessed) inputs.
        Returns the MLflow ``ModelInfo``.
        """
        # lazy: mlflow takes seconds to import
        import mlflow.pytorch
        from mlflow.models import infer_signature

        x, c = (np.asarray(a, np.float32) for a in example)
        module = module.cpu().eval()
        with torch.no_grad():
            out = task_output(call_module(module, torch.as_tensor(x), torch.as_tensor(c))).float()
            out = torch.softmax(out, 1) if task == "classification" else out

        wrapper = SingleInputModel(module, x.shape[1], c.shape[1], task)
        z = np.concatenate([x, c], axis=1)
        sig = infer_signature(z, out.numpy())
        return mlflow.pytorch.log_model(
            wrapper, name=name, signature=sig, input_example=z,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "genexflow"],
            # cloudpickle of the module (genexflow installed to load it): torch.export's pt2 costs seconds
            # per run, and the portable serving artifact is the ONNX export anyway.
            serialization_format="pickle",
        )


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (``DataFrame.to_markdown``, floats to 4 significant digits) for runs
    and benchmark reports; a named or non-default index becomes the first column."""
    d = df.reset_index() if df.index.name or not isinstance(df.index, pd.RangeIndex) else df
    return d.to_markdown(index=False, floatfmt=".4g") + "\n"
