"""The pathway-aware network as a pure ``nn.Module`` (no data loading, no logging, no training loop).

::

    expression x (B, G) ──┬─ gene embedding (B,F,G) ─ GraphConv x L (shared Â) ─ per-gene readout (B,G)
                          │                                  │                      └ MLP 512 -> 256 ─┐
                          │     [x, Wt H_L] (B,1+t,G) ───────┘                                        │
                          │          └ PathwayPooling (B,1+t,P) ─ Linear ─ + pathway embedding        │
                          │              └ [CLS; tokens] (B,P+1,d) ─ TransformerEncoder x 2 ─ CLS (B,d)┤
                          └─ encoder (B,ae_hidden) ─ latent z (B,L) ─ decoder ─ reconstruction (B,G)    │
                                                          └────────────────────────────────────────────┤
    covariates c (B, C) ───────────────────────────────────────────────────────────────────────────────┤
                                                              concat ─ Dense 128 ─ GELU ─ Dropout 0.3 ─ K
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from genexflow.errors import InputError
from genexflow.models.config import PathwayNetConfig
from genexflow.models.layers import (
    EdgePropagation,
    FastDropout,
    GraphConv,
    MembershipPropagation,
    PathwayPooling,
    TransformerEncoderLayer,
    channel_mix,
    make_propagation,
    member_rows,
)
from genexflow.priors.graph import GeneGraph, comembership_graph


class PathwayNetOutput(NamedTuple):
    """What :meth:`PathwayNet.forward` returns (``None`` for a disabled branch).

    Attributes
    ----------
    logits : Tensor of shape (B, K)
        Class logits, or (B, 1) predictions for regression.
    reconstruction : Tensor of shape (B, G) or None
    latent : Tensor of shape (B, L) or None
        Autoencoder latent (the mean for a VAE): what monitoring tracks.
    logvar : Tensor of shape (B, L) or None
        VAE log-variance.
    attention : tuple of n_layers Tensors of shape (B, n_heads, P + 1, P + 1), or None
        Self-attention weights per encoder layer, in eval mode or with ``return_attention=True`` (a
        tuple, not a stacked copy: at 300 pathways each layer is ~12 M floats); token 0 is the class token,
        token k + 1 pathway k. Rows sum to 1.
    pathway_logits : Tensor of shape (B, P, K) or None
        The pathway-specific heads' outputs (``config.pathway_heads > 0``): pathway k's own prediction
        from its member genes alone.
    """

    logits: Tensor
    reconstruction: Tensor | None
    latent: Tensor | None
    logvar: Tensor | None
    attention: tuple[Tensor, ...] | None
    pathway_logits: Tensor | None = None


@dataclass
class PathwayNetLoss:
    """Loss of one batch: the total to back-propagate and its components (detached floats in ``metrics``)."""

    total: Tensor
    prediction: Tensor
    reconstruction: Tensor
    kl: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class PathwayNet(nn.Module):
    """GCN over genes + pathway-token transformer + autoencoder + covariates -> head.

    Parameters
    ----------
    config : PathwayNetConfig
        All sizes; ``n_genes`` / ``n_pathways`` must match ``membership``.
    membership : ndarray of shape (G, P)
        Gene x pathway 0/1 matrix (pathway tokens, and the co-membership graph).
    graph : GeneGraph, optional
        Gene graph for the GCN; default: co-membership of ``membership`` with ``1/|S_k|`` set weights.

    Shapes
    ------
    - ``expression``: (B, G) float32, preprocessed, in the priors' gene order
    - ``covariates``: (B, C) float32
    - output: :class:`PathwayNetOutput`

    Examples
    --------
    >>> import numpy as np, torch
    >>> M = (np.random.default_rng(0).random((50, 6)) < 0.3).astype(np.float32)
    >>> net = PathwayNet(PathwayNetConfig(n_genes=50, n_pathways=6, n_covariates=2, n_outputs=3), M).eval()
    >>> net(torch.randn(4, 50), torch.randn(4, 2)).logits.shape
    torch.Size([4, 3])
    """

    #: Parameters of the auxiliary pathway heads: they do not feed the main output, so the trainer's
    #: early stopping (on the main loss) does not roll them back.
    auxiliary_prefixes = ("ph_",)

    def __init__(self, config: PathwayNetConfig, membership: np.ndarray, graph=None):
        super().__init__()

        M = np.asarray(membership, np.float32)
        if M.shape != (config.n_genes, config.n_pathways):
            raise InputError(f"membership has shape {M.shape}, config expects ({config.n_genes}, {config.n_pathways})")
        rebuild = graph is _Placeholder
        if rebuild:
            graph = None
        elif graph is None and config.graph_kind == "membership":
            graph = comembership_graph(M, [str(i) for i in range(config.n_genes)])
        elif graph is None and config.use_gcn:
            raise InputError("config.graph_kind='edges' needs the edge-list GeneGraph (graph=...)")
        if graph is not None:
            if not isinstance(graph, GeneGraph) or graph.n_genes != config.n_genes:
                raise InputError(f"graph must be a GeneGraph over the {config.n_genes} model genes")
            if graph.kind != config.graph_kind:
                raise InputError(f"config.graph_kind={config.graph_kind!r} but the graph is {graph.kind!r}")
            if graph.kind == "edges":
                config.n_edges = graph.n_edges
        self.config = c = config
        self.register_buffer("membership", torch.as_tensor(M))
        if c.use_gcn:
            # Rebuilt from a checkpoint: right-shaped placeholders that load_state_dict fills.
            self.propagate = _empty_propagation(c) if rebuild else make_propagation(graph)

        Fd = c.gcn_dim if c.use_gcn else 0
        if c.use_gcn:
            self.gene_scale = nn.Parameter(torch.randn(Fd, c.n_genes) * 0.5)
            self.gene_embed = nn.Parameter(torch.randn(Fd, c.n_genes) * 0.1)
            self.gcn = nn.ModuleList(GraphConv(Fd, c.gcn_dropout) for _ in range(c.gcn_layers))
            self.gene_readout = nn.Linear(Fd, 1)
            dims = (c.n_genes, *c.readout_dims)
            layers: list[nn.Module] = []
            for a, b in zip(dims[:-1], dims[1:], strict=True):
                layers += [nn.Linear(a, b), nn.GELU(), FastDropout(c.gcn_dropout)]
            self.readout = nn.Sequential(*layers)
        if c.use_transformer:
            self.pooling = PathwayPooling(c.n_genes)
            # Pool x plus a narrow projection of the GCN features: the pooling product is the branch's
            # largest cost at G = 20,000 and scales with the pooled width.
            tg = c.token_gene_dim if c.use_gcn else 0
            if tg:
                self.token_gene = nn.Linear(Fd, tg, bias=False)
            self.token_proj = nn.Linear(1 + tg, c.d_model)
            self.pathway_embed = nn.Parameter(torch.randn(c.n_pathways, c.d_model) * 0.02)
            self.cls_token = nn.Parameter(torch.randn(1, 1, c.d_model) * 0.02)
            self.encoder = nn.ModuleList(
                TransformerEncoderLayer(c.d_model, c.n_heads, c.ff_dim, c.attn_dropout, c.norm_first)
                for _ in range(c.transformer_layers)
            )
            self.final_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        if c.use_autoencoder:
            self.encoder_ae = nn.Sequential(nn.Linear(c.n_genes, c.ae_hidden), nn.GELU())
            self.mu = nn.Linear(c.ae_hidden, c.latent_dim)
            if c.variational:
                self.logvar = nn.Linear(c.ae_hidden, c.latent_dim)
            self.decoder = nn.Sequential(nn.Linear(c.latent_dim, c.ae_hidden), nn.GELU(),
                                         nn.Linear(c.ae_hidden, c.n_genes))
        head_in = (
            (c.readout_dims[-1] if c.use_gcn else 0)
            + (c.d_model if c.use_transformer else 0)
            + (c.latent_dim if c.use_autoencoder else 0)
            + c.n_covariates
        )
        self.head = nn.Sequential(nn.Linear(head_in, c.head_hidden), nn.GELU(), FastDropout(c.head_dropout),
                                  nn.Linear(c.head_hidden, c.n_outputs))
        if c.pathway_interactions:
            # Signed per-member gene weights (a pathway-masked linear encoder, as in P-NET), starting at
            # the members' mean: the pathway score.
            # Stored per membership entry (M's non-zeros in row-major order): only those weights matter, so a
            # dense (G, P) matrix would be ~99% dead parameters that AdamW still updates every step.
            size = np.maximum(M.sum(0, keepdims=True), 1.0)
            rows, cols = np.nonzero(M)
            idx = member_rows(torch.as_tensor(M))
            slot = np.full(c.n_genes, -1, np.int64)
            slot[idx.numpy()] = np.arange(len(idx))
            self.fm_member_weights = nn.Parameter(torch.as_tensor((M / size)[rows, cols], dtype=torch.float32))
            # Where each weight sits in the (G, P) matrix and in the member-genes-only (Gm, P) matrix.
            self.register_buffer("fm_flat_index", torch.as_tensor(rows * c.n_pathways + cols), persistent=False)
            self.register_buffer("fm_member_index", torch.as_tensor(slot[rows] * c.n_pathways + cols),
                                 persistent=False)
            self.register_buffer("fm_member_genes", idx, persistent=False)
            self.register_load_state_dict_pre_hook(_dense_crosstalk_weights)
            self.fm_factors = nn.Parameter(torch.randn(c.n_pathways, c.n_outputs * c.pathway_interactions) * 0.1)
            # ReZero-style gate: the term starts at exactly 0 (so a GLM start is exact) yet learns, since the
            # gate's gradient is the (random-factor) term itself.
            self.fm_gate = nn.Parameter(torch.zeros(()))
            # Joint read-out of the pathway scores (identity = the pooled scores; the trainer loads a
            # factor-model read-out that separates programs sharing genes) and linear pathway terms (start
            # at 0); see genexflow.training.crosstalk.
            self.fm_mix = nn.Parameter(torch.eye(c.n_pathways))
            self.fm_linear = nn.Parameter(torch.zeros(c.n_pathways, c.n_outputs))
            self.register_load_state_dict_pre_hook(_crosstalk_defaults)
            # Sums each output's r factor products: a constant (K·r, K) matmul keeps every ONNX shape static.
            self.register_buffer("fm_sum", torch.repeat_interleave(torch.eye(c.n_outputs), c.pathway_interactions, 0),
                                 persistent=False)
        if c.pathway_heads:
            # One tiny MLP per pathway over its members' mean and mean square (batched as einsums, so P
            # heads cost two thin matmuls); they read the fixed membership only, so each is that pathway's
            # own reading, never mixed with other programs.
            size = np.maximum(M.sum(0, keepdims=True), 1.0)
            self.register_buffer("ph_pool", torch.as_tensor(M / size), persistent=False)
            h, K = c.pathway_heads, c.n_outputs
            self.ph_w1 = nn.Parameter(torch.randn(c.n_pathways, 2, h) * (1 / np.sqrt(2)))
            self.ph_b1 = nn.Parameter(torch.zeros(c.n_pathways, h))
            self.ph_w2 = nn.Parameter(torch.randn(c.n_pathways, h, K) * (1 / np.sqrt(h)))
            self.ph_b2 = nn.Parameter(torch.zeros(c.n_pathways, K))
        if c.gene_linear:
            # Wide path, zero-initialized; the trainer can start it from a penalized GLM fitted on the
            # training rows (see genexflow.training.wide) and then learns the deep residual on top.
            self.wide = nn.Linear(c.n_genes, c.n_outputs)
            nn.init.zeros_(self.wide.weight)
            nn.init.zeros_(self.wide.bias)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_priors(cls, priors, n_covariates: int = 0, n_outputs: int = 2, **config) -> PathwayNet:
        """Build from :class:`~genexflow.priors.GenePriors` (gene order, membership and graph)."""
        cfg = PathwayNetConfig(n_genes=priors.n_genes, n_pathways=priors.n_pathways, n_covariates=n_covariates,
                               n_outputs=n_outputs, graph_kind=priors.graph.kind,
                               n_edges=priors.graph.n_edges if priors.graph.kind == "edges" else 0, **config)
        return cls(cfg, priors.membership, priors.graph)

    def save(self, path: str | Path) -> Path:
        """Save config + state dict (buffers included) to one ``.pt`` file; :meth:`load` rebuilds it."""
        path = Path(path)
        torch.save({"config": self.config.to_dict(), "state_dict": self.state_dict()}, path)
        return path

    @classmethod
    def load(cls, path, map_location: str = "cpu") -> PathwayNet:
        """Rebuild from :meth:`save` output (a path or a file-like object); no priors needed."""
        blob = torch.load(path, map_location=map_location, weights_only=True)
        cfg = PathwayNetConfig.from_dict(blob["config"])
        net = cls(cfg, blob["state_dict"]["membership"].numpy(), graph=_Placeholder)
        net.load_state_dict(blob["state_dict"])
        return net

    # ------------------------------------------------------------------ forward
    def forward(self, expression: Tensor, covariates: Tensor | None = None,
                return_attention: bool | None = None) -> PathwayNetOutput:
        """Run all enabled branches.

        Parameters
        ----------
        expression : Tensor of shape (B, G)
        covariates : Tensor of shape (B, C), optional when C = 0
        return_attention : bool, optional
            Also return the attention weights (explicit softmax instead of the fused kernel; same outputs,
            about 2x the encoder's CPU time). Default: in eval mode yes, in training mode no.
        """
        c = self.config
        if return_attention is None:
            return_attention = not self.training
        parts: list[Tensor] = []
        H = None
        attention = reconstruction = latent = logvar = None
        x3 = expression.unsqueeze(1)  # (B, 1, G): genes last, a view of the input
        if c.use_gcn:
            H = torch.addcmul(self.gene_embed, x3, self.gene_scale)  # (B, F, G)
            for layer in self.gcn:
                H = layer(H, self.propagate)
            gene_out = channel_mix(self.gene_readout.weight, H).squeeze(1) + self.gene_readout.bias  # (B, G)
            parts.append(self.readout(gene_out))
        if c.use_transformer:
            feats = x3 if H is None or not c.token_gene_dim else torch.cat([x3, channel_mix(self.token_gene.weight, H)], 1)
            pooled = self.pooling(feats, self.membership)  # (B, 1 + t, P); channel 0 = pathway score at init
            tokens = self.token_proj(pooled.transpose(1, 2)) + self.pathway_embed  # (B, P, d)
            cls = self.cls_token.expand(tokens.shape[0], -1, -1)
            Z = torch.cat([cls, tokens], dim=1)  # (B, P+1, d)
            weights = []
            for layer in self.encoder:
                Z, w = layer(Z, return_attention)
                weights.append(w)
            attention = tuple(weights) if return_attention else None
            parts.append(self.final_norm(Z[:, 0]))
        if c.use_autoencoder:
            h = self.encoder_ae(expression)
            latent = self.mu(h)
            z = latent
            if c.variational:
                logvar = self.logvar(h).clamp(-10.0, 10.0)
                if self.training:
                    z = latent + torch.randn_like(latent) * torch.exp(0.5 * logvar)
            reconstruction = self.decoder(z)
            parts.append(z)
        if c.n_covariates:
            if covariates is None:
                raise InputError(f"the model expects {c.n_covariates} covariates; pass covariates (B, C)")
            parts.append(covariates)
        if parts:
            logits = self.head(torch.cat(parts, dim=1))
        else:  # only the wide and/or crosstalk paths are enabled
            logits = expression.new_zeros(expression.shape[0], c.n_outputs) + self.head[-1].bias
        if c.pathway_interactions:
            logits = logits + self.crosstalk(x3)
        if c.gene_linear:
            logits = logits + self.wide(expression)
        pathway_logits = self.pathway_head_logits(expression) if c.pathway_heads else None
        return PathwayNetOutput(logits, reconstruction, latent, logvar, attention, pathway_logits)

    def pathway_head_logits(self, expression: Tensor) -> Tensor:
        """Each pathway's own prediction from its member genes: (B, P, K)."""
        feats = torch.stack([expression @ self.ph_pool, expression.pow(2) @ self.ph_pool], -1)  # (B, P, 2)
        hidden = F.gelu(torch.einsum("bpi,pih->bph", feats, self.ph_w1) + self.ph_b1)
        return torch.einsum("bph,phk->bpk", hidden, self.ph_w2) + self.ph_b2

    @property
    def fm_gene_weights(self) -> Tensor:
        """The crosstalk's pathway-score weights as the masked (G, P) matrix ``W ⊙ M`` (zero off-membership)."""
        G, P = self.membership.shape
        return self.fm_member_weights.new_zeros(G * P).scatter(0, self.fm_flat_index, self.fm_member_weights).view(G, P)

    def pathway_scores(self, x3: Tensor) -> Tensor:
        """The pathway terms' scores ``s = x (W ⊙ M) D`` (B, P), computed over the member genes only; ``D`` is
        the read-out ``fm_mix``."""
        idx = self.fm_member_genes
        P = self.membership.shape[1]
        Wm = self.fm_member_weights.new_zeros(len(idx) * P).scatter(0, self.fm_member_index, self.fm_member_weights)
        return (x3.squeeze(1).index_select(1, idx) @ Wm.view(-1, P)) @ self.fm_mix

    def crosstalk(self, x3: Tensor) -> Tensor:
        """Pathway terms over pathway scores: γ/2 Σ_f [(s V_f)² − s² V_f²] (a factorization machine) + s L,
        per output (B, K); γ is a learned gate that starts at 0, L (linear pathway terms) starts at 0."""
        s = self.pathway_scores(x3)
        V = self.fm_factors
        quad = (s @ V).pow(2) - s.pow(2) @ V.pow(2)  # (B, K·r), output-major
        return (0.5 * self.fm_gate) * (quad @ self.fm_sum) + s @ self.fm_linear

    # ------------------------------------------------------------------ loss and readouts
    def loss(self, output: PathwayNetOutput, expression: Tensor, target: Tensor,
             class_weight: Tensor | None = None) -> PathwayNetLoss:
        """Prediction loss + ``recon_weight`` · MSE reconstruction + ``kl_weight`` · KL (VAE).

        Parameters
        ----------
        output : PathwayNetOutput
        expression : Tensor of shape (B, G)
            The input, the reconstruction target.
        target : Tensor of shape (B,)
            Class indices (int64) or regression targets (float).
        """
        c = self.config
        if c.task == "classification":
            pred = F.cross_entropy(output.logits, target.long(), weight=class_weight)
        else:
            pred = F.mse_loss(output.logits.squeeze(-1), target.to(output.logits.dtype))
        zero = output.logits.new_zeros(())
        rec = F.mse_loss(output.reconstruction, expression) if output.reconstruction is not None else zero
        kl = zero
        if output.logvar is not None:
            kl = (-0.5 * (1 + output.logvar - output.latent.pow(2) - output.logvar.exp()).sum(1)).mean()
        total = pred + c.recon_weight * rec + c.kl_weight * kl
        heads = zero
        if output.pathway_logits is not None:
            B, P, K = output.pathway_logits.shape
            if c.task == "classification":
                heads = F.cross_entropy(output.pathway_logits.reshape(B * P, K), target.long().repeat_interleave(P),
                                        weight=class_weight)
            else:
                heads = F.mse_loss(output.pathway_logits[..., 0], target.to(output.logits.dtype)[:, None].expand(B, P))
            total = total + c.pathway_head_weight * heads
        if c.gene_linear and (c.gene_l1 or c.gene_l2):
            w = self.wide.weight
            total = total + c.gene_l1 * w.abs().sum() + c.gene_l2 * w.pow(2).sum()
        metrics = {"loss": float(total.detach()), "prediction_loss": float(pred.detach()),
                   "reconstruction_loss": float(rec.detach()), "kl": float(kl.detach())}
        if output.pathway_logits is not None:
            metrics["pathway_head_loss"] = float(heads.detach())
        if c.task == "classification":
            metrics["accuracy"] = float((output.logits.argmax(1) == target).float().mean())
        return PathwayNetLoss(total, pred, rec, kl, metrics)

    def predict(self, output: PathwayNetOutput) -> Tensor:
        """Probabilities (B, K) for classification, predictions (B, 1) for regression."""
        return torch.softmax(output.logits, dim=-1) if self.config.task == "classification" else output.logits

    @staticmethod
    def pathway_attention(output: PathwayNetOutput) -> Tensor:
        """Class-token attention over pathways, last layer, mean over heads: (B, P); rows sum to <= 1
        (the remainder is the class token attending to itself)."""
        if output.attention is None:
            raise InputError("no attention weights: call forward(..., return_attention=True) with the "
                             "transformer branch enabled")
        return output.attention[-1][:, :, 0, 1:].mean(1)


def _dense_crosstalk_weights(module, state_dict, prefix, *args) -> None:
    """Load hook: a checkpoint saved with the dense (G, P) ``fm_gene_weights`` gives its membership entries."""
    dense = state_dict.pop(prefix + "fm_gene_weights", None)
    if dense is not None and prefix + "fm_member_weights" not in state_dict:
        state_dict[prefix + "fm_member_weights"] = dense.reshape(-1)[module.fm_flat_index.to(dense.device)]


def _crosstalk_defaults(module, state_dict, prefix, *args) -> None:
    """Load hook: checkpoints saved before the read-out and linear pathway terms get their neutral values."""
    if prefix + "fm_factors" in state_dict:
        state_dict.setdefault(prefix + "fm_mix", torch.eye(module.config.n_pathways))
        state_dict.setdefault(prefix + "fm_linear", torch.zeros(module.config.n_pathways, module.config.n_outputs))


class _Placeholder:  # marker: rebuild propagation buffers empty, load_state_dict fills them
    pass


def _empty_propagation(c: PathwayNetConfig) -> nn.Module:
    G, P = c.n_genes, c.n_pathways
    if c.graph_kind == "membership":
        return MembershipPropagation(np.zeros((G, P)), np.zeros(P), np.zeros(G), np.zeros(G))
    return EdgePropagation(np.zeros((2, c.n_edges), np.int64), np.zeros(c.n_edges), np.zeros(G))
