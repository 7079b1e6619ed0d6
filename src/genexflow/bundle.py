"""The trained-model bundle: everything a trained model needs to predict, explain, serve and be monitored.

Training writes it, the registry stores it, export turns it into one ONNX graph, serving and drift
monitoring read it. On disk::

    bundle/
      bundle.json            metadata (task, genes, labels, covariate encoding, batch levels, metrics, lineage)
      preprocessing.pkl      the fitted preprocessing pipeline (genexflow.preprocessing.PreprocessingPipeline):
                             the exact bytes written when it was fitted; bundle.json records their sha256
      model.pt               {"config": PathwayNetConfig as dict, "state_dict": ..., "extra": {...}}
      model.onnx             optional: end-to-end graph (raw expression + covariates + batch -> output)
      reference/             optional: reference profile for drift monitoring

The input contract of a bundle is the RAW expression matrix in ``input_genes`` order (same value type as
training), the sample-sheet covariates listed in ``covariates`` and, when the preprocessing corrects batches,
the batch column.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle  # nosec B403 - bundles are produced by genexflow itself and verified by sha256 before deploy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from genexflow.errors import InputError

FORMAT_VERSION = 1


@dataclass
class CovariateSpec:
    """How one sample-sheet column becomes model input: numeric (standardized) or categorical (one-hot)."""

    name: str
    kind: str  # "numeric" | "categorical"
    mean: float = 0.0
    std: float = 1.0
    categories: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return 1 if self.kind == "numeric" else len(self.categories)


def fit_covariates(samples: pd.DataFrame, names: list[str]) -> list[CovariateSpec]:
    """Learn covariate encodings on training samples (numeric: mean/std; else one-hot categories)."""
    specs = []
    for name in names:
        if name not in samples.columns:
            raise InputError(f"covariate {name!r} is not a sample-sheet column ({', '.join(samples.columns)})")
        col = samples[name]
        if pd.api.types.is_numeric_dtype(col) and col.nunique() > 2:
            v = col.astype(float)
            specs.append(CovariateSpec(name, "numeric", float(np.nanmean(v)), float(np.nanstd(v) or 1.0)))
        else:
            specs.append(CovariateSpec(name, "categorical", categories=sorted(map(str, col.dropna().unique()))))
    return specs


def encode_covariates(samples: pd.DataFrame, specs: list[CovariateSpec]) -> np.ndarray:
    """Covariate matrix (n_samples, sum of widths), float32. Missing numeric -> training mean (0 after
    standardization); unknown or missing categories -> all-zero one-hot."""
    n = len(samples)
    blocks = []
    for s in specs:
        if s.name not in samples.columns:
            raise InputError(f"sample sheet lacks covariate column {s.name!r} that the model was trained with")
        col = samples[s.name]
        if s.kind == "numeric":
            v = pd.to_numeric(col, errors="coerce").to_numpy(float)
            blocks.append(np.nan_to_num((v - s.mean) / s.std)[:, None])
        else:
            vals = col.astype(str).to_numpy()
            blocks.append((vals[:, None] == np.array(s.categories)[None, :]).astype(np.float32))
    if not blocks:
        return np.zeros((n, 0), np.float32)
    return np.concatenate(blocks, axis=1).astype(np.float32)


@dataclass
class BundleInfo:
    """``bundle.json``: what a consumer must know to feed and read the model."""

    task: str  # "classification" | "regression"
    label_column: str
    class_names: list[str]
    input_genes: list[str]
    value_type: str
    covariates: list[CovariateSpec] = field(default_factory=list)
    batch_column: str | None = None
    batch_levels: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: sha256 of ``preprocessing.pkl`` as written when the preprocessing was fitted (empty: older bundles)
    preprocessing_sha256: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def n_covariates(self) -> int:
        return sum(c.width for c in self.covariates)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> BundleInfo:
        d = json.loads(text)
        d["covariates"] = [CovariateSpec(**c) for c in d.get("covariates", [])]
        return cls(**d)

    def batch_index(self, samples: pd.DataFrame) -> np.ndarray:
        """The graph's ``batch_index`` per sample (int64, :func:`batch_codes`): the training batch level's
        position, ``-1 - k`` for the k-th unseen batch of these samples; zeros without a batch column."""
        if not self.batch_column:
            return np.zeros(len(samples), np.int64)
        if self.batch_column not in samples.columns:
            raise InputError(f"sample sheet lacks the batch column {self.batch_column!r}")
        return batch_codes(samples[self.batch_column], self.batch_levels)


#: The served graph's ``batch_status`` values (0, 1, 2) as the predictions table's ``batch_correction``.
BATCH_STATUS_LABELS = ("uncorrected (unseen batch, too few samples)", "training batch", "estimated (unseen batch)")


def batch_codes(labels: Any, levels: list[str]) -> np.ndarray:
    """Batch labels as the serving graph's ``batch_index``: the position of a training batch in ``levels``,
    and for batches unseen in training ``-1 - k``, k numbering the distinct unseen labels in sorted order
    (so rows of the same new batch share a code and the graph can estimate that batch from them)."""
    lab = np.asarray(pd.Series(labels).astype(str).to_numpy(), dtype=str)
    lookup = {b: i for i, b in enumerate(map(str, levels))}
    idx = np.array([lookup.get(b, -1) for b in lab], dtype=np.int64)
    unseen = sorted(set(lab[idx < 0].tolist()))
    new = {b: -1 - k for k, b in enumerate(unseen)}
    for b, code in new.items():
        idx[lab == b] = code
    return idx


PREPROCESSING_FILE = "preprocessing.pkl"


@dataclass(frozen=True)
class PickledPreprocessing:
    """A fitted preprocessing pipeline as the exact bytes written when it was fitted, and their sha256.

    Pickling the same pipeline again after a load does not always give the same bytes, so the bytes are
    what travels: the ``preprocess-fit`` step writes them, training loads the pipeline from them and the
    bundle stores them unchanged; the sha256 recorded at fit time is then the bundle's, the ONNX sidecar's,
    the registered version's and the served artifact's.
    """

    data: bytes

    @classmethod
    def of(cls, pipeline: Any) -> PickledPreprocessing:
        return cls(pickle.dumps(pipeline, protocol=pickle.HIGHEST_PROTOCOL))

    @classmethod
    def read(cls, path: str | Path) -> PickledPreprocessing:
        return cls(Path(path).read_bytes())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def load(self) -> Any:
        return pickle.loads(self.data)  # nosec B301 - our own artifact, identified by its sha256

    def write(self, path: str | Path) -> Path:
        """Write the bytes atomically (a temporary file renamed over ``path``)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(self.data)
        os.replace(tmp, path)
        return path


