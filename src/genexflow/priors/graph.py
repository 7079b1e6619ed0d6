"""Gene graphs for the graph convolution, and their symmetric normalization.

Three sources, one :class:`GeneGraph`:

* **pathway co-membership** (:func:`comembership_graph`): ``A = M W Mᵀ − diag(M w)``, i.e. genes i != j are
  linked with weight ``Σ_k w_k`` over the sets k that contain both. The graph is never materialized: ``Â H``
  is computed through the thin membership matrix ``M`` (G x P) in O(G·P) (see :meth:`GeneGraph.factors`).
* **an interaction edge list** in the STRING format (:func:`read_edge_list`, :func:`edge_list_graph`);
  nothing is downloaded, the user supplies the file.
* **co-expression kNN** (:func:`knn_coexpression_graph`, :class:`CoexpressionKNNGraph`): each gene linked to
  its k most correlated genes in the *training* matrix.

All graphs are undirected with non-negative weights and no self loops; the normalization adds them:
``Â = D^-1/2 (A + I) D^-1/2`` with ``D = diag(rowsum(A + I))`` (:func:`normalized_adjacency`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from genexflow.errors import InputError, NotFittedError
from genexflow.priors.genesets import membership_matrix

GRAPH_KINDS = ("membership", "edges")


def normalized_adjacency(A: Any, add_self_loops: bool = True) -> Any:
    r"""Symmetric GCN normalization :math:`\hat A = D^{-1/2} (A + I) D^{-1/2}`, :math:`D_{ii} = \sum_j (A + I)_{ij}`.

    Pure function; works on a dense ndarray, a scipy sparse matrix or a torch tensor and returns the same
    kind. Rows with zero degree (possible only without self loops) get zeros instead of infinities.

    Parameters
    ----------
    A : array of shape (G, G)
        Symmetric non-negative adjacency without self loops.
    add_self_loops : bool
        Add ``I`` before normalizing (Kipf & Welling's renormalization trick).

    Returns
    -------
    array of shape (G, G)

    Examples
    --------
    >>> import numpy as np
    >>> normalized_adjacency(np.array([[0.0, 1.0], [1.0, 0.0]])).tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    if sp.issparse(A):
        A = sp.csr_matrix(A, dtype=np.float64 if A.dtype == np.float64 else np.float32)
        if add_self_loops:
            A = A + sp.identity(A.shape[0], dtype=A.dtype, format="csr")
        deg = np.asarray(A.sum(axis=1)).ravel()
        s = np.zeros_like(deg)
        np.divide(1.0, np.sqrt(deg), out=s, where=deg > 0)
        Dm = sp.diags(s)
        return sp.csr_matrix(Dm @ A @ Dm)
    if isinstance(A, torch.Tensor):
        if add_self_loops:
            A = A + torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        deg = A.sum(dim=1)
        s = torch.where(deg > 0, deg.clamp_min(1e-30).rsqrt(), torch.zeros_like(deg))
        return s[:, None] * A * s[None, :]
    A = np.asarray(A)
    if add_self_loops:
        A = A + np.eye(A.shape[0], dtype=A.dtype)
    deg = A.sum(axis=1)
    s = np.zeros_like(deg)
    np.divide(1.0, np.sqrt(deg), out=s, where=deg > 0)
    return s[:, None] * A * s[None, :]


@dataclass
class GeneGraph:
    """An undirected, weighted gene graph over a fixed gene order.

    Exactly one representation is set, by ``kind``:

    * ``"membership"``: ``membership`` (G, P) binary and ``set_weights`` (P,) define
      ``A = M diag(w) Mᵀ − diag(M w)`` (pathway co-membership; never materialized).
    * ``"edges"``: ``edge_index`` (2, E) int64 and ``edge_weight`` (E,) list every undirected edge in both
      directions (i -> j and j -> i), without self loops or duplicates.
    """

    genes: list[str]
    kind: str
    membership: np.ndarray | None = None
    set_weights: np.ndarray | None = None
    pathways: list[str] | None = None
    edge_index: np.ndarray | None = None
    edge_weight: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.genes = [str(g) for g in self.genes]
        if self.kind not in GRAPH_KINDS:
            raise InputError(f"unknown graph kind {self.kind!r}; use one of {', '.join(GRAPH_KINDS)}")
        G = len(self.genes)
        if self.kind == "membership":
            if self.membership is None or self.membership.shape[0] != G:
                raise InputError(f"membership graph needs a ({G}, P) membership matrix")
            P = self.membership.shape[1]
            if self.set_weights is None:
                self.set_weights = np.ones(P, np.float32)
            self.set_weights = np.asarray(self.set_weights, np.float32)
            if self.set_weights.shape != (P,) or (self.set_weights < 0).any():
                raise InputError(f"set_weights must be {P} non-negative numbers")
        else:
            ei = np.asarray(self.edge_index, dtype=np.int64).reshape(2, -1)
            ew = np.asarray(self.edge_weight, dtype=np.float32).ravel()
            if ei.shape[1] != ew.shape[0]:
                raise InputError(f"{ei.shape[1]} edges but {ew.shape[0]} edge weights")
            if ei.size and (ei.min() < 0 or ei.max() >= G):
                raise InputError(f"edge_index refers to genes outside 0..{G - 1}")
            if (ew < 0).any():
                raise InputError("edge weights must be non-negative")
            self.edge_index, self.edge_weight = ei, ew

    # ------------------------------------------------------------------ views
    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_edges(self) -> int:
        """Number of directed edges (each undirected edge counts twice); computed in O(P) for membership."""
        if self.kind == "edges":
            return int(self.edge_index.shape[1])
        sizes = self.membership.sum(0).astype(np.int64)
        # Upper bound: pairs that share several sets count once per set.
        return int((sizes * (sizes - 1)).sum())

    def adjacency(self) -> sp.csr_matrix:
        """``A`` (G, G) as a scipy CSR matrix, without self loops. Materializes the co-membership graph:
        use it for checks and small graphs, the model never needs it."""
        G = self.n_genes
        if self.kind == "edges":
            return sp.csr_matrix((self.edge_weight, (self.edge_index[0], self.edge_index[1])), shape=(G, G))
        M = sp.csr_matrix(self.membership.astype(np.float64))
        A = (M @ sp.diags(self.set_weights.astype(np.float64)) @ M.T).tocsr()
        A.setdiag(0)
        A.eliminate_zeros()
        return A.astype(np.float32)

    def degree(self) -> np.ndarray:
        """Degrees of ``A + I``, shape (G,), computed without materializing ``A`` (O(G·P) or O(E))."""
        if self.kind == "edges":
            deg = np.bincount(self.edge_index[0], weights=self.edge_weight, minlength=self.n_genes)
        else:
            M = self.membership.astype(np.float64)
            w = self.set_weights.astype(np.float64)
            deg = M @ (w * M.sum(0)) - M @ w
        return (deg + 1.0).astype(np.float64)

    def factors(self) -> dict[str, np.ndarray]:
        """The pieces of ``Â H`` in factorized form (float32).

        For ``kind="membership"`` returns ``membership`` (G, P), ``set_weights`` (P,), ``scale`` (G,) and
        ``self_weight`` (G,) such that, with ``s = scale``::

            Â H = s ⊙ (M (w ⊙ (Mᵀ (s ⊙ H)))) + self_weight ⊙ H,   self_weight = s² ⊙ (1 − M w)

        For ``kind="edges"`` returns ``edge_index`` (2, E), ``edge_weight`` (E,) already normalized
        (``s_i a_ij s_j``) and ``self_weight`` = s² (G,), so ``(Â H)_i = Σ_(j->i) ŵ_ji H_j + s_i² H_i``.
        """
        s = 1.0 / np.sqrt(self.degree())
        if self.kind == "membership":
            M = self.membership.astype(np.float32)
            c = M.astype(np.float64) @ self.set_weights.astype(np.float64)
            return {"membership": M, "set_weights": self.set_weights.astype(np.float32),
                    "scale": s.astype(np.float32), "self_weight": (s * s * (1.0 - c)).astype(np.float32)}
        src, dst = self.edge_index
        w = s[src] * self.edge_weight.astype(np.float64) * s[dst]
        return {"edge_index": self.edge_index.copy(), "edge_weight": w.astype(np.float32),
                "self_weight": (s * s).astype(np.float32)}

    def propagate(self, H: np.ndarray) -> np.ndarray:
        """Reference ``Â H`` through the materialized sparse ``Â`` (for tests and small graphs).

        H : ndarray of shape (G,) or (G, F). Returns the same shape.
        """
        return np.asarray(normalized_adjacency(self.adjacency().astype(np.float64)) @ np.asarray(H, np.float64))

    def subgraph(self, genes: Sequence[str]) -> GeneGraph:
        """The graph induced on ``genes`` (in that order; genes not in this graph become isolated)."""
        pos = pd.Index(self.genes).get_indexer(list(map(str, genes)))
        if self.kind == "membership":
            M = np.zeros((len(pos), self.membership.shape[1]), self.membership.dtype)
            M[pos >= 0] = self.membership[pos[pos >= 0]]
            return GeneGraph(list(genes), "membership", membership=M, set_weights=self.set_weights,
                             pathways=self.pathways, meta=dict(self.meta))
        new = np.full(self.n_genes, -1, np.int64)
        new[pos[pos >= 0]] = np.flatnonzero(pos >= 0)
        ei = new[self.edge_index]
        keep = (ei >= 0).all(0)
        return GeneGraph(list(genes), "edges", edge_index=ei[:, keep], edge_weight=self.edge_weight[keep],
                         meta=dict(self.meta))


# ---------------------------------------------------------------------- pathway co-membership
def comembership_graph(
    sets: Mapping[str, Sequence[str]] | np.ndarray,
    genes: Sequence[str],
    weighting: str | np.ndarray = "inverse_size",
    pathways: Sequence[str] | None = None,
) -> GeneGraph:
    """Weighted pathway co-membership graph: ``A_ij = Σ_k w_k M_ik M_jk`` for i != j.

    Parameters
    ----------
    sets : mapping of str to sequence of str, or ndarray of shape (G, P)
        Gene sets (restricted to ``genes`` beforehand) or a ready membership matrix.
    genes : sequence of str, length G
    weighting : {"inverse_size", "count"} or ndarray of shape (P,)
        ``"inverse_size"``: ``w_k = 1/|S_k|``, so every set adds about 1 to each member's degree and large
        sets do not swamp the graph (default). ``"count"``: ``w_k = 1``, the number of shared sets.
    """
    if isinstance(sets, np.ndarray):
        M = np.asarray(sets, dtype=np.float32)  # no copy for the float32 matrix of build_priors
        names = list(pathways) if pathways is not None else [f"set{k}" for k in range(M.shape[1])]
    else:
        names = list(sets)
        M = membership_matrix(sets, genes)
    if M.shape[0] != len(genes):
        raise InputError(f"membership has {M.shape[0]} rows for {len(genes)} genes")
    if M.shape[1] == 0:
        raise InputError("no gene sets left for the co-membership graph; lower min_size or use other sets")
    sizes = M.sum(0)
    if isinstance(weighting, str):
        if weighting == "inverse_size":
            w = np.divide(1.0, sizes, out=np.zeros_like(sizes), where=sizes > 0)
        elif weighting == "count":
            w = np.ones_like(sizes)
        else:
            raise InputError(f"unknown weighting {weighting!r}; use 'inverse_size', 'count' or an array")
    else:
        w = np.asarray(weighting, np.float32)
    return GeneGraph(list(genes), "membership", membership=M, set_weights=w, pathways=names,
                     meta={"source": "comembership", "weighting": weighting if isinstance(weighting, str) else "custom"})


# ---------------------------------------------------------------------- STRING-format edge lists
_TAXON = re.compile(r"^\d+\.")


def _read_id_map(id_map: Mapping[str, str] | str | Path | pd.Series) -> Mapping[str, str]:
    if isinstance(id_map, (str, Path)):
        p = Path(id_map)
        if not p.is_file():
            raise InputError(f"ID map file not found: {p}; give a two-column file (from_id, to_id)")
        df = pd.read_csv(p, sep=None, engine="python", dtype=str, header=0)
        if df.shape[1] < 2:
            raise InputError(f"ID map {p} needs two columns (from_id, to_id)")
        return dict(zip(df.iloc[:, 0].str.strip(), df.iloc[:, 1].str.strip(), strict=True))
    if isinstance(id_map, pd.Series):
        return id_map.astype(str).to_dict()
    return id_map


def read_edge_list(
    path: str | Path,
    min_score: float = 400,
    id_map: Mapping[str, str] | str | Path | pd.Series | None = None,
    strip_taxon: bool = True,
) -> pd.DataFrame:
    """Read an interaction edge list in the STRING format.

    The file is whitespace- or tab-separated with a header line whose first three columns are
    ``protein1 protein2 combined_score`` (other names are accepted; the first three columns are used;
    gzip is read transparently). Scores above 1 are taken as STRING's 0-1000 scale and divided by 1000.

    Parameters
    ----------
    path : str or Path
    min_score : float
        Keep edges with ``combined_score >= min_score`` (raw file units; 400 = STRING "medium confidence").
    id_map : mapping, Series or path to a two-column file, optional
        Maps the file's IDs (after the taxon prefix is stripped) to the cohort's gene IDs, e.g. Ensembl
        protein -> symbol. Unmapped IDs are dropped.
    strip_taxon : bool
        Remove a leading ``9606.``-style taxon prefix from STRING protein IDs.

    Returns
    -------
    DataFrame with columns ``gene1``, ``gene2``, ``weight`` (float32 in [0, 1] for STRING scores)
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"edge-list file not found: {p}")
    df = pd.read_csv(p, sep=r"\s+", header=0, dtype={0: str, 1: str}, engine="c", comment=None)
    if df.shape[1] < 3:
        raise InputError(f"{p}: expected a header and 3 columns 'protein1 protein2 combined_score'")
    df = df.iloc[:, :3]
    df.columns = ["gene1", "gene2", "weight"]
    df["weight"] = pd.to_numeric(df["weight"], errors="coerce")
    if df["weight"].isna().any():
        bad = int(df["weight"].isna().sum())
        raise InputError(f"{p}: {bad} rows with a non-numeric combined_score")
    df = df[df["weight"] >= min_score]
    for c in ("gene1", "gene2"):
        col = df[c].astype(str)
        if strip_taxon:
            col = col.str.replace(_TAXON, "", regex=True)
        if id_map is not None:
            col = col.map(_read_id_map(id_map))
        df[c] = col
    df = df.dropna()
    if len(df) and df["weight"].max() > 1:
        df["weight"] = df["weight"] / 1000.0
    df["weight"] = df["weight"].astype(np.float32)
    return df.reset_index(drop=True)


def edge_list_graph(
    edges: pd.DataFrame | str | Path,
    genes: Sequence[str],
    min_score: float = 400,
    id_map: Mapping[str, str] | str | Path | pd.Series | None = None,
) -> GeneGraph:
    """Gene graph from an interaction edge list (a :func:`read_edge_list` frame or a STRING-format file).

    Edges whose genes are not in ``genes`` are dropped; the graph is symmetrized (an edge listed in both
    directions, or several times after ID mapping, keeps its maximum weight) and self loops are removed.
    """
    if not isinstance(edges, pd.DataFrame):
        edges = read_edge_list(edges, min_score=min_score, id_map=id_map)
    index = pd.Index(list(map(str, genes)))
    i = index.get_indexer(edges["gene1"].astype(str))
    j = index.get_indexer(edges["gene2"].astype(str))
    keep = (i >= 0) & (j >= 0) & (i != j)
    if not keep.any():
        raise InputError(
            f"none of {len(edges)} edges connect two cohort genes; check the ID type "
            f"(e.g. pass id_map to map STRING protein IDs to gene symbols)"
        )
    w = edges["weight"].to_numpy(np.float32)[keep]
    # A pair listed twice (or mapped twice) keeps its largest score instead of the sum.
    A = _max_duplicates(i[keep], j[keep], w, len(index))
    A = A.maximum(A.T).tocoo()
    return GeneGraph(list(index), "edges", edge_index=np.vstack([A.row, A.col]).astype(np.int64),
                     edge_weight=A.data.astype(np.float32),
                     meta={"source": "edge_list", "n_edges_in_file": int(len(edges)),
                           "n_edges_kept": int(A.nnz)})


def _max_duplicates(i: np.ndarray, j: np.ndarray, w: np.ndarray, n: int) -> sp.csr_matrix:
    order = np.lexsort((-w, j, i))  # per (i, j) the largest weight first
    i, j, w = i[order], j[order], w[order]
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return sp.csr_matrix((w[first], (i[first], j[first])), shape=(n, n))


# ---------------------------------------------------------------------- co-expression kNN
def knn_coexpression_graph(
    X: np.ndarray,
    genes: Sequence[str],
    k: int = 10,
    absolute: bool = False,
    block_size: int = 1024,
) -> GeneGraph:
    """Co-expression kNN graph: each gene linked to the ``k`` genes with the highest Pearson correlation.

    Fit it on the training samples only. Edge weight = correlation (clipped at 0; ``|r|`` with
    ``absolute=True``); the graph is symmetrized with the maximum. Correlations are computed in blocks of
    ``block_size`` genes, so memory stays O(block_size · G) instead of O(G²).

    Parameters
    ----------
    X : ndarray of shape (n_samples, G)
        Preprocessed (log-scale) training expression; NaNs are treated as the gene mean.
    genes : sequence of str, length G
    k : int
        Neighbours per gene (before symmetrization).
    """
    X = np.asarray(X, dtype=np.float64)
    n, G = X.shape
    if len(genes) != G:
        raise InputError(f"{G} matrix columns but {len(genes)} genes")
    if n < 3:
        raise InputError("a co-expression graph needs at least 3 training samples")
    if not 1 <= k < G:
        raise InputError(f"k must be in 1..{G - 1}, got {k}")
    mu = np.nanmean(X, axis=0)
    Z = np.where(np.isnan(X), mu, X) - mu
    sd = np.sqrt((Z * Z).sum(0))
    Z = np.divide(Z, sd, out=np.zeros_like(Z), where=sd > 0).astype(np.float32)
    rows, cols, vals = [], [], []
    for start in range(0, G, block_size):
        stop = min(start + block_size, G)
        C = Z[:, start:stop].T @ Z  # (b, G) correlations
        if absolute:
            np.abs(C, out=C)
        C[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # no self edges
        nb = np.argpartition(-C, k - 1, axis=1)[:, :k]
        v = np.take_along_axis(C, nb, axis=1)
        rows.append(np.repeat(np.arange(start, stop), k))
        cols.append(nb.ravel())
        vals.append(v.ravel())
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.clip(np.concatenate(vals), 0, None)
    keep = v > 0
    A = sp.csr_matrix((v[keep].astype(np.float32), (r[keep], c[keep])), shape=(G, G))
    A = A.maximum(A.T).tocoo()
    return GeneGraph(list(map(str, genes)), "edges", edge_index=np.vstack([A.row, A.col]).astype(np.int64),
                     edge_weight=A.data.astype(np.float32), meta={"source": "coexpression_knn", "k": k})


class CoexpressionKNNGraph:
    """Estimator wrapper around :func:`knn_coexpression_graph` (fit on training data, keep ``graph_``).

    Parameters
    ----------
    k : int
        Neighbours per gene.
    absolute : bool
        Rank by ``|r|`` instead of ``r``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(20, 6))
    >>> CoexpressionKNNGraph(k=2).fit(X, genes=list("abcdef")).graph_.n_genes
    6
    """

    def __init__(self, k: int = 10, absolute: bool = False):
        self.k = k
        self.absolute = absolute

    def fit(self, X: Any, y: Any = None, genes: Sequence[str] | None = None) -> CoexpressionKNNGraph:
        if isinstance(X, pd.DataFrame):
            genes = list(X.columns) if genes is None else genes
            X = X.to_numpy()
        elif hasattr(X, "frame") and hasattr(X, "genes"):  # a Cohort
            genes = list(X.genes) if genes is None else genes
            X = X.X
        if genes is None:
            raise InputError("pass genes= (or a DataFrame / Cohort) to name the graph's genes")
        self.graph_ = knn_coexpression_graph(X, genes, k=self.k, absolute=self.absolute)
        self.n_features_in_ = len(genes)
        return self

    @property
    def graph(self) -> GeneGraph:
        if not hasattr(self, "graph_"):
            raise NotFittedError("CoexpressionKNNGraph is not fitted; call fit(X_train) first")
        return self.graph_
