"""Label efficiency: balanced accuracy with 10, 20, 50 and all labelled samples, for the network started
from a label-free pretrained encoder, the same network from scratch, and an elastic net.

For each cohort and draw: a stratified 30% test split is held out; the denoising autoencoder is
pretrained on the other 70% without labels (``genexflow.training.pretrain``; the test rows are never
seen); then n labelled rows (stratified, at least one per class) are drawn from that 70% and every model
is trained on them and scored on the test rows. Mean ± SD over draws. The network is the ``small`` preset
with ``genexflow run``'s other defaults (the GLM-started wide path included) for both arms; the only
difference is ``init_from``.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_label_efficiency.py      # ~20 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "label_efficiency.md"


def load(name: str):
    from genexflow import datasets
    from genexflow.simulate import simulate_cohort

    if name == "simulator":
        c, _ = simulate_cohort(n_samples=400, n_genes=1000, seed=0)
        return c, "label", "simulate_cohort(n_samples=400, n_genes=1000, seed=0)"
    return datasets.load(name), {"bladderbatch": "cancer", "golub": "label", "geuvadis_sex": "sex"}[name], name


def draw(y: np.ndarray, n: int, rng) -> np.ndarray:
    """n positions, stratified, at least one per class."""
    classes = np.unique(y)
    if n >= len(y):
        return np.arange(len(y))
    pick = [rng.choice(np.flatnonzero(y == k)) for k in classes]
    rest = np.setdiff1d(np.arange(len(y)), pick)
    share = np.bincount(y[rest], minlength=classes.max() + 1)[y[rest]].astype(float)
    extra = rng.choice(rest, size=n - len(pick), replace=False, p=share / share.sum())
    return np.sort(np.concatenate([pick, extra]))


def enet(Xtr, ytr, Xte, n_classes, seed):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(min(3, np.bincount(ytr).min()))
    if k < 2:  # too few per class for inner CV: a fixed moderate penalty
        from sklearn.linear_model import LogisticRegression

        head = LogisticRegression(C=0.5, l1_ratio=0.5, solver="saga", max_iter=3000)
    else:
        head = LogisticRegressionCV(Cs=np.logspace(-2, 1, 5), l1_ratios=(0.5,), solver="saga", max_iter=3000,
                                    cv=StratifiedKFold(k, shuffle=True, random_state=seed), scoring="neg_log_loss",
                                    use_legacy_attributes=False, tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = make_pipeline(StandardScaler(), head).fit(Xtr, ytr)
        p = est.predict_proba(Xte)
    full = np.zeros((len(Xte), n_classes))
    full[:, est.classes_] = p
    return full


def main() -> int:
    import torch

    from genexflow.metrics import classification_metrics
    from genexflow.training.config import MODEL_PRESETS, TrainConfig
    from genexflow.training.cv import encode_labels, prepare_fold, train_deep
    from genexflow.training.pretrain import PretrainConfig, pretrain
    from genexflow.training.splits import train_val_split
    from genexflow.training.trainer import predict_module

    ap = argparse.ArgumentParser()
    ap.add_argument("--cohorts", nargs="*", default=["simulator", "bladderbatch"])
    ap.add_argument("--sizes", nargs="*", type=int, default=[10, 20, 50, 0], help="0 = all")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    t_all = time.perf_counter()
    for name in args.cohorts:
        cohort, label, source = load(name)
        cfg0 = TrainConfig(label=label, num_threads=1, model=dict(MODEL_PRESETS["small"]))
        lab = encode_labels(cohort, cfg0)
        cohort, y = cohort.subset(lab.labeled), lab.y[lab.labeled]
        for d in range(args.draws):
            pool, test = train_val_split(y, 0.3, seed=100 + d)
            t0 = time.perf_counter()
            # label-free: the pool's expression only, never the test rows
            enc = pretrain(cohort.subset(pool), PretrainConfig(ae_hidden=128, latent_dim=16, epochs=50, seed=d))
            folder = Path(tempfile.mkdtemp()) / "enc"
            enc.save(folder)
            print(f"{name} draw {d}: pretrained in {time.perf_counter() - t0:.0f} s", flush=True)
            rng = np.random.default_rng(d)
            for n in args.sizes:
                sub = pool[draw(y[pool], n, rng)] if n else pool
                if np.bincount(y[sub]).min() < 2:  # the early-stopping split needs two per class
                    sub = pool[draw(y[pool], max(n, 2 * lab.n_classes), rng)]
                fold = prepare_fold(cohort.subset(sub), cohort.subset(test), y[sub], y[test], cfg0.with_(seed=d))
                scores = {"elastic net": enet(fold.train.X, fold.train.y, fold.test.X, lab.n_classes, d)}
                for arm, cfg in (("pretrained", cfg0.with_(seed=d, init_from=str(folder))),
                                 ("from scratch", cfg0.with_(seed=d))):
                    res = train_deep(fold, cfg, lab.n_classes)
                    scores[arm] = predict_module(res.module, fold.test, "classification")["proba"]
                for arm, p in scores.items():
                    m = classification_metrics(y[test], p, n_classes=lab.n_classes)
                    rows.append({"cohort": name, "source": source, "n_labels": len(sub) if n else f"all ({len(sub)})",
                                 "model": arm, "draw": d, "balanced_accuracy": m["balanced_accuracy"]})
                    print(f"  {name} n={len(sub):>4} {arm:<13} bacc {m['balanced_accuracy']:.3f}", flush=True)
    df = pd.DataFrame(rows)
    lines = ["# Label efficiency: pretrained vs from scratch vs elastic net", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             f"`python benchmarks/bench_label_efficiency.py` ({args.draws} draws; total "
             f"{time.perf_counter() - t_all:.0f} s on 2 shared cores, torch threads 1).", ""]
    for name, g in df.groupby("cohort", sort=False):
        lines += [f"### {name}", "", f"data: {g.source.iloc[0]}", "",
                  "| labelled samples | pretrained | from scratch | elastic net |", "|---|---|---|---|"]
        for n, gn in g.groupby("n_labels", sort=False):
            cell = {m: f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}"
                    for m, v in gn.groupby("model").balanced_accuracy}
            lines.append(f"| {n} | {cell['pretrained']} | {cell['from scratch']} | {cell['elastic net']} |")
        lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