def save_bundle(folder: str | Path, info: BundleInfo, preprocessing: Any, model_state: dict,
                pickled: PickledPreprocessing | None = None) -> Path:
    """Write a bundle folder. ``model_state`` is ``{"config": dict, "state_dict": ..., ...}``.

    ``pickled`` (the bytes ``preprocessing`` was loaded from) is stored unchanged; without it the pipeline
    is pickled here. ``info.preprocessing_sha256`` is set to the sha256 of the stored bytes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pickled = pickled or PickledPreprocessing.of(preprocessing)
    pickled.write(folder / PREPROCESSING_FILE)
    info.preprocessing_sha256 = pickled.sha256
    (folder / "bundle.json").write_text(info.to_json())
    torch.save(model_state, folder / "model.pt")
    return folder


def load_bundle(folder: str | Path) -> tuple[BundleInfo, Any, dict]:
    """Read ``(info, preprocessing, model_state)`` from a bundle folder; refuses a ``preprocessing.pkl``
    whose sha256 differs from the one ``bundle.json`` records."""
    folder = Path(folder)
    if not (folder / "bundle.json").exists():
        raise InputError(f"{folder}: not a genexflow model bundle (no bundle.json)")
    info = BundleInfo.from_json((folder / "bundle.json").read_text())
    pickled = PickledPreprocessing.read(folder / PREPROCESSING_FILE)
    if info.preprocessing_sha256 and pickled.sha256 != info.preprocessing_sha256:
        raise InputError(f"{folder / PREPROCESSING_FILE}: sha256 {pickled.sha256[:12]}… differs from bundle.json's "
                         f"{info.preprocessing_sha256[:12]}…; the preprocessing was replaced after training")
    pre = pickled.load()
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)  # nosec B614 - own bundle, sha256-checked
    return info, pre, state


def module_from_state(state: dict) -> Any:
    """The one place that rebuilds the trained network from ``model.pt`` contents
    (``{"config", "state_dict", ...}``), in eval mode."""
    # lazy: genexflow.models exports through genexflow.export, which imports this module
    from genexflow.models import PathwayNet

    buf = io.BytesIO()
    torch.save({"config": state["config"], "state_dict": state["state_dict"]}, buf)
    buf.seek(0)
    return PathwayNet.load(buf).eval()


def align_genes(frame: pd.DataFrame, input_genes: list[str], max_missing_fraction: float = 0.2) -> tuple[np.ndarray, list[str]]:
    """Reorder a user's samples x genes frame to the training gene order.

    Absent genes become NaN (the preprocessing fills them as training would); refuses with a clear error
    when more than ``max_missing_fraction`` of the training genes are absent. Returns the matrix and the
    list of missing genes.
    """
    cols = pd.Index(frame.columns.astype(str))
    missing = [g for g in input_genes if g not in set(cols)]
    if len(missing) > max_missing_fraction * len(input_genes):
        raise InputError(
            f"{len(missing)} of {len(input_genes)} model genes are absent from the input "
            f"(e.g. {', '.join(missing[:5])}); more than {max_missing_fraction:.0%} missing — "
            "check the gene ID type (harmonize with `genexflow ingest`)"
        )
    X = frame.reindex(columns=input_genes).to_numpy(np.float32)
    return X, missing
