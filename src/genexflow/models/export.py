"""ONNX and TorchScript export of :class:`~genexflow.models.PathwayNet`.

The exported graph takes ``expression`` (B, G) float32 (preprocessed, the priors' gene order) and
``covariates`` (B, C) float32, with a dynamic batch axis, and returns ``probabilities`` (softmax, B x K) for
classification or ``prediction`` (B x 1) for regression, plus optionally ``latent`` (B x L) and
``pathway_attention`` (B x P, class-token attention of the last layer averaged over heads).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from genexflow.errors import InputError
from genexflow.export import export_graph, run_onnx

INPUT_NAMES = ("expression", "covariates")


class ServingModule(nn.Module):
    """Wraps a :class:`PathwayNet` into the serving signature (tensors in, tensors out, eval mode).

    Shapes
    ------
    - ``expression``: (B, G) float32; ``covariates``: (B, C) float32 (C may be 0)
    - outputs: ``probabilities`` (B, K) or ``prediction`` (B, 1) [, ``latent`` (B, L)]
      [, ``pathway_attention`` (B, P)]
    """

    def __init__(self, net: nn.Module, include_latent: bool = True, include_attention: bool = False):
        super().__init__()
        c = net.config
        self.net = net
        self.include_latent = include_latent and c.use_autoencoder
        self.include_attention = include_attention and c.use_transformer
        self.has_covariates = c.n_covariates > 0
        self.classification = c.task == "classification"

    @property
    def output_names(self) -> list[str]:
        names = ["probabilities" if self.classification else "prediction"]
        if self.include_latent:
            names.append("latent")
        if self.include_attention:
            names.append("pathway_attention")
        return names

    def forward(self, expression: Tensor, covariates: Tensor) -> tuple[Tensor, ...]:
        out = self.net(expression, covariates if self.has_covariates else None, self.include_attention)
        first = torch.softmax(out.logits, dim=-1) if self.classification else out.logits
        if not self.has_covariates:
            # Keep the (B, 0) covariates input in the graph so every model has the same signature.
            first = first + covariates.sum(dim=1, keepdim=True) * 0.0
        res = [first]
        if self.include_latent:
            res.append(out.latent)
        if self.include_attention:
            res.append(out.attention[-1][:, :, 0, 1:].mean(1))
        return tuple(res)


def _check_sizes(net: nn.Module, n_genes: int | None, n_covariates: int | None) -> tuple[int, int]:
    c = net.config
    G = c.n_genes if n_genes is None else int(n_genes)
    C = c.n_covariates if n_covariates is None else int(n_covariates)
    if (G, C) != (c.n_genes, c.n_covariates):
        raise InputError(f"model was built for {c.n_genes} genes / {c.n_covariates} covariates, "
                         f"asked to export {G} / {C}")
    return G, C


def example_inputs(n_genes: int, n_covariates: int, batch: int = 2, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, n_genes, generator=g), torch.randn(batch, n_covariates, generator=g))


def export_onnx(
    module: nn.Module,
    path: str | Path,
    n_genes: int | None = None,
    n_covariates: int | None = None,
    *,
    include_latent: bool = True,
    include_attention: bool = False,
    opset: int = 17,
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Export a :class:`PathwayNet` alone (preprocessed input) to one ONNX file with a dynamic batch axis,
    through :func:`genexflow.export.export_graph` (the serving artifact's export path).

    Parameters
    ----------
    module : PathwayNet
        Exported in eval mode (its training flag is restored afterwards).
    path : str or Path
        Output ``.onnx`` file.
    n_genes, n_covariates : int, optional
        Checked against the module's config (default: taken from it).
    include_latent, include_attention : bool
        Add the ``latent`` / ``pathway_attention`` outputs.
    opset : int
        ONNX opset (>= 17).
    verify : bool
        Also run the file in onnxruntime on other random inputs (batch 3, not the tracing batch) and raise
        if any output differs from torch by more than ``atol``.

    Returns
    -------
    Path
        The written file. Inputs ``expression`` (B, G), ``covariates`` (B, C); outputs as
        :class:`ServingModule` lists.
    """
    G, C = _check_sizes(module, n_genes, n_covariates)
    wrapper = ServingModule(module, include_latent, include_attention)
    x, c = example_inputs(G, C)
    was_training = module.training
    try:
        path = export_graph(wrapper, {"expression": x.numpy(), "covariates": c.numpy()}, path,
                            wrapper.output_names, opset=opset, atol=atol)
    finally:
        module.train(was_training)
    if verify:
        err = verify_onnx(module, path, *example_inputs(G, C, batch=3, seed=1))
        worst = max(err.values())
        if not worst <= atol:
            raise RuntimeError(f"ONNX export of {path.name} differs from torch by {worst:.2e} (> {atol}): {err}")
    return path


def verify_onnx(module: nn.Module, path: str | Path, expression: Tensor | np.ndarray,
                covariates: Tensor | np.ndarray | None = None) -> dict[str, float]:
    """Max absolute difference per output between onnxruntime and torch eager on the same input.

    Parameters
    ----------
    expression : array of shape (B, G); covariates : array of shape (B, C), optional when C = 0
    """
    x = torch.as_tensor(np.asarray(expression, np.float32))
    cov = torch.zeros(x.shape[0], module.config.n_covariates) if covariates is None else \
        torch.as_tensor(np.asarray(covariates, np.float32))
    got = run_onnx(path, {"expression": x.numpy(), "covariates": cov.numpy()})
    names = list(got)
    wrapper = ServingModule(module, "latent" in names, "pathway_attention" in names)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            ref = wrapper(x, cov)
    finally:
        module.train(was_training)
    return {n: float(np.max(np.abs(got[n] - r.numpy()))) if r.numel() else 0.0
            for n, r in zip(names, ref, strict=True)}


def export_torchscript(
    module: nn.Module,
    path: str | Path,
    n_genes: int | None = None,
    n_covariates: int | None = None,
    *,
    include_latent: bool = True,
    include_attention: bool = False,
) -> Path:
    """Trace the serving signature to TorchScript (``torch.jit.load`` reloads it without genexflow).

    The traced module takes ``(expression (B, G), covariates (B, C))`` and returns the same tuple as the
    ONNX graph; any batch size works (no shape-dependent control flow in the module).
    """
    G, C = _check_sizes(module, n_genes, n_covariates)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    wrapper = ServingModule(module, include_latent, include_attention).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, example_inputs(G, C), check_trace=False)
        traced.save(str(path))
    finally:
        module.train(was_training)
    return path
