"""The torch module MLflow logs: one input tensor ``[expression | covariates]`` -> probabilities/predictions.

MLflow's pytorch flavour feeds a single array; this wrapper splits it and applies the softmax, so the
logged model's signature matches what a client sends (preprocessed expression and encoded covariates).
"""

from __future__ import annotations

import torch
from torch import nn

from genexflow.training.trainer import call_module, task_output


class SingleInputModel(nn.Module):
    """``forward(z)`` with ``z`` of shape (B, G + C): first G columns expression, then C covariates."""

    def __init__(self, model: nn.Module, n_genes: int, n_covariates: int, task: str):
        super().__init__()
        self.model = model
        self.n_genes = n_genes
        self.n_covariates = n_covariates
        self.task = task

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x, c = z[:, : self.n_genes], z[:, self.n_genes:]
        out = task_output(call_module(self.model, x, c))
        return torch.softmax(out, dim=1) if self.task == "classification" else out
