"""A small, deterministic end-to-end serving model for tests, demos and benchmarks.

It has the same graph contract as a real export (raw counts + covariates + batch index -> probabilities),
with a real preprocessing shape (absent-gene fill, log-CPM, per-batch shift, scaling) and a linear head,
so the whole serving stack (registry, Triton, client, batch scorer) can be exercised without training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from genexflow.bundle import BundleInfo, CovariateSpec
from genexflow.cohort import Cohort
from genexflow.export import ServingArtifact, export_onnx_artifact


def toy_info(n_genes: int = 50, n_classes: int = 3, n_batches: int = 2, seed: int = 0) -> BundleInfo:
    """A :class:`BundleInfo` with ``n_genes`` genes, one numeric and one 2-level covariate."""
    return BundleInfo(
        task="classification", label_column="label", class_names=[f"class_{k}" for k in range(n_classes)],
        input_genes=[f"ENSG{i:011d}" for i in range(n_genes)], value_type="counts",
        covariates=[CovariateSpec("age", "numeric", 50.0, 10.0), CovariateSpec("sex", "categorical",
                                                                                  categories=["F", "M"])],
        batch_column="batch" if n_batches else None, batch_levels=[f"b{i}" for i in range(n_batches)],
        metrics={}, lineage={"data": "simulated", "seed": seed},
    )


def toy_module(info: BundleInfo, seed: int = 0, shift: float = 0.0):
    """The torch module: forward(expression, covariates, batch_index) -> probabilities.

    ``shift`` perturbs the head so two toy models give different predictions (champion vs challenger).
    """
    g, k, c = len(info.input_genes), len(info.class_names), info.n_covariates
    nb = max(1, len(info.batch_levels))
    gen = torch.Generator().manual_seed(seed)

    class Toy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("fill", torch.full((g,), 20.0))
            self.register_buffer("batch_shift", torch.cat([0.3 * torch.randn(nb, g, generator=gen),
                                                           torch.zeros(1, g)]))
            self.register_buffer("center", torch.full((g,), 14.3))
            self.register_buffer("scale", torch.full((g,), 0.5))
            self.head = torch.nn.Linear(g + c, k)
            with torch.no_grad():
                self.head.weight.copy_(torch.randn(k, g + c, generator=gen) / np.sqrt(g) + shift)
                self.head.bias.copy_(torch.randn(k, generator=gen))

        def forward(self, expression, covariates, batch_index):
            x = torch.where(torch.isnan(expression), self.fill, expression)
            lib = x.sum(dim=1, keepdim=True).clamp_min(1.0)
            x = torch.log2(x / lib * 1e6 + 1.0)
            b = torch.where(batch_index < 0, torch.full_like(batch_index, nb), batch_index)
            x = x - self.batch_shift.index_select(0, b)
            x = (x - self.center) / self.scale
            return torch.softmax(self.head(torch.cat([x, covariates], dim=1)), dim=-1)

    return Toy().eval()


def make_toy_artifact(out_dir: str | Path, n_genes: int = 50, n_classes: int = 3, n_batches: int = 2,
                      seed: int = 0, shift: float = 0.0, info: BundleInfo | None = None) -> ServingArtifact:
    """Export the toy model to ``out_dir`` (model.onnx + model.json) and return the artifact."""
    info = info or toy_info(n_genes, n_classes, n_batches, seed)
    module = toy_module(info, seed=seed, shift=shift)
    return export_onnx_artifact(module, info, out_dir, use_covariates=True, use_batch=True,
                                preprocessing_meta={"steps": ["fill", "log-cpm", "batch-shift", "scale"]})


def toy_cohort(info: BundleInfo, n: int, seed: int = 1):
    """A simulated cohort (counts) matching ``info``: samples with age, sex and batch columns."""
    rng = np.random.default_rng(seed)
    X = rng.poisson(20.0, size=(n, len(info.input_genes))).astype(np.float32)
    levels = info.batch_levels or ["b0"]
    samples = pd.DataFrame({
        "age": rng.normal(50, 10, n).round(1),
        "sex": rng.choice(["F", "M"], n),
        "batch": rng.choice(levels, n),
        "label": rng.choice(info.class_names, n),
    }, index=pd.Index([f"S{i:07d}" for i in range(n)], name="sample_id"))
    return Cohort(X, info.input_genes, samples, value_type=info.value_type, name="toy")
