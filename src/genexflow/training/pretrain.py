"""Label-free pretraining of the network's autoencoder branch, then fine-tuning with labels.

A denoising autoencoder (Vincent et al. 2008) is trained on all available expression, labelled or not:
the training cohort's rows plus any unlabeled cohorts on the same platform. Masking noise (a random
fraction of each sample's genes set to the gene mean, i.e. 0 after scaling) plus Gaussian noise goes in,
the clean profile is reconstructed. Its encoder has exactly the shape and parameter names of
:class:`~genexflow.models.PathwayNet`'s autoencoder branch (``encoder_ae``, ``mu``, ``decoder``), so
``TrainConfig(init_from=...)`` / ``genexflow train --init-from`` starts that branch from it: weights are
matched by gene name (the fold's kept genes; genes the encoder never saw start at zero) and the whole
network is then fine-tuned.

``genexflow pretrain`` writes the encoder (``encoder.pt`` + ``encoder.json``) and, with tracking, logs
it to MLflow and registers it as a model version (default name ``genexflow-encoder``).
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from genexflow.cohort import Cohort
from genexflow.errors import InputError

ENCODER_FILE = "encoder.pt"
META_FILE = "encoder.json"
REGISTERED_FILE = "registered.json"  # written next to an encoder downloaded from the MLflow registry


class DenoisingAutoencoder(nn.Module):
    """Gene-level autoencoder with PathwayNet's autoencoder-branch layout.

    Shapes
    ------
    - input ``x``: (B, G) preprocessed expression
    - output: reconstruction (B, G) and latent (B, L)
    """

    def __init__(self, n_genes: int, ae_hidden: int = 256, latent_dim: int = 32):
        super().__init__()
        self.encoder_ae = nn.Sequential(nn.Linear(n_genes, ae_hidden), nn.GELU())
        self.mu = nn.Linear(ae_hidden, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, ae_hidden), nn.GELU(), nn.Linear(ae_hidden, n_genes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.mu(self.encoder_ae(x))
        return self.decoder(z), z


@dataclass
class PretrainConfig:
    """Settings of :func:`pretrain`.

    Parameters
    ----------
    ae_hidden, latent_dim : int
        Encoder sizes; fine-tuning uses them for the network's autoencoder branch.
    epochs, batch_size, lr, weight_decay, patience : training (AdamW, cosine decay, early stopping on the
        reconstruction loss of a held-out 10% of the rows)
    mask_fraction : float
        Fraction of genes masked (set to 0, the scaled mean) per sample and step.
    noise_std : float
        Gaussian noise added on top.
    preprocessing : dict
        :class:`~genexflow.preprocessing.pipeline.PreprocessingConfig` options (``max_genes`` defaults
        to the training default, so the encoder sees the genes fine-tuning folds keep).
    seed : int
    """

    ae_hidden: int = 256
    latent_dim: int = 32
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 10
    mask_fraction: float = 0.25
    noise_std: float = 0.1
    preprocessing: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.mask_fraction < 1:
            raise InputError(f"mask_fraction must be in [0, 1), got {self.mask_fraction}")
        if min(self.ae_hidden, self.latent_dim, self.epochs, self.batch_size, self.patience) < 1:
            raise InputError("ae_hidden, latent_dim, epochs, batch_size and patience must be >= 1")


@dataclass
class PretrainedEncoder:
    """A pretrained autoencoder and the genes it reads (in its input order)."""

    genes: list[str]
    config: PretrainConfig
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    n_samples: int = 0
    sources: list[str] = field(default_factory=list)

    def module(self) -> DenoisingAutoencoder:
        net = DenoisingAutoencoder(len(self.genes), self.config.ae_hidden, self.config.latent_dim)
        net.load_state_dict(self.state_dict)
        return net.eval()

    def save(self, folder: str | Path) -> Path:
        """``encoder.pt`` (weights + genes) and ``encoder.json`` (sizes, data, history) in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (ENCODER_FILE + ".tmp")
        torch.save({"genes": self.genes, "state_dict": self.state_dict}, tmp)
        tmp.replace(folder / ENCODER_FILE)
        meta = {"config": asdict(self.config), "n_genes": len(self.genes), "n_samples": self.n_samples,
                "sources": self.sources, "history": self.history}
        tmp = folder / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(folder / META_FILE)
        return folder

    @classmethod
    def load(cls, path: str | Path) -> PretrainedEncoder:
        """From a folder written by :meth:`save` (or its ``encoder.pt``), or a registered MLflow version
        (``models:/genexflow-encoder/3``, ``models:/genexflow-encoder@prod``; see :func:`encoder_folder`)."""
        path = encoder_folder(path)
        folder = path if path.is_dir() else path.parent
        if not (folder / ENCODER_FILE).is_file():
            raise InputError(f"no pretrained encoder at {path} (expected {ENCODER_FILE}; run genexflow pretrain)")
        blob = torch.load(folder / ENCODER_FILE, map_location="cpu", weights_only=True)
        meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
        cfg = PretrainConfig(**meta.get("config", {}))
        return cls(list(blob["genes"]), cfg, blob["state_dict"], meta.get("history", []), meta.get("n_samples", 0),
                   meta.get("sources", []))


