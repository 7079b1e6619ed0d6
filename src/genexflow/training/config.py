"""Typed configuration of a training run (optimizer, schedule, losses, augmentation, validation).

The model's own hyper-parameters (hidden sizes, layers, dropout) live in ``model`` as a plain dict passed
to the model config, and preprocessing options in ``preprocessing``; both are logged to MLflow verbatim.

:meth:`TrainConfig.from_dict` (config files, ``--set``, KFP parameters) checks and coerces every field's
type with pydantic; ``--set`` strings go through the one override parser (:mod:`genexflow.overrides`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import pydantic

from genexflow import overrides
from genexflow.errors import InputError

TASKS = ("classification", "regression")

#: Model sizes by name (``TrainConfig(model=MODEL_PRESETS["small"])``, ``genexflow train --preset small``).
#: ``tiny`` is for smoke tests, ``small`` suits cohorts of tens to hundreds of samples on a CPU; the
#: empty ``default`` keeps the PathwayNetConfig defaults.
MODEL_PRESETS: dict[str, dict] = {
    "tiny": {"gcn_dim": 4, "gcn_layers": 1, "readout_dims": [32, 16], "d_model": 16, "n_heads": 2,
             "transformer_layers": 1, "ff_dim": 32, "ae_hidden": 32, "latent_dim": 8, "head_hidden": 32},
    "small": {"gcn_dim": 8, "gcn_layers": 2, "readout_dims": [128, 64], "d_model": 32, "n_heads": 4,
              "transformer_layers": 1, "ff_dim": 64, "ae_hidden": 128, "latent_dim": 16, "head_hidden": 64},
    "default": {},
}

#: Genes the fold's preprocessing keeps by default: the most variable of the training rows (after
#: normalization, before scaling; label-free). ``preprocessing={"max_genes": None}`` keeps them all.
DEFAULT_MAX_GENES = 2000


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained and validated.

    Parameters
    ----------
    task : {"classification", "regression"}
    label : str
        Sample-sheet column to predict.
    batch_column : str, optional
        Batch column (ComBat in preprocessing, grouping for leave-one-batch-out).
    combat : bool
        Correct batches with ComBat when a batch column is given. False keeps the batch column for
        grouping (leave-one-batch-out), plots and monitoring only. Worth turning off when held-out batches
        hold a single class: estimating an unseen batch's location from its own samples then removes the
        biology along with the batch.
    covariates : list of str
        Sample-sheet columns known at inference, fed to ComBat (as protected covariates) and to the model.
        Never the label.
    epochs : int
        Maximum epochs; early stopping usually ends sooner.
    batch_size : int
        Global mini-batch size (split across processes under DDP).
    lr, weight_decay : float
        AdamW learning rate and decoupled weight decay.
    warmup_fraction : float
        Fraction of the total optimizer steps spent in linear warm-up before the cosine decay.
    grad_clip : float
        Max global gradient norm (0 disables clipping).
    patience : int
        Epochs without validation-loss improvement before stopping; the best weights are restored.
    min_delta : float
        Improvement smaller than this does not reset the patience counter.
    val_fraction : float
        Fraction of the training rows held out (stratified) for early stopping.
    class_weighted : bool
        Weight cross-entropy by inverse class frequency of the training rows.
    recon_weight : float
        Weight of the autoencoder reconstruction loss added to the task loss.
    noise_std : float
        SD of Gaussian noise added to the (scaled) expression during training.
    gene_dropout : float
        Probability of zeroing each gene's input during training.
    seed : int
        Seeds Python, NumPy and torch (and the split shuffles).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.
    deterministic : bool
        Ask torch for deterministic kernels (warn-only where none exists).
    num_threads : int
        torch intra-op CPU threads (0 keeps torch's default). Small models train faster on 1 thread,
        especially on a busy machine.
    model : dict
        Keyword arguments for the model config (e.g. ``{"hidden": 64, "n_attention_layers": 1}``).
    preprocessing : dict
        Keyword arguments for the preprocessing config (`max_genes` defaults to :data:`DEFAULT_MAX_GENES`).
    gene_sets : str
        Shipped collection (``kegg``, ``go_bp``, ``progeny``) or a GMT path for the priors.
    gene_set_min_size : int
        Sets with fewer members among the kept genes are dropped.
    wide_init : {"auto", "l2", "elasticnet", "none"}
        How the model's wide (gene-level linear) path starts when the model has one
        (``model.gene_linear``): from a penalized GLM fitted on the training rows, with the deep branches
        learning the residual (see :mod:`genexflow.training.wide`), or from zeros (``"none"``).
    wide_trainable : bool
        Keep training the GLM-initialized wide path with the network (default: frozen).
    batch_sizes : list of int
        Batch-size sweep before training (empty: off): every size is cross-validated with the learning
        rate scaled from (``batch_size``, ``lr``) by ``lr_scaling``, and the largest size within 0.01 of
        the best score is used (see :func:`genexflow.training.hpo.batch_size_sweep`).
    lr_scaling : {"sqrt", "linear"}
        Learning-rate scaling rule of the sweep.
    init_from : str, optional
        Folder of a pretrained encoder (``genexflow pretrain``), or its registered MLflow version
        (``models:/genexflow-encoder/1`` or ``models:/genexflow-encoder@ALIAS``, downloaded once per run from
        the run's tracking server, so pipeline steps can use it): the autoencoder branch starts from it
        (genes matched by name; the model's ``ae_hidden`` / ``latent_dim`` follow the encoder) and the
        whole network is fine-tuned. See :mod:`genexflow.training.pretrain`.
    """

    task: str = "classification"
    label: str = "label"
    batch_column: str | None = None
    combat: bool = True
    covariates: list[str] = field(default_factory=list)
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    patience: int = 10
    min_delta: float = 1e-4
    val_fraction: float = 0.15
    class_weighted: bool = False
    recon_weight: float = 0.1
    noise_std: float = 0.0
    gene_dropout: float = 0.0
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    num_threads: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    gene_sets: str = "kegg"
    gene_set_min_size: int = 5
    wide_init: str = "auto"
    wide_trainable: bool = False
    batch_sizes: list[int] = field(default_factory=list)
    lr_scaling: str = "sqrt"
    init_from: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> TrainConfig:
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}; use classification or regression")
        if self.label in (self.covariates or []):
            raise InputError(f"the label {self.label!r} cannot also be a covariate (it is unknown at inference)")
        if self.batch_column and self.batch_column == self.label:
            raise InputError(f"the label {self.label!r} cannot be the batch column")
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.patience >= 1, "patience must be >= 1"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
            (self.recon_weight >= 0, "recon_weight must be >= 0"),
            (self.noise_std >= 0, "noise_std must be >= 0"),
            (0 <= self.gene_dropout < 1, "gene_dropout must be in [0, 1)"),
            (self.lr_scaling in ("sqrt", "linear"), f"lr_scaling must be sqrt or linear, not {self.lr_scaling!r}"),
            (all(int(b) >= 1 for b in self.batch_sizes), "batch_sizes must be positive"),
            (self.wide_init in ("auto", "l2", "elasticnet", "none"),
             f"wide_init must be auto, l2, elasticnet or none, not {self.wide_init!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"invalid training config: {msg}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping, checking names and coercing types (``"1e-3"`` -> 0.001, ``15.0`` -> 15);
        a bad name or value raises :class:`InputError` naming the field."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        try:
            return _adapter().validate_python(dict(d))
        except pydantic.ValidationError as exc:
            for e in exc.errors():  # validate()'s own message, as it is
                if isinstance(e.get("ctx", {}).get("error"), InputError):
                    raise e["ctx"]["error"] from None
            raise InputError("invalid training config: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                for e in exc.errors())) from None

    def with_(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed; ``model`` / ``preprocessing`` dicts are merged, not replaced."""
        for key in ("model", "preprocessing"):
            if key in changes:
                changes[key] = {**getattr(self, key), **changes[key]}
        return replace(self, **changes)

    def flat_params(self) -> dict[str, Any]:
        """Flat ``{name: value}`` for MLflow params (``model.hidden``, ``preprocessing.combat``...)."""
        out: dict[str, Any] = {}
        for k, v in self.to_dict().items():
            if isinstance(v, dict):
                out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            elif isinstance(v, list):
                out[k] = ",".join(map(str, v))
            else:
                out[k] = v
        return out


@functools.cache
def _adapter() -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(TrainConfig)


#: The TrainConfig fields that hold a dict of options (``model.d_model=32``).
NESTED_FIELDS = ("model", "preprocessing")


def parse_overrides(items: Iterable[str] | None) -> dict[str, Any]:
    """``--set`` strings (``["lr=1e-3", "model.d_model=32"]``) -> nested TrainConfig overrides, through the
    one override parser (:func:`genexflow.overrides.parse_overrides`); dotted keys only under
    :data:`NESTED_FIELDS`."""
    return overrides.parse_overrides(items, nested=NESTED_FIELDS)
