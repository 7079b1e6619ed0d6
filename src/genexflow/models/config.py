"""Every size and switch of :class:`~genexflow.models.PathwayNet` in one dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from genexflow.errors import InputError

TASKS = ("classification", "regression")


@dataclass
class PathwayNetConfig:
    """Configuration of the pathway-aware network.

    Parameters
    ----------
    n_genes : int
        G, input genes (the priors' gene order).
    n_pathways : int
        P, gene sets (pathway tokens; also the co-membership graph).
    n_covariates : int
        C, numeric + one-hot covariates concatenated before the head (0 for none).
    n_outputs : int
        K classes for classification, 1 for regression.
    task : {"classification", "regression"}
    graph_kind : {"membership", "edges"}
        How ``Â H`` is computed: through the gene x pathway membership (co-membership graph) or through an
        edge list (interaction / kNN graph).
    n_edges : int
        Directed edges of an ``"edges"`` graph (sizes the buffers when a saved module is rebuilt).
    use_gcn, gcn_dim, gcn_layers, gcn_dropout
        GCN branch over genes: per-gene feature width F, 2-3 layers, dropout.
    readout_dims : tuple of int
        Readout MLP of the GCN branch (default 512 -> 256).
    use_transformer, d_model, n_heads, transformer_layers, ff_dim, attn_dropout, norm_first
        Pathway-token branch: token width, heads, encoder layers, feed-forward width, dropout (residual and
        feed-forward branches), pre-norm.
    token_gene_dim : int
        GCN channels per gene (a learned projection of the F features) pooled into each pathway token next
        to the expression itself; 0 pools expression only.
    use_autoencoder, variational, ae_hidden, latent_dim, recon_weight, kl_weight
        Autoencoder branch: deterministic or variational, hidden width, latent size, loss weights.
    head_hidden, head_dropout
        Head: Dense -> ``head_hidden`` -> GELU -> Dropout(``head_dropout``) -> K.
    gene_linear, gene_l1, gene_l2
        Wide path: a linear map from every input gene straight to the K outputs, added to the head's
        logits ("wide & deep"). Signals carried by a few genes (chrY / XIST for sex, a handful of marker
        genes) survive it even when pathway pooling averages them away. ``gene_l1`` / ``gene_l2`` penalize
        its weights in the loss (sum |w| and sum w^2, per output), so it behaves like an elastic-net
        logistic (or linear) model trained jointly with the deep branches.
    pathway_interactions : int
        Rank r of a factorization-machine term over pathway scores (0 disables it): logit_k +=
        sum_{j<l} <v_kj, v_kl> s_j s_l, with s the pathway scores from a learned member-gene pooling. It
        models pathway crosstalk (one program's effect depending on another's state, e.g. an XOR of two
        pathway activities) with P·r·K parameters and two thin matrix products.
    pathway_heads : int
        Hidden width of the pathway-specific auxiliary heads (0 disables them): one small classifier (or
        regressor) per pathway that reads only that pathway's member genes (their mean and mean square,
        i.e. activity and spread) and is trained jointly with the main output. Each head's held-out score
        is a "modular" reading of which programs carry the label on their own. The main output, and so
        the ONNX export, is unchanged.
    pathway_head_weight : float
        Weight of the heads' mean loss in the total.
    """

    n_genes: int
    n_pathways: int
    n_covariates: int = 0
    n_outputs: int = 2
    task: str = "classification"
    graph_kind: str = "membership"
    n_edges: int = 0
    # GCN branch
    use_gcn: bool = True
    gcn_dim: int = 8
    gcn_layers: int = 2
    gcn_dropout: float = 0.1
    readout_dims: tuple[int, ...] = (512, 256)
    # pathway-token transformer branch
    use_transformer: bool = True
    d_model: int = 32
    n_heads: int = 2
    transformer_layers: int = 2
    ff_dim: int = 64
    attn_dropout: float = 0.1
    norm_first: bool = False
    token_gene_dim: int = 2
    # autoencoder branch
    use_autoencoder: bool = True
    variational: bool = False
    ae_hidden: int = 256
    latent_dim: int = 32
    recon_weight: float = 0.1
    kl_weight: float = 1e-3
    # head
    head_hidden: int = 128
    head_dropout: float = 0.3
    # wide (gene-level linear) path
    gene_linear: bool = True
    gene_l1: float = 0.0
    gene_l2: float = 0.0
    # pathway crosstalk (factorization machine over pathway scores)
    pathway_interactions: int = 4
    # pathway-specific auxiliary heads (the "modular" reading)
    pathway_heads: int = 0
    pathway_head_weight: float = 0.1

    def __post_init__(self) -> None:
        self.readout_dims = tuple(int(d) for d in self.readout_dims)
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        if self.task == "regression" and self.n_outputs != 1:
            raise InputError(f"a regression head has 1 output, got n_outputs={self.n_outputs}")
        if self.task == "classification" and self.n_outputs < 2:
            raise InputError(f"classification needs n_outputs >= 2 classes, got {self.n_outputs}")
        if self.graph_kind not in ("membership", "edges"):
            raise InputError(f"graph_kind must be 'membership' or 'edges', got {self.graph_kind!r}")
        if self.n_genes < 1 or self.n_pathways < 1 or self.n_covariates < 0:
            raise InputError("need n_genes >= 1, n_pathways >= 1 and n_covariates >= 0")
        if self.use_transformer and self.d_model % self.n_heads:
            raise InputError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.use_gcn and not 1 <= self.gcn_layers <= 6:
            raise InputError(f"gcn_layers must be in 1..6, got {self.gcn_layers}")
        if not (self.use_gcn or self.use_transformer or self.use_autoencoder or self.n_covariates
                or self.gene_linear or self.pathway_interactions):
            raise InputError("enable at least one branch (GCN, transformer, autoencoder, gene_linear or "
                             "pathway_interactions)")
        if self.pathway_interactions < 0:
            raise InputError(f"pathway_interactions must be >= 0, got {self.pathway_interactions}")
        if self.pathway_heads < 0 or self.pathway_head_weight < 0:
            raise InputError("pathway_heads and pathway_head_weight must be >= 0, got "
                             f"{self.pathway_heads}, {self.pathway_head_weight}")
        if self.gene_l1 < 0 or self.gene_l2 < 0:
            raise InputError(f"gene_l1 and gene_l2 must be >= 0, got {self.gene_l1}, {self.gene_l2}")
        for name in ("gcn_dropout", "attn_dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InputError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["readout_dims"] = list(self.readout_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PathwayNetConfig:
        # Configs saved before the wide path and the crosstalk term existed had neither: rebuild them so.
        d = {"gene_linear": False, "pathway_interactions": 0, **d}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown PathwayNetConfig fields: {', '.join(unknown)}")
        return cls(**d)
