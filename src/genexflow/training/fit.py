"""Fitting one deep model on a prepared fold: build the network for the fold's priors, optionally start its
wide path from a GLM, train with early stopping on an inner stratified split, and fold a regression
target's standardization into the last layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from genexflow.models import PathwayNet
from genexflow.training.config import TrainConfig
from genexflow.training.crosstalk import init_crosstalk
from genexflow.training.folds import PreparedFold
from genexflow.training.pretrain import encoder_sizes, init_from_pretrained
from genexflow.training.splits import train_val_split
from genexflow.training.trainer import EpochCallback, Trainer, TrainResult, seed_everything
from genexflow.training.wide import init_wide


def build_model(priors: Any, n_covariates: int, n_outputs: int, cfg: TrainConfig):
    """A fresh :class:`~genexflow.models.PathwayNet` for the fold's priors (seeded by the caller)."""
    opts = {"recon_weight": cfg.recon_weight, **cfg.model}
    if cfg.init_from:  # the autoencoder branch takes the pretrained encoder's sizes

        opts.update(encoder_sizes(cfg.init_from))
    return PathwayNet.from_priors(priors, n_covariates=n_covariates, n_outputs=n_outputs, task=cfg.task, **opts)


def train_deep(fold: PreparedFold, cfg: TrainConfig, n_outputs: int,
               callbacks: Sequence[EpochCallback] = ()) -> TrainResult:
    """Train the deep model on the fold's training rows, early-stopping on an inner stratified split."""
    fit_idx, val_idx = train_val_split(fold.train.y, cfg.val_fraction, cfg.seed,
                                       stratify=cfg.task == "classification")
    seed_everything(cfg.seed, cfg.deterministic)
    module = build_model(fold.priors, fold.train.covariates.shape[1], n_outputs, cfg)
    fit = fold.train.take(fit_idx)
    if cfg.init_from:
        init_from_pretrained(module, cfg.init_from, fold.genes)
    started = False
    if getattr(module, "wide", None) is not None and cfg.wide_init != "none":
        # The GLM sees every training row of the fold, the early-stopping rows included: on cohorts of
        # tens of samples those rows are worth more to it than an unbiased start score. The start's
        # validation loss is then optimistic, so the deep branches have to beat the GLM clearly to be kept.
        y = fold.train.y
        if cfg.task == "regression":  # in the trainer's units: standardized by the fit rows' mean and SD
            y = (y - np.mean(fit.y)) / (np.std(fit.y) or 1.0)
        glm = init_wide(module, fold.train.X, y, cfg.task, cfg.wide_init, cfg.seed, cfg.wide_trainable)
        started = glm is not None
        if started:  # the crosstalk's CANN start: pathway terms fitted over the GLM's out-of-fold logits
            init_crosstalk(module, fold.train.X, y, glm, cfg.task, cfg.seed)
    res = Trainer(cfg, callbacks).fit(module, fit, fold.train.take(val_idx), start_is_candidate=started)
    fold_target_scaling(res)
    return res


def fold_target_scaling(res: TrainResult) -> None:
    """Fold regression target standardization into the module's last linear layer, so the saved model
    (and its ONNX export) outputs targets on the original scale."""
    if res.target_mean == 0.0 and res.target_std == 1.0:
        return

    head = getattr(res.module, "head", None)
    last = head[-1] if isinstance(head, torch.nn.Sequential) else None
    if not isinstance(last, torch.nn.Linear):
        return  # keep target_mean/std on the result; predict_module applies them
    with torch.no_grad():
        last.weight.mul_(res.target_std)
        last.bias.mul_(res.target_std).add_(res.target_mean)
        wide = getattr(res.module, "wide", None)
        if isinstance(wide, torch.nn.Linear):
            wide.weight.mul_(res.target_std)
            wide.bias.mul_(res.target_std)
    res.target_mean, res.target_std = 0.0, 1.0