def pool_cohorts(cohorts: Sequence[Cohort]) -> Cohort:
    """Stack cohorts on their common genes (same value type required); labels are not needed."""
    if not cohorts:
        raise InputError("pretraining needs at least one cohort")
    vts = {str(c.value_type) for c in cohorts}
    if len(vts) > 1:
        raise InputError(f"pretraining cohorts mix value types ({', '.join(sorted(vts))}); pool one platform")
    if len(cohorts) == 1:
        return cohorts[0]

    common = [g for g in cohorts[0].genes if all(g in set(c.genes) for c in cohorts[1:])]
    if len(common) < 10:
        raise InputError(f"the cohorts share only {len(common)} genes; harmonize gene IDs first")
    frames = [c.frame()[common] for c in cohorts]
    ids = [f"{c.name}:{s}" for c in cohorts for s in c.sample_ids]
    X = np.vstack([f.to_numpy(np.float32) for f in frames])
    samples = pd.DataFrame({"cohort": [c.name for c in cohorts for _ in range(c.n_samples)]}, index=ids)
    return Cohort(X, common, samples, cohorts[0].value_type, "pretrain-pool")


def pretrain(cohorts: Cohort | Sequence[Cohort], config: PretrainConfig | None = None,
             on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> PretrainedEncoder:
    """Train a denoising autoencoder on every row of ``cohorts`` (no labels read).

    Parameters
    ----------
    cohorts : Cohort or list of Cohort
        All available expression: training rows plus unlabeled cohorts (same platform; pooled on their
        common genes).
    config : PretrainConfig
    on_epoch : callable ``(epoch, metrics)``

    Returns
    -------
    PretrainedEncoder
    """
    # lazy: genexflow.training.cv imports fit, which imports this module
    from genexflow.training.config import TrainConfig
    from genexflow.training.cv import make_preprocessing, transform
    from genexflow.training.trainer import seed_everything, warmup_cosine

    cfg = config or PretrainConfig()
    pool = pool_cohorts([cohorts] if isinstance(cohorts, Cohort) else list(cohorts))
    pre = make_preprocessing(TrainConfig(preprocessing=dict(cfg.preprocessing))).fit(pool)
    X = torch.as_tensor(transform(pre, pool))
    genes = [str(g) for g in pre.genes_out_]
    n, G = X.shape
    if n < 4:
        raise InputError(f"pretraining needs at least 4 samples, got {n}")
    seed_everything(cfg.seed, True)
    perm = torch.randperm(n)
    n_val = max(1, n // 10)
    val, fit = X[perm[:n_val]], X[perm[n_val:]]
    net = DenoisingAutoencoder(G, cfg.ae_hidden, cfg.latent_dim)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, math.ceil(len(fit) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * steps, 0.05))
    best, best_state, bad, history = math.inf, None, 0, []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        net.train()
        total = 0.0
        for idx in torch.randperm(len(fit)).split(cfg.batch_size):
            clean = fit[idx]
            noisy = clean * (torch.rand_like(clean) >= cfg.mask_fraction) + cfg.noise_std * torch.randn_like(clean)
            loss = F.mse_loss(net(noisy)[0], clean)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        net.eval()
        with torch.no_grad():
            v = float(F.mse_loss(net(val)[0], val))
        rec = {"epoch": epoch, "train_loss": total / len(fit), "val_loss": v, "seconds": time.perf_counter() - t0}
        history.append(rec)
        if on_epoch is not None:
            on_epoch(epoch, rec)
        if v < best - 1e-5:
            best, bad = v, 0
            best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    return PretrainedEncoder(genes, cfg, best_state or net.state_dict(), history, n,
                             [c.name for c in ([cohorts] if isinstance(cohorts, Cohort) else cohorts)])


REGISTRY_SCHEME = "models:/"


def encoder_folder(ref: str | Path, tracking_uri: str | None = None) -> Path:
    """A local folder for an encoder reference.

    A path is returned as it is. A registered MLflow version, ``models:/NAME/VERSION`` or
    ``models:/NAME@ALIAS`` (what :func:`register_encoder` / ``genexflow pretrain`` registers), is resolved to
    the run it was registered from and that run's ``encoder`` folder is downloaded once per process, so a
    pipeline's train step (on a machine that never saw the pretraining folder) starts from the registered
    encoder. ``tracking_uri`` defaults to mlflow's current one (``$MLFLOW_TRACKING_URI``).
    """
    text = str(ref)
    if not text.startswith(REGISTRY_SCHEME):
        return Path(ref)
    # lazy: mlflow takes seconds to import and only registry references need it
    import mlflow

    return _download_registered(text, tracking_uri or mlflow.get_tracking_uri())


@functools.lru_cache(maxsize=8)
def _download_registered(uri: str, tracking_uri: str) -> Path:
    # lazy: mlflow takes seconds to import and only registry references need it
    import mlflow
    from mlflow.exceptions import MlflowException

    name, sep, version = uri[len(REGISTRY_SCHEME):].partition("/")
    alias = None
    if "@" in name:
        name, alias = name.split("@", 1)
    if not name or (alias is None and not (sep and version.isdigit())):
        raise InputError(f"cannot read encoder reference {uri!r}: use models:/NAME/VERSION or models:/NAME@ALIAS")
    client = mlflow.MlflowClient(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise InputError(f"no registered encoder {uri} in {tracking_uri}: {exc.message}") from None
    if not mv.run_id:
        raise InputError(f"{uri} has no source run to download the encoder from")
    dst = Path(tempfile.mkdtemp(prefix="genexflow-encoder-"))
    try:
        local = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="encoder", dst_path=str(dst),
                                                    tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise InputError(f"{uri} (run {mv.run_id}) has no 'encoder' artifact folder: {exc.message}") from None
    (Path(local) / REGISTERED_FILE).write_text(json.dumps(
        {"uri": uri, "name": name, "version": int(mv.version), "run_id": mv.run_id, "tracking_uri": tracking_uri}))
    return Path(local)


def registered_source(folder: str | Path) -> dict[str, Any]:
    """``{"uri", "name", "version", "run_id", "tracking_uri"}`` of an encoder folder downloaded from the
    registry by :func:`encoder_folder` (empty for a folder that came from disk)."""
    meta = Path(folder) / REGISTERED_FILE
    return json.loads(meta.read_text()) if meta.is_file() else {}


def encoder_sizes(path: str | Path) -> dict[str, int]:
    """``{"ae_hidden": .., "latent_dim": ..}`` of a saved encoder (the model config fine-tuning needs)."""
    enc = PretrainedEncoder.load(path)
    return {"ae_hidden": enc.config.ae_hidden, "latent_dim": enc.config.latent_dim, "use_autoencoder": True}


def init_from_pretrained(module: nn.Module, encoder: PretrainedEncoder | str | Path, genes: Sequence[str]) -> int:
    """Load a pretrained encoder into ``module``'s autoencoder branch, matching genes by name.

    Parameters
    ----------
    module : PathwayNet
        Built with the encoder's ``ae_hidden`` / ``latent_dim`` (see :func:`encoder_sizes`).
    encoder : PretrainedEncoder or path
    genes : sequence of str
        The module's input genes (the fold's kept genes, in order).

    Returns
    -------
    int
        Genes matched; the others' encoder columns and decoder rows start at zero.
    """
    enc = encoder if isinstance(encoder, PretrainedEncoder) else PretrainedEncoder.load(encoder)
    if getattr(module, "encoder_ae", None) is None:
        raise InputError("the model has no autoencoder branch to initialize (model.use_autoencoder=false)")
    c = module.config
    if (c.ae_hidden, c.latent_dim) != (enc.config.ae_hidden, enc.config.latent_dim):
        raise InputError(f"the encoder is {enc.config.ae_hidden}->{enc.config.latent_dim} but the model's "
                         f"autoencoder is {c.ae_hidden}->{c.latent_dim}; set model.ae_hidden/latent_dim to match")
    pos = {g: i for i, g in enumerate(enc.genes)}
    mine = np.array([i for i, g in enumerate(genes) if g in pos], dtype=np.int64)
    theirs = np.array([pos[genes[i]] for i in mine], dtype=np.int64)
    if len(mine) == 0:
        raise InputError("the pretrained encoder shares no gene with the model's inputs")
    sd = enc.state_dict
    mi, ti = torch.as_tensor(mine), torch.as_tensor(theirs)
    with torch.no_grad():
        w_in = torch.zeros_like(module.encoder_ae[0].weight)
        w_in[:, mi] = sd["encoder_ae.0.weight"][:, ti]
        module.encoder_ae[0].weight.copy_(w_in)
        module.encoder_ae[0].bias.copy_(sd["encoder_ae.0.bias"])
        module.mu.weight.copy_(sd["mu.weight"])
        module.mu.bias.copy_(sd["mu.bias"])
        module.decoder[0].weight.copy_(sd["decoder.0.weight"])
        module.decoder[0].bias.copy_(sd["decoder.0.bias"])
        w_out = torch.zeros_like(module.decoder[2].weight)
        b_out = torch.zeros_like(module.decoder[2].bias)
        w_out[mi] = sd["decoder.2.weight"][ti]
        b_out[mi] = sd["decoder.2.bias"][ti]
        module.decoder[2].weight.copy_(w_out)
        module.decoder[2].bias.copy_(b_out)
    return int(len(mine))


def register_encoder(encoder: PretrainedEncoder, folder: str | Path, tracking_uri: str | None = None,
                     experiment: str = "genexflow", name: str = "genexflow-encoder") -> dict[str, Any]:
    """Log the encoder to an MLflow run (params, per-epoch losses, files, the torch module) and register it.

    Returns ``{"run_id", "model_name", "version"}``.
    """
    # lazy: mlflow takes seconds to import
    import mlflow
    import mlflow.pytorch

    from genexflow.training.tracking import RunTracker

    with RunTracker(experiment, "pretrain-encoder", tracking_uri, tags={"genexflow.kind": "encoder"}) as tr:
        tr.log_params({**{f"pretrain.{k}": v for k, v in asdict(encoder.config).items() if k != "preprocessing"},
                       "pretrain.n_genes": len(encoder.genes), "pretrain.n_samples": encoder.n_samples,
                       "pretrain.sources": ",".join(encoder.sources)})
        for h in encoder.history:
            tr.log_metrics({"train_loss": h["train_loss"], "val_loss": h["val_loss"]}, step=int(h["epoch"]))
        tr.log_artifacts(folder, "encoder")
        info = mlflow.pytorch.log_model(encoder.module(), name="encoder_model", serialization_format="pickle",
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        mv = mlflow.register_model(info.model_uri, name)
        return {"run_id": tr.run_id, "model_name": name, "version": int(mv.version)}
