"""A simulator of realistic expression cohorts with planted, recorded ground truth.

Counts are negative-binomial (gamma-Poisson) with gene-wise means and a mean-dependent dispersion trend,
library sizes vary log-normally, and biology enters through pathway-level programs: each sample has an
activity per pathway, member genes respond with their own loadings, and the class label and regression
target are driven by a few *informative* pathways, including a non-additive interaction (the sign of a
product of two pathway activities), which a linear model on genes cannot represent. Batches shift each
gene's log-expression (location) and stretch its biological signal (scale); age and sex have their own
gene effects; dropout (extra zeros) and missing values (NaN) are optional.

Genes are real HGNC symbols from the shipped KEGG gene sets (synthetic ``SIMG…`` names beyond them) and
pathways are KEGG sets, so simulated cohorts run through ingestion and the priors unchanged. Same seed,
same cohort.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from genexflow.cohort import Cohort, ValueType
from genexflow.errors import InputError


@dataclass
class SimulationTruth:
    """What the simulator planted, for checking biomarker recovery and drift detection."""

    seed: int
    informative_pathways: list[str]
    informative_genes: list[str]
    interaction: str
    pathways: dict[str, list[str]]
    class_names: list[str]
    age_genes: list[str] = field(default_factory=list)
    sex_genes: list[str] = field(default_factory=list)
    batch_names: list[str] = field(default_factory=list)
    activities: np.ndarray | None = None  # (n_samples, n_pathways) true pathway activities

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.activities is not None:
            d["activities"] = np.round(self.activities, 4).tolist()
        return d

    def write_gmt(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w") as fh:
            for name, genes in self.pathways.items():
                fh.write("\t".join([name, "simulated"] + genes) + "\n")
        return path


def _kegg_sets() -> dict[str, list[str]]:
    text = resources.files("genexflow.priors").joinpath("data/kegg_hsa_2011_symbols.gmt").read_text()
    sets = {}
    for line in text.splitlines():
        parts = line.rstrip("\n").split("\t")
        if len(parts) > 2:
            sets[parts[0]] = sorted(set(parts[2:]))
    return sets


def _protein_coding_symbols() -> set[str]:
    path = resources.files("genexflow.ingest").joinpath("data/gene_ids.parquet")
    ids = pd.read_parquet(str(path), columns=["symbol", "protein_coding"])
    return set(ids.loc[ids["protein_coding"], "symbol"].dropna().astype(str))


def simulate_cohort(
    n_samples: int = 300,
    n_genes: int = 2000,
    n_pathways: int = 40,
    n_informative: int = 4,
    n_classes: int = 3,
    n_batches: int = 3,
    batch_location: float = 0.4,
    batch_scale: float = 0.15,
    signal: float = 1.0,
    library_size: float = 2e6,
    dropout: float = 0.0,
    missing_rate: float = 0.0,
    value_type: str = "counts",
    seed: int = 0,
    name: str | None = None,
    batch_labels: list[str] | None = None,
    batch_confounding: float = 0.0,
) -> tuple[Cohort, SimulationTruth]:
    """Simulate a cohort.

    Parameters
    ----------
    n_samples, n_genes : int
        Matrix shape (n_samples, n_genes).
    n_pathways : int
        KEGG pathways used as programs (restricted to the chosen genes, >= 10 members each).
    n_informative : int
        Pathways that drive the label and the target (at least 3; the first two interact).
    n_classes : int
        Number of classes (>= 2) of the ``label`` column.
    n_batches : int
        Number of batches; ``batch_location`` / ``batch_scale`` are the SDs of the per-gene
        log-scale location shift and log of the scale factor.
    signal : float
        Strength of pathway programs on member genes (log scale).
    library_size : float
        Median library size (counts).
    dropout : float
        Extra-zero probability for low-expressed entries (scaled by exp(-mean/10)).
    missing_rate : float
        Fraction of entries set to NaN (the matrix becomes float32).
    value_type : {"counts", "log-expression"}
        Raw counts, or log2(CPM + 1) like a normalised array.
    seed : int
    batch_labels : list of str, optional
        Names for the batches (default ``batch1``…); a different name simulates an unseen batch.
    batch_confounding : float in [0, 1]
        Share of samples moved to "their" class's batch (class ``c`` -> batch ``c mod n_batches``): the
        batch becomes associated with the label (Cramér's V rises with it; 1 = every batch holds its
        classes only). 0 (the default) leaves the cohort exactly as without it.

    Returns
    -------
    cohort : Cohort
        ``samples`` has ``label``, ``batch``, ``age``, ``sex`` and ``target`` (regression) columns.
    truth : SimulationTruth

    Examples
    --------
    >>> cohort, truth = simulate_cohort(n_samples=20, n_genes=300, seed=1)
    >>> cohort.shape
    (20, 300)
    """
    if n_samples < 2 or n_genes < 50:
        raise InputError("simulate at least 2 samples and 50 genes")
    if n_classes < 2 or n_informative < 3 or n_batches < 1:
        raise InputError("need n_classes >= 2, n_informative >= 3, n_batches >= 1")
    vt = ValueType.parse(value_type)
    if vt not in (ValueType.COUNTS, ValueType.LOG):
        raise InputError("simulate writes counts or log-expression")
    rng = np.random.default_rng(seed)

    # ---- genes and pathways: KEGG sets, member genes first so programs are dense enough
    kegg = _kegg_sets()
    names = sorted(k for k, v in kegg.items() if 15 <= len(v) <= 150)
    chosen = list(rng.choice(names, size=min(n_pathways * 2, len(names)), replace=False))
    genes: list[str] = []
    seen: set[str] = set()
    budget = int(n_genes * 0.6)
    per_pathway = max(10, budget // n_pathways)  # a sample of each pathway, so small cohorts get many
    for pw in chosen:
        members = list(rng.permutation(kegg[pw]))[:per_pathway]
        for g in members:
            if g not in seen and len(genes) < budget:
                seen.add(g)
                genes.append(g)
    pool = sorted({g for v in kegg.values() for g in v} - seen)
    rng.shuffle(pool)
    genes += pool[: n_genes - len(genes)]
    if len(genes) < n_genes:  # beyond KEGG: other protein-coding HGNC symbols (own RNG: smaller cohorts unchanged)
        extra = sorted(_protein_coding_symbols() - set(genes))
        np.random.default_rng(seed + 7919).shuffle(extra)
        genes += extra[: n_genes - len(genes)]
    genes += [f"SIMG{i:05d}" for i in range(n_genes - len(genes))]
    genes = [str(g) for g in np.array(genes)[rng.permutation(n_genes)]]
    gpos = {g: i for i, g in enumerate(genes)}
    pathways = {}
    for pw in chosen:
        members = [g for g in kegg[pw] if g in gpos]
        if len(members) >= 10:
            pathways[pw] = members
        if len(pathways) == n_pathways:
            break
    if len(pathways) < n_informative:
        raise InputError(f"only {len(pathways)} pathways fit {n_genes} genes; simulate more genes")
    pw_names = [str(p) for p in pathways]
    pathways = {str(k): [str(g) for g in v] for k, v in pathways.items()}
    P = len(pw_names)

    # ---- pathway programs
    # The informative pathways are the largest ones (their programs are measured by the most genes);
    # the others are background programs with weaker activity.
    pw_names = sorted(pw_names, key=lambda p: -len(pathways[p]))
    A = rng.normal(size=(n_samples, P))  # activity of each pathway in each sample
    A[:, n_informative:] *= 0.6
    W = np.zeros((n_genes, P))
    for k, pw in enumerate(pw_names):
        idx = [gpos[g] for g in pathways[pw]]
        W[idx, k] = rng.normal(1.0, 0.25, size=len(idx)) * rng.choice([1, -1], size=len(idx), p=[0.9, 0.1])
    informative = pw_names[:n_informative]
    pathways = {p: pathways[p] for p in pw_names}
    a = A[:, :n_informative]

    # Non-additive: class 1 vs 0 by the sign of a0*a1 (an XOR), further classes by additive pathways.
    logits = np.zeros((n_samples, n_classes))
    logits[:, 1] = 3.0 * a[:, 0] * a[:, 1]
    for c in range(2, n_classes):
        logits[:, c] = 2.5 * a[:, 2 + (c - 2) % (n_informative - 2)] - 1.0
    logits += rng.gumbel(size=logits.shape) * 0.3
    y = logits.argmax(1)
    class_names = [f"subtype_{chr(65 + c)}" for c in range(n_classes)]
    target = 1.2 * a[:, 0] * a[:, 1] + 1.0 * a[:, 2] + 0.6 * np.tanh(2 * a[:, -1]) + rng.normal(0, 0.3, n_samples)

    # ---- covariates
    age = np.round(rng.uniform(25, 85, n_samples), 1)
    sex = rng.choice(["F", "M"], size=n_samples)
    non_pw = np.setdiff1d(np.arange(n_genes), np.flatnonzero(W.any(1)))
    cov_genes = rng.choice(non_pw if len(non_pw) >= 40 else np.arange(n_genes), size=40, replace=False)
    age_idx, sex_idx = cov_genes[:30], cov_genes[30:]
    bio = signal * (A @ W.T)
    bio[:, age_idx] += 0.02 * (age[:, None] - 55) * rng.choice([1, -1], size=len(age_idx))
    bio[:, sex_idx] += np.where(sex[:, None] == "M", 2.5, -2.5) * rng.choice([1, -1], size=len(sex_idx))

    # ---- batches: location shift and scale of the biological signal per gene
    labels = batch_labels or [f"batch{b + 1}" for b in range(n_batches)]
    if len(labels) != n_batches:
        raise InputError(f"{len(labels)} batch labels for {n_batches} batches")
    b_of = rng.integers(0, n_batches, n_samples)
    b_of[:n_batches] = np.arange(n_batches)[: min(n_batches, n_samples)]  # every batch present
    if not 0 <= batch_confounding <= 1:
        raise InputError(f"batch_confounding must be in [0, 1], got {batch_confounding}")
    if batch_confounding > 0:  # own generator: the rest of the cohort is drawn exactly as without it
        move = np.random.default_rng([seed, 17]).random(n_samples) < batch_confounding
        b_of = np.where(move, y % n_batches, b_of)
    gamma = rng.normal(0, batch_location, size=(n_batches, n_genes))
    delta = np.exp(rng.normal(0, batch_scale, size=(n_batches, n_genes)))

    # ---- negative-binomial counts
    log_base = rng.normal(0, 1.6, n_genes)
    log_mu = log_base[None, :] + bio * delta[b_of] + gamma[b_of]
    prop = np.exp(log_mu - log_mu.max(1, keepdims=True))
    prop /= prop.sum(1, keepdims=True)
    lib = library_size * np.exp(rng.normal(0, 0.3, n_samples))
    mu = prop * lib[:, None]
    mean_gene = mu.mean(0)
    phi = (0.05 + 1.0 / np.sqrt(mean_gene + 1.0)) * np.exp(rng.normal(0, 0.25, n_genes))
    shape = 1.0 / phi
    lam = rng.gamma(shape[None, :], mu * phi[None, :])
    counts = rng.poisson(lam).astype(np.int64)
    if dropout > 0:
        drop = rng.random(counts.shape) < dropout * np.exp(-mu / 10.0)
        counts[drop] = 0
    counts = np.minimum(counts, np.iinfo(np.int32).max).astype(np.int32)

    if vt is ValueType.COUNTS:
        X: np.ndarray = counts
    else:
        X = np.log2(counts / counts.sum(1, keepdims=True) * 1e6 + 1).astype(np.float32)
    if missing_rate > 0:
        X = X.astype(np.float32)
        X[rng.random(X.shape) < missing_rate] = np.nan

    sample_ids = pd.Index([f"SIM{seed:03d}_{i:05d}" for i in range(n_samples)], name="sample_id")
    sheet = pd.DataFrame(
        {"label": np.array(class_names)[y], "batch": np.array(labels)[b_of], "age": age, "sex": sex,
         "target": np.round(target, 4)},
        index=sample_ids,
    )
    inf_genes = sorted({g for pw in informative for g in pathways[pw]})
    truth = SimulationTruth(
        seed=seed, informative_pathways=informative, informative_genes=inf_genes,
        interaction=f"class {class_names[1]} vs {class_names[0]}: sign({informative[0]} x {informative[1]})",
        pathways=pathways, class_names=class_names,
        age_genes=[genes[i] for i in age_idx], sex_genes=[genes[i] for i in sex_idx], batch_names=labels,
        activities=A,
    )
    cohort = Cohort(
        X=X, genes=genes, samples=sheet, value_type=vt, name=name or f"simulated_seed{seed}",
        meta={"source": "genexflow.simulate", "seed": seed, "informative_pathways": informative},
    )
    return cohort, truth
