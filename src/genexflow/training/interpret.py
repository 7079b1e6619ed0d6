"""Interpretability and biological validation of a trained model.

* **Attention per pathway**: the class token's attention over pathway tokens (last layer, mean over
  heads), averaged over samples.
* **Gene attributions**: gradient saliency (``|d output / d x_g|``) and Integrated Gradients
  (``(x_g - x'_g) * mean_alpha d output(x' + alpha (x - x')) / d x_g``, baseline ``x' = 0``: the training
  mean after scaling), both with captum, for the predicted class (or the regression output).
* **SHAP** (expected gradients, ``shap.GradientExplainer``) on a random sample of cases against a
  background sample of training cases.
* **Pathway-level attributions**: mean absolute gene attribution over each set's member genes,
  ``a_k = (1/|S_k|) sum_{g in S_k} mean_i |A_ig|``.
* **Enrichment** of the top-attributed genes in each gene set: one-sided hypergeometric test
  (universe = the model's genes) with Benjamini-Hochberg FDR.
* **precision@k** of planted pathways (simulator ground truth) among the top-ranked pathways.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import false_discovery_control, hypergeom

from genexflow.errors import InputError
from genexflow.training._pyfunc import SingleInputModel
from genexflow.training.trainer import TensorData, call_module, predict_module, task_output

METHODS = ("attention", "saliency", "integrated_gradients", "shap")


# --------------------------------------------------------------------------------------------- forward wrappers
def _forward_fn(module, task: str):
    """``f(x, c) -> (B, K) logits`` (or (B, 1) predictions) for captum."""

    def f(x, c):
        out = task_output(call_module(module, x, c))
        return out if task == "classification" else out.reshape(-1, 1)

    return f


def _targets(module, data: TensorData, task: str, target: str | int | None, batch_size: int = 256):
    """Per-sample output index to explain: predicted class (default), a fixed class, or 0 (regression)."""
    if task != "classification":
        return torch.zeros(len(data), dtype=torch.long)
    if isinstance(target, int | np.integer):
        return torch.full((len(data),), int(target), dtype=torch.long)
    if target == "true" and data.y is not None:
        return torch.as_tensor(data.y.astype(np.int64))
    preds = []
    with torch.no_grad():
        for lo in range(0, len(data), batch_size):
            x = torch.as_tensor(data.X[lo:lo + batch_size])
            c = torch.as_tensor(data.covariates[lo:lo + batch_size])
            preds.append(task_output(call_module(module, x, c)).argmax(1))
    return torch.cat(preds)


def gene_attributions(module, data: TensorData, task: str, method: str = "integrated_gradients",
                      target: str | int | None = None, n_steps: int = 32, internal_batch_size: int = 256,
                      background: TensorData | None = None, shap_samples: int = 100, seed: int = 0) -> np.ndarray:
    """Per-sample, per-gene attributions.

    Parameters
    ----------
    module : torch.nn.Module
        Trained network taking ``(expression, covariates)``.
    data : TensorData
        Preprocessed samples to explain, X of shape (n, G).
    task : {"classification", "regression"}
    method : {"saliency", "integrated_gradients", "shap"}
    target : None (predicted class), "true" (true class), or a class index
    n_steps : int
        Integrated-Gradients Riemann steps.
    background : TensorData, optional
        SHAP background sample (default: ``data``).
    shap_samples : int
        Expected-gradients samples per explained case.

    Returns
    -------
    ndarray of shape (n, G)
        Signed attributions (saliency: absolute gradients).
    """
    module = module.cpu().eval()
    x = torch.as_tensor(data.X).requires_grad_(True)
    c = torch.as_tensor(data.covariates)
    tgt = _targets(module, data, task, target)
    f = _forward_fn(module, task)
    if method == "saliency":
        # lazy: captum takes seconds to import
        from captum.attr import Saliency

        return Saliency(f).attribute(x, target=tgt, additional_forward_args=(c,), abs=True).detach().numpy()
    if method == "integrated_gradients":
        # lazy: captum takes seconds to import
        from captum.attr import IntegratedGradients

        attr = IntegratedGradients(f).attribute(
            x, baselines=torch.zeros_like(x), target=tgt, additional_forward_args=(c,), n_steps=n_steps,
            internal_batch_size=internal_batch_size,
        )
        return attr.detach().numpy()
    if method == "shap":
        return shap_values(module, data, task, background or data, tgt.numpy(), shap_samples, seed)
    raise InputError(f"unknown attribution method {method!r}; use saliency, integrated_gradients or shap")


def shap_values(module, data: TensorData, task: str, background: TensorData, targets: np.ndarray,
                nsamples: int = 100, seed: int = 0) -> np.ndarray:
    """Expected-gradients SHAP values of the explained output per sample, genes only: (n, G)."""
    # lazy: shap takes seconds to import
    import shap

    G = data.X.shape[1]
    wrapper = SingleInputModel(module, G, data.covariates.shape[1], "regression").eval()

    class _Out(torch.nn.Module):  # logits (not softmax) like the other methods; (B, K) or (B, 1)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            out = self.inner(z)
            return out if out.ndim == 2 else out.reshape(-1, 1)

    bg = torch.as_tensor(np.hstack([background.X, background.covariates]))
    z = torch.as_tensor(np.hstack([data.X, data.covariates]))
    expl = shap.GradientExplainer(_Out(wrapper), bg)
    vals = expl.shap_values(z, nsamples=nsamples, rseed=seed)
    arr = np.asarray(vals)
    # shap returns (n, F, K) (new) or a list of K arrays (n, F) (old); pick each sample's target output.
    if isinstance(vals, list):
        arr = np.stack(vals, axis=-1)
    if arr.ndim == 2:
        arr = arr[..., None]
    picked = arr[np.arange(len(z)), :, np.asarray(targets) if arr.shape[-1] > 1 else 0]
    return picked[:, :G]


def pathway_attention(module, data: TensorData) -> np.ndarray | None:
    """Class-token attention over pathways, (n, P), or None when the model has no attention."""
    out = predict_module(module, data, "classification" if _is_clf(module) else "regression")
    return out.get("attention")


def pathway_crosstalk(module, data: TensorData, pathways: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame] | None:
    """Interaction strength of the model's pathway-crosstalk term, or None when it has none.

    With pathway scores ``s = x (M ⊙ W_s) D`` and factors ``V`` (P, K, r) behind gate γ, the term adds
    ``γ <v_kj, v_kl> s_j s_l`` to logit k. Returns per pathway ``|γ| · ||V_j|| · sd(s_j)`` (P,) and the
    pairs ranked by ``|γ| · sqrt(Σ_k <v_kj, v_kl>²) · sd(s_j) · sd(s_l)``: ``pathway_a, pathway_b, strength``.
    """
    V = getattr(module, "fm_factors", None)
    if V is None or not len(pathways):
        return None
    c = module.config
    with torch.no_grad():
        x3 = torch.as_tensor(np.asarray(data.X, np.float32)).to(V.device).unsqueeze(1)
        sd = module.pathway_scores(x3).double().std(0, unbiased=False).cpu().numpy()
        Vn = V.detach().cpu().numpy().astype(np.float64).reshape(c.n_pathways, c.n_outputs, c.pathway_interactions)
        gate = abs(float(module.fm_gate)) if hasattr(module, "fm_gate") else 1.0
    per = gate * np.sqrt((Vn ** 2).sum((1, 2))) * sd
    inner = np.einsum("jkr,lkr->jlk", Vn, Vn)  # <v_kj, v_kl> per output
    pair = gate * np.sqrt((inner ** 2).sum(-1)) * np.outer(sd, sd)
    j, l_ = np.triu_indices(len(sd), k=1)
    order = np.argsort(-pair[j, l_], kind="stable")[:50]
    names = np.asarray(pathways, dtype=object)
    pairs = pd.DataFrame({"pathway_a": names[j[order]], "pathway_b": names[l_[order]],
                          "strength": pair[j, l_][order]})
    return per, pairs


def pathway_term_shapley(module, data: TensorData) -> np.ndarray | None:
    """Mean |Shapley value| per pathway of the model's pathway terms (linear + crosstalk), (P,), or None.

    The terms ``f(s) = s L + γ FM(s)`` are a pairwise-interaction model of the pathway scores ``s`` (zero
    mean on the training rows), so their Shapley values against the baseline ``s = 0`` are exact and
    cheap: ``φ_jk = s_j L_jk + γ/2 Σ_l <v_kj, v_kl> s_j s_l`` (each interaction split evenly between its
    two pathways). Per sample the values are centred over outputs (softmax ignores a shift) and their
    norm over outputs is averaged over samples. Main effects and interactions both count, which the
    crosstalk strength alone (interactions only) and gene-level attributions averaged over members (which
    dilute a program in its set's size and overlaps) miss.
    """
    if getattr(module, "fm_linear", None) is None:
        return None
    c = module.config
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(data.X, np.float32)).to(module.fm_linear.device)
        S = module.pathway_scores(x.unsqueeze(1)).double()
        V = module.fm_factors.double().reshape(c.n_pathways, c.n_outputs, c.pathway_interactions)
        inner = torch.einsum("jkr,lkr->kjl", V, V)  # (K, P, P)
        inner = inner - torch.diag_embed(torch.diagonal(inner, dim1=1, dim2=2))
        gate = float(module.fm_gate)
        phi = S[:, :, None] * module.fm_linear.double()[None]  # (n, P, K)
        phi = phi + 0.5 * gate * S[:, :, None] * torch.einsum("kjl,nl->njk", inner, S)
        phi = phi - phi.mean(-1, keepdim=True) if c.n_outputs > 1 else phi
    return phi.pow(2).sum(-1).sqrt().mean(0).cpu().numpy()


def _is_clf(module) -> bool:
    return getattr(getattr(module, "config", None), "task", "classification") == "classification"


def pathway_scores_from_genes(gene_scores: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """Mean of per-gene scores (G,) over each set's members -> (P,)."""
    M = np.asarray(membership, dtype=np.float64)
    size = np.maximum(M.sum(0), 1.0)
    return (np.asarray(gene_scores, dtype=np.float64) @ M) / size


# --------------------------------------------------------------------------------------------- enrichment
def hypergeometric_enrichment(top_genes: Sequence[str], universe: Sequence[str],
                              gene_sets: Mapping[str, Sequence[str]], min_size: int = 3) -> pd.DataFrame:
    """One-sided hypergeometric test of each gene set among the top genes, with BH FDR.

    ``p = P(X >= k)``, ``X ~ Hypergeom(N = |universe|, K = |S ∩ universe|, n = |top|)``.

    Returns
    -------
    DataFrame indexed by set name: ``overlap, set_size, n_top, expected, fold_enrichment, p_value, fdr``
    sorted by p-value.
    """
    uni = pd.Index(pd.unique(np.asarray(list(map(str, universe)), dtype=object)))
    top = set(map(str, top_genes)) & set(uni)
    rows = []
    for name, members in gene_sets.items():
        s = set(map(str, members)) & set(uni)
        if len(s) < min_size:
            continue
        rows.append((name, len(s & top), len(s)))
    if not rows:
        raise InputError("no gene set has enough members among the model's genes for enrichment")
    df = pd.DataFrame(rows, columns=["set", "overlap", "set_size"]).set_index("set")
    N, n = len(uni), len(top)
    df["n_top"] = n
    df["expected"] = df["set_size"] * n / N
    df["fold_enrichment"] = df["overlap"] / np.maximum(df["expected"], 1e-12)
    df["p_value"] = hypergeom.sf(df["overlap"] - 1, N, df["set_size"], n)
    df["fdr"] = false_discovery_control(df["p_value"].clip(0, 1).to_numpy(), method="bh")
    return df.sort_values(["p_value", "overlap"], ascending=[True, False])


def precision_at_k(ranked: Sequence[str], relevant: Sequence[str], k: int) -> float:
    """Fraction of the top ``k`` ranked items that are relevant."""
    if k < 1:
        raise InputError("k must be >= 1")
    rel = set(map(str, relevant))
    return float(np.mean([str(r) in rel for r in list(ranked)[:k]])) if len(ranked) else 0.0


# --------------------------------------------------------------------------------------------- one call
@dataclass
class Explanation:
    """Result of :func:`explain`.

    Attributes
    ----------
    genes : DataFrame
        Per gene (index): mean |attribution| per method, ranked by the primary method.
    pathways : DataFrame
        Per pathway (index): attention, pathway-level attributions per method, member count, rank.
    enrichment : DataFrame
        Hypergeometric enrichment of the top genes (see :func:`hypergeometric_enrichment`).
    attributions : dict of str to ndarray (n, G)
        Raw per-sample attributions by method.
    sample_ids : list of str
        Explained samples.
    crosstalk_pairs : DataFrame
        Strongest pathway pairs of the crosstalk term (``pathway_a, pathway_b, strength``; empty without
        one); the per-pathway strength is the ``crosstalk`` column of ``pathways``.
    pathway_primary : str
        The ``pathways`` column that ranks pathways (the table's order, :meth:`top_pathways`,
        :meth:`precision_at_k`): ``pathway_terms`` (Shapley values of the model's pathway terms, see
        :func:`pathway_term_shapley`) when the model uses them, else ``primary``.
    """

    genes: pd.DataFrame
    pathways: pd.DataFrame
    enrichment: pd.DataFrame
    attributions: dict[str, np.ndarray] = field(default_factory=dict)
    sample_ids: list[str] = field(default_factory=list)
    primary: str = "integrated_gradients"
    crosstalk_pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    pathway_primary: str | None = None

    def top_genes(self, k: int = 20) -> pd.DataFrame:
        return self.genes.head(k)

    def top_pathways(self, k: int = 20, by: str | None = None) -> pd.DataFrame:
        by = by or self.pathway_primary or self.primary
        return self.pathways.sort_values(by, ascending=False).head(k)

    def precision_at_k(self, planted: Sequence[str], k: int | None = None, by: str | None = None) -> float:
        """precision@k of planted pathways in the ranking ``by`` (default: :attr:`pathway_primary`); ``k``
        defaults to the number of planted pathways."""
        by = by or self.pathway_primary or self.primary
        k = k or len(planted)
        ranked = self.pathways.sort_values(by, ascending=False).index
        return precision_at_k(ranked, planted, k)


def explain(model: Any, cohort: Any = None, data: TensorData | None = None,
            methods: Sequence[str] = ("attention", "saliency", "integrated_gradients", "shap"),
            n_samples: int = 100, shap_samples: int = 50, n_background: int = 50, top_k_genes: int | None = None,
            seed: int = 0, n_steps: int = 32) -> Explanation:
    """Explain a :class:`~genexflow.training.model.TrainedModel` on (a random sample of) a cohort.

    Parameters
    ----------
    model : TrainedModel
    cohort : Cohort, optional
        Raw cohort (typically the training cohort); or pass preprocessed ``data``.
    methods : sequence of {"attention", "saliency", "integrated_gradients", "shap"}
    n_samples : int
        Cases explained (random sample; all when fewer). SHAP uses at most ``n_samples`` cases too.
    shap_samples, n_background : int
        Expected-gradients samples per case and background cases.
    top_k_genes : int, optional
        Top genes for the enrichment test (default: 5% of the genes, at least 20).
    """
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise InputError(f"unknown explanation method(s) {', '.join(bad)}; use {', '.join(METHODS)}")
    if data is None:
        if cohort is None:
            raise InputError("explain needs a cohort or preprocessed data")
        data = model.inputs(cohort)
        ids = list(map(str, cohort.sample_ids))
    else:
        ids = [str(i) for i in range(len(data))]
    rng = np.random.default_rng(seed)
    n = len(data)
    pick = np.sort(rng.choice(n, size=min(n_samples, n), replace=False))
    sub = data.take(pick)
    bg = data.take(np.sort(rng.choice(n, size=min(n_background, n), replace=False)))
    module = model.module
    task = model.info.task
    genes = list(model.info.extra.get("model_genes") or [])
    if len(genes) != data.X.shape[1]:
        genes = [f"g{i}" for i in range(data.X.shape[1])]
    priors = model.priors
    pathways = list(priors.pathways) if priors is not None else []
    M = np.asarray(priors.membership) if priors is not None else np.zeros((len(genes), 0))

    attrs: dict[str, np.ndarray] = {}
    for m in methods:
        if m == "attention":
            continue
        attrs[m] = gene_attributions(module, sub, task, m, n_steps=n_steps, background=bg,
                                     shap_samples=shap_samples, seed=seed)
    primary = next((m for m in ("integrated_gradients", "shap", "saliency") if m in attrs), None)
    gene_df = pd.DataFrame({m: np.abs(a).mean(0) for m, a in attrs.items()}, index=pd.Index(genes, name="gene"))
    if primary:
        gene_df = gene_df.sort_values(primary, ascending=False)
        gene_df["rank"] = np.arange(1, len(gene_df) + 1)
    pw = pd.DataFrame(index=pd.Index(pathways, name="pathway"))
    names = dict(getattr(priors, "names", None) or {})  # bundles saved before names had none
    ct = None
    if len(pathways):
        pw["name"] = [names.get(p, "") for p in pathways]
        pw["n_genes"] = M.sum(0).astype(int)
        for m, a in attrs.items():
            pw[m] = pathway_scores_from_genes(np.abs(a).mean(0), M)
        if "attention" in methods:
            att = pathway_attention(module, sub)
            if att is not None and att.shape[1] == len(pathways):
                pw["attention"] = att.mean(0)
        ct = pathway_crosstalk(module, sub, pathways)
        if ct is not None:
            pw["crosstalk"], pairs = ct
            pairs.insert(1, "name_a", [names.get(p, "") for p in pairs["pathway_a"]])
            pairs.insert(3, "name_b", [names.get(p, "") for p in pairs["pathway_b"]])
        terms = pathway_term_shapley(module, sub)
        if terms is not None and len(terms) == len(pathways):
            pw["pathway_terms"] = terms
        order = ("pathway_terms" if "pathway_terms" in pw and pw["pathway_terms"].max() > 0 else
                 primary or ("attention" if "attention" in pw else None))
        if order:
            pw = pw.sort_values(order, ascending=False)
    enr = pd.DataFrame()
    if primary and priors is not None and len(pathways):
        k = top_k_genes or max(20, int(0.05 * len(genes)))
        enr = hypergeometric_enrichment(gene_df.index[:k], genes, priors.gene_sets)
        enr.insert(0, "name", [names.get(p, "") for p in enr.index])
        # -log10 p as a ranking column: robust to small sets nested in an informative one, which the
        # mean-|attribution| ranking favours.
        pw["enrichment"] = -np.log10(enr["p_value"].reindex(pw.index).fillna(1.0).clip(lower=1e-300))
    return Explanation(gene_df, pw, enr, attrs, [ids[i] for i in pick], primary or "attention",
                       pairs if len(pathways) and ct is not None else pd.DataFrame(),
                       order if len(pathways) and order in pw else None)
