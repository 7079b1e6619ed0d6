"""Do genexflow's defaults lose to twenty lines of scikit-learn? A fixed panel of plain pipelines beside
``genexflow run``'s defaults, on the same splits, on every shipped cohort and the simulator.

Panel (every step fitted inside the training fold; counts become log2-CPM per sample first, which is
label-free and row-wise, so it cannot leak):

* ``sk_l2``: top-2,000-variance genes -> StandardScaler -> L2 logistic regression, C by inner 3-fold CV
  (log-loss) over 1e-4..1e2;
* ``sk_enet``: the same with an elastic net (saga, l1_ratio 0.5);
* ``sk_svm``: the same with a linear SVM, C by inner CV (probabilities: softmax of the decision values);
* ``sk_hgb``: top-2,000-variance genes -> HistGradientBoosting (no scaling needed); LightGBM is not pinned.

genexflow side (``genexflow.training.cross_validate`` with ``TrainConfig`` defaults, exactly what
``genexflow run`` trains on a user's cohort: the label and, where the cohort has one, the batch column):
the deep model ``pathwaynet`` and genexflow's own baselines (``gx_*``) on the same splits.

Splits: repeated stratified k-fold (5 x 5 for the panel and genexflow's baselines; the deep model uses the
first ``--deep-repeats`` repeats because it is CPU-bound) and leave-one-batch-out where the cohort has a
batch column. Scores: pooled out-of-fold balanced accuracy and ROC-AUC per repeat (genexflow's metrics
module), mean ± SD over repeats (LOBO: one pooled value).

Results go to ``benchmarks/results/defaults.json`` (one row per case x model x tag; re-runs replace rows
with the same key) and the table to ``benchmarks/results/defaults.md``. ``--tag before`` records a
baseline to compare later runs with::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_defaults.py                 # everything
    python benchmarks/bench_defaults.py --only golub --family genexflow --tag after   # one side again
    python benchmarks/bench_defaults.py --render                                      # table from the JSON
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
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
COHORTS = ("golub", "geuvadis_sex", "bladderbatch", "simulator")
PANEL = ("sk_l2", "sk_enet", "sk_svm", "sk_hgb")
#: genexflow's baselines and the panel member of the same family
TWINS = {"gx_logreg_l2": "sk_l2", "gx_elasticnet": "sk_enet", "gx_hist_gb": "sk_hgb"}


# ------------------------------------------------------------------------------------------------ panel
class TopVariance(TransformerMixin, BaseEstimator):
    """Keep the ``k`` genes with the largest training variance (label-free, fitted in the fold)."""

    def __init__(self, k: int = 2000):
        self.k = k

    def fit(self, X, y=None):
        v = np.nanvar(np.asarray(X, np.float64), axis=0)
        self.keep_ = np.sort(np.argsort(-v, kind="stable")[: min(self.k, X.shape[1])])
        return self

    def transform(self, X):
        return np.asarray(X)[:, self.keep_]


def panel_model(name: str, y: np.ndarray, seed: int) -> BaseEstimator:
    k = int(min(3, np.bincount(y).min()))
    inner = StratifiedKFold(max(k, 2), shuffle=True, random_state=seed)
    cs = np.logspace(-4, 2, 13)
    if name == "sk_l2":
        head = LogisticRegressionCV(Cs=cs, l1_ratios=(0.0,), cv=inner, scoring="neg_log_loss", max_iter=5000,
                                    use_legacy_attributes=False)
    elif name == "sk_enet":
        head = LogisticRegressionCV(Cs=np.logspace(-2, 1, 5), l1_ratios=(0.5,), solver="saga", cv=inner,
                                    scoring="neg_log_loss", max_iter=3000, tol=1e-3, random_state=seed,
                                    use_legacy_attributes=False)
    elif name == "sk_svm":
        head = GridSearchCV(LinearSVC(max_iter=20000), {"C": np.logspace(-5, 0, 6)}, cv=inner,
                            scoring="balanced_accuracy")
    elif name == "sk_hgb":
        return make_pipeline(TopVariance(2000), HistGradientBoostingClassifier(
            max_iter=100, learning_rate=0.1, early_stopping=False, min_samples_leaf=int(np.clip(len(y) // 10, 3, 20)),
            random_state=seed))
    else:
        raise ValueError(name)
    return make_pipeline(TopVariance(2000), StandardScaler(), head)


def panel_proba(est: BaseEstimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    last = est.steps[-1][1]
    if hasattr(last, "predict_proba"):
        p = est.predict_proba(X)
    else:  # linear SVM: softmax of the decision values (ROC-AUC needs only the ranking)
        d = est.decision_function(X)
        d = np.column_stack([-d / 2, d / 2]) if d.ndim == 1 else d
        e = np.exp(d - d.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
    full = np.zeros((len(X), n_classes))
    full[:, np.asarray(last.classes_, int)] = p
    return full


def panel_matrix(cohort) -> np.ndarray:
    """Row-wise, label-free input for the panel: log2-CPM for counts, the values otherwise."""
    X = np.asarray(cohort.X, np.float64)
    if str(cohort.value_type) in ("counts", "ValueType.COUNTS") or "count" in str(cohort.value_type):
        X = np.log2(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e6 + 1)
    return np.where(np.isfinite(X), X, np.nanmean(X, axis=0))


# ------------------------------------------------------------------------------------------------ data
def load(name: str, sim_samples: int):
    from genexflow import datasets
    from genexflow.simulate import simulate_cohort

    if name == "simulator":
        c, _ = simulate_cohort(n_samples=sim_samples, n_genes=1000, seed=0)
        return c, "label", "batch", f"simulate_cohort(n_samples={sim_samples}, n_genes=1000, seed=0)"
    c = datasets.load(name)
    label = {"golub": "label", "geuvadis_sex": "sex", "bladderbatch": "cancer"}[name]
    batch = "batch" if name == "bladderbatch" else None  # what `genexflow run --dataset` passes
    return c, label, batch, f"genexflow.datasets.load({name!r})"


# ------------------------------------------------------------------------------------------------ runs
def pooled(y: np.ndarray, oof: dict[int, np.ndarray], rows: dict[int, np.ndarray]) -> list[dict]:
    """One pooled score per repeat (all the repeat's out-of-fold rows together)."""
    return [_pooled_from_truth(y[rows[r]], oof[r]) for r in sorted(oof)]


def run_panel(X, y, splits, n_classes, log) -> dict[str, dict]:
    res = {}
    for name in PANEL:
        t0 = time.perf_counter()
        oof, rows = {}, {}
        for i, sp in enumerate(splits):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est = panel_model(name, y[sp.train], seed=i).fit(X[sp.train], y[sp.train])
                p = panel_proba(est, X[sp.test], n_classes)
            oof.setdefault(sp.repeat, []).append(p)
            rows.setdefault(sp.repeat, []).append(sp.test)
        oof = {r: np.vstack(v) for r, v in oof.items()}
        rows = {r: np.concatenate(v) for r, v in rows.items()}
        res[name] = {"scores": pooled(y, oof, rows), "seconds": (time.perf_counter() - t0) / len(splits)}
        log(name, res[name])
    return res


def run_genexflow(cohort, cfg, y, splits, deep_repeats, log, gx_repeats=None) -> dict[str, dict]:
    from genexflow.training.baselines import ALL_CLASSIFICATION
    from genexflow.training.cv import DEEP, cross_validate

    res = {}
    jobs = [([s for s in splits if s.repeat < deep_repeats], True, []),
            ([s for s in splits if gx_repeats is None or s.repeat < gx_repeats], False, list(ALL_CLASSIFICATION))]
    for sps, deep, base in jobs:
        t0 = time.perf_counter()
        cv = cross_validate(cohort, cfg, splits=sps, baselines=base, deep=deep)
        secs = (time.perf_counter() - t0) / len(sps)
        pr = cv.predictions
        pcols = [f"proba_{c}" for c in cv.class_names]
        for model, g in pr.groupby("model", sort=False):
            # one pooled score per repeat: every test row of the repeat's folds, y_true as carried
            scores = [_pooled_from_truth(gr["y_true"].to_numpy(), gr[pcols].to_numpy())
                      for _, gr in g.groupby("repeat")]
            key = DEEP if model == DEEP else f"gx_{model}"
            res[key] = {"scores": scores, "seconds": secs}
            if deep:
                res[key]["best_epoch_median"] = float(cv.folds.loc[cv.folds.model == DEEP, "best_epoch"].median())
            log(key, res[key])
    return res


def _pooled_from_truth(y_true: np.ndarray, proba: np.ndarray) -> dict:
    from genexflow.metrics import classification_metrics

    m = classification_metrics(y_true.astype(int), proba, n_classes=proba.shape[1])
    return {"balanced_accuracy": m["balanced_accuracy"], "roc_auc": m["roc_auc"]}


def case_splits(kind: str, y: np.ndarray, batches, folds: int, repeats: int):
    from genexflow.training.splits import leave_one_batch_out, stratified_kfold

    if kind == "lobo":
        return leave_one_batch_out(batches, y)
    return stratified_kfold(y, folds, repeats, seed=0)


# ------------------------------------------------------------------------------------------------ output
def summarize(entry: dict) -> dict:
    s = pd.DataFrame(entry["scores"])
    return {"bacc": float(s.balanced_accuracy.mean()), "bacc_sd": float(s.balanced_accuracy.std(ddof=1)) if len(s) > 1 else 0.0,
            "auc": float(s.roc_auc.mean()), "auc_sd": float(s.roc_auc.std(ddof=1)) if len(s) > 1 else 0.0,
            "repeats": len(s)}


def render(rows: list[dict]) -> str:
    df = pd.DataFrame(rows)
    head = ["# Defaults vs a plain scikit-learn panel (`benchmarks/bench_defaults.py`)", "",
            __doc__.split("\n\n")[1].replace("\n", " "), "",
            "Pooled out-of-fold balanced accuracy (bacc) and ROC-AUC, mean ± SD over repeats; `gap` = deep model "
            "(or genexflow baseline) minus the best panel member, in points of balanced accuracy. `before` = "
            "the same row before this change of defaults (tag `before`).", ""]
    out = head
    for case, g in df.groupby("case", sort=False):
        out += [f"### {case}", "", f"data: {g.source.iloc[0]}; {g.split_desc.iloc[0]}", "",
                "| model | bacc | ROC-AUC | repeats | s/fit | bacc before | gap to best panel | gap to panel twin |",
                "|---|---|---|---|---|---|---|---|"]
        # the current row of a model: its latest non-"before" row, else its "before" row (the panel does
        # not change with genexflow's defaults, so it is measured once)
        g = g.assign(_after=g.tag != "before").sort_values("_after", kind="stable")
        now = g.drop_duplicates("model", keep="last")
        before = g[~g._after].drop_duplicates("model", keep="last").set_index("model")
        before = before[before.index.isin(now[now._after].model)]
        best = now[now.model.isin(PANEL)].bacc.max() if now.model.isin(PANEL).any() else np.nan
        for _, r in now.iterrows():
            b = f"{before.loc[r.model, 'bacc']:.3f}" if r.model in before.index else ""
            gap = "" if r.model in PANEL or not np.isfinite(best) else f"{100 * (r.bacc - best):+.1f}"
            twin = now[now.model == TWINS.get(r.model, "")]
            tgap = f"{100 * (r.bacc - twin.bacc.iloc[0]):+.1f} ({TWINS[r.model]})" if len(twin) else ""
            out.append(f"| {r.model} | {r.bacc:.3f} ± {r.bacc_sd:.3f} | {r.auc:.3f} ± {r.auc_sd:.3f} | {r.repeats} "
                       f"| {r.seconds:.1f} | {b} | {gap} | {tgap} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", choices=COHORTS)
    ap.add_argument("--family", choices=("panel", "genexflow", "both"), default="both")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--deep-repeats", type=int, default=2)
    ap.add_argument("--gx-repeats", type=int, default=None, help="repeats for genexflow's baselines (default: all)")
    ap.add_argument("--store", default=str(RESULTS / "defaults.json"),
                    help="JSON rows of this run (the table merges every benchmarks/results/defaults*.json)")
    ap.add_argument("--sim-samples", type=int, default=600)
    ap.add_argument("--splits", nargs="*", choices=("stratified", "lobo"), default=["stratified", "lobo"])
    ap.add_argument("--tag", default="now")
    ap.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides KEY=JSON for the genexflow side")
    ap.add_argument("--render", action="store_true", help="only rewrite the table from the JSON")
    ap.add_argument("--out", default=str(RESULTS / "defaults.md"))
    args = ap.parse_args()
    store = Path(args.store)
    rows = json.loads(store.read_text()) if store.exists() else []
    if not args.render:
        import torch

        from genexflow.training.config import TrainConfig
        from genexflow.training.cv import encode_labels

        torch.set_num_threads(1)
        overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
        for name in args.only or COHORTS:
            cohort, label, batch, source = load(name, args.sim_samples)
            base_cfg = TrainConfig(label=label, batch_column=batch, num_threads=1)
            cfg = base_cfg.with_(**overrides) if overrides else base_cfg
            if batch and "batch_method" not in cfg.preprocessing:
                # what `genexflow run` / `train` do with --batch-method auto: decided once on the labeled
                # cohort; a confounded batch is not corrected
                from genexflow.preprocessing.confounding import batch_label_association, choose_batch_method

                conf = batch_label_association(cohort.samples[batch], cohort.samples[label])
                if choose_batch_method(conf) == "none":
                    cfg = cfg.with_(combat=False)
                print(f"{name}: {conf.message()}", flush=True)
            lab = encode_labels(cohort, cfg)
            cohort = cohort.subset(lab.labeled)
            y = lab.y[lab.labeled]
            kinds = [k for k in args.splits if k != "lobo" or batch]
            for kind in kinds:
                splits = case_splits(kind, y, cohort.samples[batch].astype(str).to_numpy() if batch else None,
                                     args.folds, args.repeats)
                case = f"{name} {kind}"
                desc = (f"leave-one-batch-out, batch correction: {'ComBat per fold' if cfg.combat else 'none'}"
                        if kind == "lobo"
                        else f"stratified {args.folds}-fold x {args.repeats} repeats (deep model: first "
                             f"{min(args.deep_repeats, args.repeats)} repeats)")

                def log(model, entry, case=case, desc=desc, source=source):
                    s = summarize(entry)
                    print(f"{case:<24} {model:<20} bacc {s['bacc']:.3f} ± {s['bacc_sd']:.3f}  auc {s['auc']:.3f}"
                          f"  {entry['seconds']:.1f} s/fit", flush=True)
                    rows[:] = [r for r in rows if not (r["case"] == case and r["model"] == model and r["tag"] == args.tag)]
                    rows.append({"case": case, "model": model, "tag": args.tag, "source": source, "split_desc": desc,
                                 "seconds": entry["seconds"], "overrides": args.set, **s})
                    store.write_text(json.dumps(rows, indent=1))

                if args.family in ("panel", "both"):
                    run_panel(panel_matrix(cohort), y, splits, lab.n_classes, log)
                if args.family in ("genexflow", "both"):
                    run_genexflow(cohort, cfg, y, splits, args.deep_repeats, log, args.gx_repeats)
    every = [r for f in sorted(RESULTS.glob("defaults*.json")) for r in json.loads(f.read_text())]
    text = render(every)
    notes = RESULTS / "defaults_summary.md"  # the hand-written reading of the tables, kept across re-renders
    if notes.is_file():
        text += "\n" + notes.read_text()
    text += (f"\nMachine: {platform.machine()}, {os.cpu_count()} cores (shared), torch threads 1, "
             "OMP_NUM_THREADS=1.\n")
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
