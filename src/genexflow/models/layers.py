"""Layers of the pathway network: graph propagation (factorized and edge-list forms), the graph
convolution, pathway pooling and a self-attention encoder layer that returns its attention weights.

Everything here is ONNX-exportable: matrix products, ``index_select`` / ``scatter_add`` and elementwise ops
only (no ``torch.sparse``, no data-dependent Python control flow). Gene features are kept **genes last**,
``(B, F, G)``: the input ``(B, G)`` is a view of it, ``Â H`` over the whole batch is one
``(B·F, G) x (G, P)`` product with the adjacency shared across the batch (no per-sample graph copies), and
the constant factor is the right-hand operand (ONNX Runtime pre-packs it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F


def dense_propagation(A_hat: Tensor, H: Tensor) -> Tensor:
    """Reference ``Â H`` with a dense normalized adjacency (small graphs and tests only), applied to the
    gene axis of row-stacked signals: ``(Â Hᵀ)ᵀ = H Âᵀ``.

    Shapes: ``A_hat`` (G, G), ``H`` (N, G) -> (N, G).
    """
    return H @ A_hat.t()


class MembershipPropagation(nn.Module):
    r"""Exact ``Â H`` for the pathway co-membership graph in O(G·P), without forming ``Â``.

    With ``A = M W Mᵀ − diag(M w)`` (``W = diag(w)``) and ``s = diag(D)^{-1/2}`` of ``A + I``:

    .. math::

        \hat A H = s \odot \big(M (w \odot (M^\top (s \odot H)))\big) + s^2 \odot (1 - M w) \odot H
                  = B (B^\top H) + r \odot H, \qquad B = \mathrm{diag}(s)\, M\, W^{1/2},\; r = s^2 (1 - M w)

    i.e. two thin dense products (G x P and P x G) plus a diagonal term; the scalings are folded into the
    buffer ``B`` once, so a forward pass is two GEMMs and one fused multiply-add. Signals are rows:
    the module maps ``X`` (N, G) to ``(Â Xᵀ)ᵀ = (X B) Bᵀ + X ⊙ r`` (``Â`` is symmetric).

    Parameters
    ----------
    membership : ndarray of shape (G, P)
    set_weights : ndarray of shape (P,)
    scale : ndarray of shape (G,)
        ``s``.
    self_weight : ndarray of shape (G,)
        ``r = s² (1 − M w)``.

    Shapes
    ------
    - input ``H``: (N, G) (N = batch x features, flattened)
    - output: (N, G)
    """

    def __init__(self, membership: np.ndarray, set_weights: np.ndarray, scale: np.ndarray,
                 self_weight: np.ndarray):
        super().__init__()
        B = (np.asarray(scale, np.float64)[:, None] * np.asarray(membership, np.float64)
             * np.sqrt(np.asarray(set_weights, np.float64))[None, :])
        self.register_buffer("basis", torch.as_tensor(B.astype(np.float32)))
        self.register_buffer("self_weight", torch.as_tensor(np.asarray(self_weight, np.float32)))

    def forward(self, H: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():  # the dense form: two GEMMs and one fused multiply-add
            return torch.addcmul((H @ self.basis) @ self.basis.t(), H, self.self_weight)
        # Only member genes have non-zero basis rows (KEGG covers ~5,000 of 20,000 genes): the same
        # products over those rows alone, the rest of Â H is the diagonal term.
        idx, Bm, BmT = self._members()
        return (H * self.self_weight).index_add_(1, idx, (H.index_select(1, idx) @ Bm) @ BmT)

    def transpose(self, H: Tensor) -> Tensor:
        """``Âᵀ H``; ``Â`` is symmetric here, so the same product."""
        return self.forward(H)

    def _members(self) -> tuple[Tensor, Tensor, Tensor]:
        """(member gene indices, ``B`` over them (Gm, P), its transpose (P, Gm)), cached per ``basis`` value."""
        key = (self.basis.data_ptr(), self.basis._version, self.basis.device)
        if getattr(self, "_member_key", None) != key:
            idx = member_rows(self.basis)
            Bm = self.basis.index_select(0, idx)
            self._member_cache = (idx, Bm, Bm.t().contiguous())
            self._member_key = key
        return self._member_cache


class EdgePropagation(nn.Module):
    r"""Exact ``Â H`` for an edge-list graph as gather + ``scatter_add`` (ONNX: Gather + ScatterElements-add).

    .. math::

        (\hat A H)_i = \sum_{(j \to i)} \hat w_{ji} H_j + s_i^2 H_i, \qquad \hat w_{ji} = s_j a_{ji} s_i

    Costs O(E·N) time and memory (the gathered messages); prune the edge list (``min_score``, smaller k)
    for large graphs. ``torch.sparse.mm`` would be faster on CPU but does not export to ONNX.

    Parameters
    ----------
    edge_index : ndarray of shape (2, E)
        ``(source, target)`` rows, both directions of every undirected edge.
    edge_weight : ndarray of shape (E,)
        Normalized weights ``ŵ``.
    self_weight : ndarray of shape (G,)
        ``s²``.

    Shapes
    ------
    - input ``H``: (N, G)
    - output: (N, G)
    """

    def __init__(self, edge_index: np.ndarray, edge_weight: np.ndarray, self_weight: np.ndarray):
        super().__init__()
        ei = torch.as_tensor(np.asarray(edge_index, np.int64))
        self.register_buffer("src", ei[0].contiguous())
        self.register_buffer("dst", ei[1].contiguous())
        self.register_buffer("edge_weight", torch.as_tensor(np.asarray(edge_weight, np.float32)))
        self.register_buffer("self_weight", torch.as_tensor(np.asarray(self_weight, np.float32)))

    def forward(self, H: Tensor) -> Tensor:
        return self._gather_scatter(H, self.src, self.dst)

    def transpose(self, H: Tensor) -> Tensor:
        """``Âᵀ H`` (messages run target -> source); equals ``Â H`` for the symmetric graphs built here."""
        return self._gather_scatter(H, self.dst, self.src)

    def _gather_scatter(self, H: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        messages = H.index_select(1, src) * self.edge_weight  # (N, E)
        # scatter_add, not index_add: both ONNX exporters turn it into ScatterElements(reduction="add"),
        # which sums repeated targets; the TorchScript exporter's index_add keeps only one of them.
        index = dst[None, :].expand(H.shape[0], -1)
        return torch.addcmul(torch.zeros_like(H).scatter_add(1, index, messages), H, self.self_weight)


def member_rows(matrix: Tensor) -> Tensor:
    """Indices (int64) of the rows of a (G, P) gene x pathway matrix that have a non-zero entry."""
    return torch.nonzero(matrix.detach().ne(0).any(1)).reshape(-1)


def channel_mix(weight: Tensor, H: Tensor) -> Tensor:
    """``weight @ H`` for a small (F_out, F) weight and genes-last features H (B, F, G) -> (B, F_out, G).

    As one batched product over the expanded weight: ``weight @ H`` with a 2-D left operand folds the batch
    into the rows of the *right* operand, which costs a transposed copy of H and of the result (each
    B·F·G floats, ~14% of a training step at G = 20,000).
    """
    return torch.bmm(weight.expand(H.shape[0], -1, -1), H)


def make_propagation(graph) -> nn.Module:
    """The propagation module for a :class:`~genexflow.priors.GeneGraph` (membership or edges)."""
    f = graph.factors()
    if graph.kind == "membership":
        return MembershipPropagation(f["membership"], f["set_weights"], f["scale"], f["self_weight"])
    return EdgePropagation(f["edge_index"], f["edge_weight"], f["self_weight"])


class GraphConv(nn.Module):
    r"""Residual graph convolution over genes with a shared adjacency.

    .. math::

        H^{(l+1)} = H^{(l)} + \mathrm{Dropout}\big(\mathrm{GELU}(\hat A H^{(l)} \Theta + b)\big)

    ``Â`` is applied by the ``propagate`` module passed to :meth:`forward`
    (:class:`MembershipPropagation` or :class:`EdgePropagation`), the same for every sample and layer.

    In training with autograd on, the layer runs as one fused autograd function (``fused=True``) that keeps
    only the pre-activation ``Z`` and the float dropout scale (0 or 1/(1-p)) for backward (instead of ~8
    (B, F, G) temporaries): at G = 20,000 and batch 32 that is ~60 MB instead of ~180 MB per layer. Evaluation,
    export and ``fused=False`` run the same formula as plain ops.

    Parameters
    ----------
    dim : int
        Feature width F (input = output, for the residual).
    dropout : float

    Shapes
    ------
    - input ``H``: (B, F, G), genes last
    - output: (B, F, G)
    """

    def __init__(self, dim: int, dropout: float = 0.1):
        super().__init__()
        self.lin = nn.Linear(dim, dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.dropout = FastDropout(dropout)
        self.fused = True

    def forward(self, H: Tensor, propagate: nn.Module) -> Tensor:
        if self.fused and self.training and torch.is_grad_enabled():
            return _FusedGraphConv.apply(H, self.lin.weight, self.bias, propagate, self.dropout.p)
        B, Fd, G = H.shape
        # Mix the F channels of every gene (Θ H), then propagate the (B·F, G) block in one product.
        Z = propagate(channel_mix(self.lin.weight, H).reshape(-1, G)).reshape(B, Fd, G)
        # In place: the propagation output is not needed by its backward, so this saves a (B, F, G) copy.
        return H + self.dropout(F.gelu(Z.add_(self.bias[:, None])))


class _FusedGraphConv(torch.autograd.Function):
    """``Y = H + mask ⊙ GELU(Â (Θ H) + b) / (1 − p)`` (per sample, genes last) with a hand-written backward:

    ``dZ = GELU'(Z) ⊙ mask ⊙ dY / (1 − p)``, ``db = Σ dZ``, ``dU = Âᵀ dZ`` (U = Θ H),
    ``dΘ = Σ_b dU_b H_bᵀ``, ``dH = dY + Θᵀ dU``.
    """

    @staticmethod
    def forward(ctx, H: Tensor, weight: Tensor, bias: Tensor, propagate: nn.Module, p: float) -> Tensor:
        B, Fd, G = H.shape
        Z = propagate(channel_mix(weight, H).reshape(-1, G)).reshape(B, Fd, G).add_(bias[:, None])
        act = F.gelu(Z)
        if p > 0.0:
            # The mask as floats 0 or 1/(1-p), written over the uniform draws in place: products with a
            # bool mask pay a bool -> float conversion per use (forward and backward).
            scale = torch.rand_like(Z)
            torch.ge(scale, p, out=scale).mul_(1.0 / (1.0 - p))
            act.mul_(scale)
        else:
            scale = None
        ctx.propagate = propagate
        ctx.save_for_backward(H, weight, Z, scale)
        return act.add_(H)

    @staticmethod
    def backward(ctx, dY: Tensor):
        H, weight, Z, scale = ctx.saved_tensors
        B, Fd, G = H.shape
        dA = dY if scale is None else dY * scale
        dZ = torch.ops.aten.gelu_backward(dA, Z)
        db = dZ.sum(dim=(0, 2))
        dU = ctx.propagate.transpose(dZ.reshape(-1, G)).reshape(B, Fd, G)
        dW = (dU @ H.transpose(1, 2)).sum(0)
        dH = channel_mix(weight.t(), dU).add_(dY)
        return dH, dW, db, None, None


class PathwayPooling(nn.Module):
    r"""Learned pooling of member genes into one vector per pathway.

    Weights are a softmax of learned gene logits ``u`` restricted to each set's members:

    .. math::

        \alpha_{gk} = \frac{M_{gk} e^{u_g}}{\sum_{g'} M_{g'k} e^{u_{g'}}}, \qquad
        t_k = \sum_g \alpha_{gk} h_g = \frac{\big(M^\top (e^{u} \odot H)\big)_k}{(M^\top e^{u})_k}

    computed in the right-hand form: the fixed 0/1 ``M`` is never multiplied elementwise (no G x P
    temporaries), only the gene features are scaled. With ``u = 0`` (the initialization) ``t_k`` is the
    mean over members, i.e. the pathway score.

    Shapes
    ------
    - input ``H``: (B, C, G)
    - output: (B, C, P)
    """

    def __init__(self, n_genes: int):
        super().__init__()
        self.gene_logits = nn.Parameter(torch.zeros(n_genes))

    def gene_weights(self) -> Tensor:
        """``e^{u - max u}`` (G,); the shift keeps exp finite and cancels in the ratio."""
        return torch.exp(self.gene_logits - self.gene_logits.max())

    def weights(self, membership: Tensor) -> Tensor:
        """``α`` of shape (G, P); columns sum to 1 for non-empty sets (for inspection, not used in forward)."""
        e = membership * self.gene_weights()[:, None]
        return e / e.sum(0, keepdim=True).clamp_min(1e-12)

    def forward(self, H: Tensor, membership: Tensor) -> Tensor:
        B, C, G = H.shape
        # Over the member genes only (rows of M with a 1): the same sums without the all-zero rows.
        idx, Mm = self._members(membership)
        e = self.gene_weights().index_select(0, idx)  # (Gm,)
        norm = (e @ Mm).clamp_min(1e-12)  # (P,)
        pooled = (H.reshape(-1, G).index_select(1, idx) * e) @ Mm  # (B·C, P)
        return (pooled / norm).reshape(B, C, -1)

    def _members(self, membership: Tensor) -> tuple[Tensor, Tensor]:
        key = (membership.data_ptr(), membership._version, membership.device, membership.shape)
        if getattr(self, "_member_key", None) != key:
            idx = member_rows(membership)
            self._member_cache = (idx, membership.index_select(0, idx))
            self._member_key = key
        return self._member_cache


class FastDropout(nn.Module):
    """Inverted dropout with a ``torch.rand`` mask: same distribution as ``nn.Dropout`` at about half the CPU
    cost (``bernoulli_`` is the slow part of ``nn.Dropout`` on CPU). Identity in eval mode, so it exports
    as nothing.

    Shapes: any -> same.
    """

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        # The mask as floats 0 or 1/(1-p) over the uniform draws in place: one float product forward and
        # backward (a bool mask costs a bool -> float conversion in each).
        scale = torch.rand_like(x)
        torch.ge(scale, self.p, out=scale).mul_(1.0 / (1.0 - self.p))
        return x * scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MultiHeadSelfAttention(nn.Module):
    r"""Multi-head self-attention whose weights can be returned (and that still exports to ONNX).

    .. math::

        \mathrm{softmax}\Big(\frac{Q K^\top}{\sqrt{d_h}}\Big) V, \quad Q, K, V = X W_Q, X W_K, X W_V

    Without ``need_weights`` the fused ``scaled_dot_product_attention`` kernel runs (about half the CPU time
    of the explicit form, and no (B, h, T, T) tensor is kept for backward); with ``need_weights`` the
    product is written out so the softmax weights can be returned. Both compute the same function.

    Shapes
    ------
    - input ``X``: (B, T, d_model)
    - output: (B, T, d_model) and, with ``need_weights``, attention weights (B, n_heads, T, T) whose rows
      sum to 1 (else ``None``)
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, X: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        B, T, D = X.shape
        q, k, v = self.qkv(X).reshape(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4).unbind(0)
        attn = None
        # No dropout on the weights: a Bernoulli mask over (B, heads, T, T) costs more than the whole
        # encoder on CPU for hundreds of pathway tokens; the residual branches carry the dropout.
        if need_weights:
            # Scale q (B, h, T, d_h) rather than the (B, h, T, T) scores: one T x T temporary fewer.
            attn = torch.softmax((q * (1.0 / math.sqrt(self.d_head))) @ k.transpose(-1, -2), dim=-1)
            y = attn @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(B, T, D)), attn


class TransformerEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer``-style block (self-attention + GELU feed-forward, residuals and
    LayerNorm, post-norm by default) that can also return the attention weights.

    Shapes
    ------
    - input: (B, T, d_model)
    - output: (B, T, d_model) and attention (B, n_heads, T, T) when ``need_weights`` (else ``None``)
    """

    def __init__(self, d_model: int, n_heads: int, ff_dim: int, dropout: float = 0.1, norm_first: bool = False):
        super().__init__()
        self.attn = MultiHeadSelfAttention(d_model, n_heads)
        # Residual dropout on the two sub-layer outputs, as in Vaswani et al. (2017); no dropout inside the
        # feed-forward block or on the attention weights (each costs ~10% of the encoder on CPU).
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), nn.GELU(), nn.Linear(ff_dim, d_model))
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop1 = FastDropout(dropout)
        self.drop2 = FastDropout(dropout)
        self.norm_first = norm_first

    def forward(self, X: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        if self.norm_first:
            a, w = self.attn(self.norm1(X), need_weights)
            X = X + self.drop1(a)
            X = X + self.drop2(self.ff(self.norm2(X)))
        else:
            a, w = self.attn(X, need_weights)
            X = self.norm1(X + self.drop1(a))
            X = self.norm2(X + self.drop2(self.ff(X)))
        return X, w
