"""What batch correction costs when the batch is confounded with the label (issue 17).

Options, each fitted on the training rows of every fold and applied to the held-out rows (as the
pipeline does), followed by a plain scikit-learn model (scaler + L2 logistic regression, C tuned by an
inner 3-fold CV):

* ``none``: no correction;
* ``covariate``: no correction, the batch one-hot as extra model inputs (the model separates them);
* ``combat``: ComBat on the batch, without the label (the label is unknown at inference);
* ``combat-ref``: ComBat with the largest training batch as the reference (left unchanged);
* ``harmony``: Harmony on 20 PCs, frozen map, back to genes.

Cohorts:

* bladderbatch (shipped): cancer status vs batch (Cramér's V ~0.8): repeated stratified CV;
* the simulator: one large cohort (batches independent of the label), a balanced held-out test set, and
  training sets drawn from the rest with the batch confounded with the label at strength ``s`` (a share
  ``s`` of each class drawn from "its" batch). Repeated stratified CV inside the training set, and the
  held-out score (the truth: a balanced cohort from the same batches, where a model that learned the
  batch instead of the biology loses).

Prints and writes ``benchmarks/results/confounding.md`` (+ ``.json``): pooled out-of-fold ROC-AUC
(macro one-vs-rest) and balanced accuracy, mean ± sd over repeats. Run on demand::

    nice -n 10 python benchmarks/bench_confounding.py            # ~18 min on 2 busy cores
    python benchmarks/bench_confounding.py --quick                # smoke run

``--deep`` instead runs genexflow's default deep model (PathwayNet ``small``, its own fold-fitted
pipeline with ``batch_method`` none / combat / harmony) on bladderbatch (5-fold stratified CV) and on the
simulator at one strength (held-out set), and writes ``benchmarks/results/confounding_deep.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from genexflow.datasets import load_bladderbatch
from genexflow.preprocessing import ComBat
from genexflow.preprocessing.confounding import batch_label_association
from genexflow.preprocessing.harmony import Harmony
from genexflow.simulate import simulate_cohort

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "confounding.md"
METHODS = ("none", "covariate", "combat", "combat-ref", "harmony")


def correct(method: str, Xtr, btr, Xte, bte):
    """Fit ``method`` on the training rows; return (train features, test features)."""
    if method in ("none", "covariate"):
        A, B = Xtr, Xte
        if method == "covariate":
            levels = np.unique(btr)
            A = np.hstack([A, (btr[:, None] == levels).astype(float)])
            B = np.hstack([B, (bte[:, None] == levels).astype(float)])
        return A, B
    if method in ("combat", "combat-ref"):
        vals, counts = np.unique(btr, return_counts=True)
        ref = vals[counts.argmax()] if method == "combat-ref" else None
        est = ComBat(ref_batch=ref, mean_only=bool((counts < 2).any()), unseen_batch="estimate",
                     constant_genes="passthrough")
        return est.fit_transform(Xtr, batch=btr), est.transform(Xte, batch=bte)
    if method == "harmony":
        est = Harmony(n_components=20, unseen_batch="ignore")
        return est.fit_transform(Xtr, batch=btr), est.transform(Xte, batch=bte)
    raise ValueError(method)


def model():
    return make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[1e-3, 1e-2, 1e-1, 1], cv=3, max_iter=3000))


def scores(y, proba, classes):
    pred = classes[proba.argmax(1)]
    auc = roc_auc_score(y, proba[:, 1]) if len(classes) == 2 else roc_auc_score(
        y, proba, multi_class="ovr", average="macro", labels=classes)
    return auc, balanced_accuracy_score(y, pred)


def repeated_cv(method, X, y, b, folds, repeats, seed):
    classes = np.unique(y)
    per_rep = []
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    oof = np.zeros((len(y), len(classes)))
    for i, (tr, te) in enumerate(cv.split(X, y)):
        A, B = correct(method, X[tr], b[tr], X[te], b[te])
        m = model().fit(A, y[tr])
        oof[te] = m.predict_proba(B)
        if (i + 1) % folds == 0:
            per_rep.append(scores(y, oof, classes))
            oof = np.zeros_like(oof)
    return np.array(per_rep)  # (repeats, 2)


def confounded_draw(y, b, n_train, strength, rng):
    """Rows with ``strength`` of each class drawn from its batch (class i -> batch i mod B)."""
    classes, batches = np.unique(y), np.unique(b)
    rows = []
    per_class = n_train // len(classes)
    for i, c in enumerate(classes):
        home = batches[i % len(batches)]
        n_home = int(round(per_class * (strength + (1 - strength) / len(batches))))
        pool_home = np.flatnonzero((y == c) & (b == home))
        pool_other = np.flatnonzero((y == c) & (b != home))
        rows += list(rng.choice(pool_home, size=min(n_home, len(pool_home)), replace=False))
        rows += list(rng.choice(pool_other, size=per_class - min(n_home, len(pool_home)), replace=False))
    return np.array(sorted(rows))


def deep_main(args) -> None:
    """The default deep model under each option (slow: one network per fold)."""
    from genexflow.training.config import MODEL_PRESETS, TrainConfig
    from genexflow.training.cv import DEEP, cross_validate, external_validation

    def cfg(label, method):
        pre = {} if method in ("none", "combat") else {"batch_method": method}
        return TrainConfig(label=label, batch_column="batch", combat=method != "none", preprocessing=pre,
                           epochs=args.epochs, lr=1e-3, batch_size=16, patience=8, num_threads=1,
                           model=dict(MODEL_PRESETS["small"]))

    t0 = time.perf_counter()
    methods = [m for m in args.methods if m in ("none", "combat", "harmony")]
    lines = ["# Default deep model when the batch is confounded with the label", "",
             f"`nice -n 10 python benchmarks/bench_confounding.py --deep --epochs {args.epochs}`: PathwayNet "
             f"`small`, lr 1e-3, <= {args.epochs} epochs with early stopping (patience 8), its own fold-fitted "
             "preprocessing with the option as `batch_method` (none = `combat=False`). ROC-AUC (macro one-vs-rest) "
             "and balanced accuracy: bladderbatch mean ± sd over 5 stratified folds; simulator: the balanced "
             "held-out set (same construction as `confounding.md`, one draw).", "",
             "| cohort | option | ROC-AUC | balanced accuracy |", "|---|---|---|---|"]
    c = load_bladderbatch()
    c.samples["batch"] = c.samples["batch"].astype(str)
    for m in methods:
        res = cross_validate(c, cfg("cancer", m), n_splits=args.folds, baselines=[])
        sm = res.summary(["roc_auc", "balanced_accuracy"]).loc[DEEP]
        lines.append(f"| bladderbatch (CV) | {m} | {sm['roc_auc_mean']:.3f} ± {sm['roc_auc_sd']:.3f} | "
                     f"{sm['balanced_accuracy_mean']:.3f} ± {sm['balanced_accuracy_sd']:.3f} |")
        print(lines[-1], flush=True)
    cohort, _ = simulate_cohort(n_samples=1500, n_genes=1000, n_classes=3, n_batches=3, batch_location=0.6,
                                value_type="log-expression", seed=11)
    ys = cohort.samples["label"].astype(str).to_numpy()
    bs = cohort.samples["batch"].astype(str).to_numpy()
    test = np.random.default_rng(0).choice(1500, size=300, replace=False)
    pool = np.setdiff1d(np.arange(1500), test)
    s = args.deep_strength
    tr = pool[confounded_draw(ys[pool], bs[pool], 240, s, np.random.default_rng(100))]
    for m in methods:
        res = external_validation(cohort.subset(tr), cohort.subset(test), cfg("label", m), baselines=[])
        sm = res.summary(["roc_auc", "balanced_accuracy"]).loc[DEEP]
        lines.append(f"| simulator s = {s:.2f} (held-out) | {m} | {sm['roc_auc_mean']:.3f} | "
                     f"{sm['balanced_accuracy_mean']:.3f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Total {time.perf_counter() - t0:.0f} s.", ""]
    out = args.out.with_name("confounding_deep.md")
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def fmt(a):
    return f"{a.mean():.3f} ± {a.std():.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.95])
    ap.add_argument("--sim-draws", type=int, default=3, help="training sets drawn per strength")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--deep", action="store_true", help="the default deep model instead (slow)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--deep-strength", type=float, default=0.8)
    args = ap.parse_args()
    if args.deep:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        warnings.filterwarnings("ignore")
        return deep_main(args)
    if args.quick:
        args.repeats, args.strengths, args.sim_draws = 1, [0.0, 0.9], 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    rows = []
    lines = ["# Batch correction when the batch is confounded with the label", "",
             "`nice -n 10 python benchmarks/bench_confounding.py"
             + (" --quick" if args.quick else "") + f"` ({args.folds}-fold x {args.repeats} repeats stratified "
             "CV; model: StandardScaler + LogisticRegressionCV(L2, Cs=1e-3..1, inner 3-fold); every "
             "correction fitted on the training rows of each fold). Machine: "
             f"{platform.machine()}, {os.cpu_count()} cores (shared). Metrics: pooled out-of-fold ROC-AUC "
             "(macro one-vs-rest) and balanced accuracy, mean ± sd over repeats (draws for the held-out "
             "columns).", ""]

    # ---- bladderbatch
    c = load_bladderbatch()
    X = np.asarray(c.X, dtype=np.float64)
    y = c.samples["cancer"].astype(str).to_numpy()
    b = c.samples["batch"].astype(str).to_numpy()
    assoc = batch_label_association(b, y)
    lines += ["## bladderbatch: cancer status (Normal / Biopsy / Cancer), 5 batches", "",
              f"57 samples x 2000 probes; {assoc.message().split(': the label')[0]}.", "",
              "| option | ROC-AUC | balanced accuracy |", "|---|---|---|"]
    for m in args.methods:
        r = repeated_cv(m, X, y, b, args.folds, args.repeats, seed=0)
        rows.append({"cohort": "bladderbatch", "strength": None, "option": m, "eval": "cv",
                     "roc_auc": float(r[:, 0].mean()), "roc_auc_sd": float(r[:, 0].std()),
                     "balanced_accuracy": float(r[:, 1].mean()), "balanced_accuracy_sd": float(r[:, 1].std())})
        lines.append(f"| {m} | {fmt(r[:, 0])} | {fmt(r[:, 1])} |")
        print(lines[-1], flush=True)
    lines.append("")

    # ---- simulator
    n_sim, n_test, n_train = (900, 300, 180) if args.quick else (1500, 300, 240)
    cohort, _ = simulate_cohort(n_samples=n_sim, n_genes=1000, n_classes=3, n_batches=3, batch_location=0.6,
                                value_type="log-expression", seed=11)
    Xs = np.asarray(cohort.X, dtype=np.float64)
    Xs = Xs[:, Xs.var(axis=0) > 0]
    ys = cohort.samples["label"].astype(str).to_numpy()
    bs = cohort.samples["batch"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    test = rng.choice(n_sim, size=n_test, replace=False)
    pool = np.setdiff1d(np.arange(n_sim), test)
    lines += ["## simulator: 3 classes (XOR pathway interaction), 3 batches (location SD 0.6)", "",
              f"simulate_cohort(n_samples={n_sim}, n_genes=1000, batch_location=0.6, log-expression, seed=11): "
              f"{n_test} held-out samples with batches independent of the label; training sets of "
              f"{n_train} drawn from the rest with a share s of each class from its own batch "
              f"({args.sim_draws} draws per s). CV: inside the training set; held-out: train on the whole "
              "training set, score the balanced held-out set (where a model that learned the batch loses).", "",
              "| s | Cramér's V | option | CV ROC-AUC | held-out ROC-AUC | held-out balanced accuracy |",
              "|---|---|---|---|---|---|"]
    for s in args.strengths:
        for m in args.methods:
            cv_r, ho = [], []
            vs = []
            for draw in range(args.sim_draws):
                tr = pool[confounded_draw(ys[pool], bs[pool], n_train, s, np.random.default_rng(100 + draw))]
                vs.append(batch_label_association(bs[tr], ys[tr]).effect_size)
                cv_r.append(repeated_cv(m, Xs[tr], ys[tr], bs[tr], args.folds, 1, seed=draw)[0])
                A, B = correct(m, Xs[tr], bs[tr], Xs[test], bs[test])
                fit = model().fit(A, ys[tr])
                ho.append(scores(ys[test], fit.predict_proba(B), np.unique(ys[tr])))
            cv_r, ho = np.array(cv_r), np.array(ho)
            rows.append({"cohort": "simulator", "strength": s, "cramers_v": float(np.mean(vs)), "option": m,
                         "eval": "heldout", "cv_roc_auc": float(cv_r[:, 0].mean()),
                         "roc_auc": float(ho[:, 0].mean()), "roc_auc_sd": float(ho[:, 0].std()),
                         "balanced_accuracy": float(ho[:, 1].mean()),
                         "balanced_accuracy_sd": float(ho[:, 1].std())})
            lines.append(f"| {s:.2f} | {np.mean(vs):.2f} | {m} | {fmt(cv_r[:, 0])} | {fmt(ho[:, 0])} | "
                         f"{fmt(ho[:, 1])} |")
            print(lines[-1], flush=True)
    lines.append("")

    # ---- summary: loss vs the best option, per setting, averaged
    df = pd.DataFrame(rows)
    df["setting"] = df["cohort"] + ":" + df["strength"].astype(str)
    best = df.groupby("setting")["roc_auc"].transform("max")
    df["loss"] = best - df["roc_auc"]
    lines += ["## Loss against the best option (ROC-AUC points)", "",
              "Per setting (bladderbatch CV; simulator held-out at each s), the best option's ROC-AUC minus "
              "this option's; mean and worst over the settings.", "",
              "| option | mean loss, all settings | worst, all | mean loss, confounded (s >= 0.5, bladderbatch) "
              "| worst, confounded |", "|---|---|---|---|---|"]
    conf = df[(df["cohort"] == "bladderbatch") | (df["strength"].fillna(1) >= 0.5)]
    summary = df.groupby("option")["loss"].agg(["mean", "max"]).join(
        conf.groupby("option")["loss"].agg(["mean", "max"]), rsuffix="_conf").sort_values("mean")
    lines += [f"| {o} | {r['mean']:.3f} | {r['max']:.3f} | {r['mean_conf']:.3f} | {r['max_conf']:.3f} |"
              for o, r in summary.iterrows()]
    lines += ["", f"Least mean loss over all settings: **{summary.index[0]}**. "
              f"Total {time.perf_counter() - t_start:.0f} s.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(args.out)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines[-(len(summary) + 7):]))


if __name__ == "__main__":
    main()
