"""Gather what a training run produced into the report's data: plain, JSON-able numbers and lists.

The report is rendered from this data alone (and the data travels inside the page), so a later pipeline
step can update the model card and render the same page again without the training objects.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genexflow import __version__
from genexflow.cohort import Cohort
from genexflow.errors import InputError
from genexflow.preprocessing.confounding import batch_label_association
from genexflow.preprocessing.report import _pca, _silhouette
from genexflow.report.links import pathway_names
from genexflow.report.page import clean_json
from genexflow.report.stats import PRIMARY, cv_comparison, verdict

#: The deep model's name in CV tables (genexflow.training.cv.DEEP).
DEEP = "pathwaynet"
#: Display caps that keep the page small and readable.
MAX_PCA_POINTS = 3000
MAX_OOF_ROWS = 5000
TOP_GENES = 25
TOP_PATHWAYS = 20
TOP_PAIRS = 10
MAX_REASONS = 50
#: Attributes of a fitted preprocessing pipeline that hold a batch-correction step.
CORRECTION_STEPS = ("combat_", "combat_seq_", "harmony_")


def collect_run_data(
    cohort: Cohort,
    *,
    config: Any,
    model: Any = None,
    cv: Any = None,
    explanation: Any = None,
    lineage: dict[str, Any] | None = None,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    qc: dict[str, Any] | None = None,
    confounding: Any = None,
) -> dict[str, Any]:
    """The report's data for one training run.

    Parameters
    ----------
    cohort : Cohort
        The training cohort (raw values, as training read it).
    config : TrainConfig
    model : TrainedModel, optional
        The final model (its fitted preprocessing gives the batch-correction views).
    cv : CVResult, optional
    explanation : Explanation, optional
    lineage : dict, optional
        The dataset record logged to MLflow (name, shape, DVC md5).
    run_id, tracking_uri, experiment : str, optional
        The MLflow run.
    qc : dict, optional
        Ingest/preprocess facts the caller knows (``value_type_source``, ``quarantine``, ``imputed``), merged
        over what the cohort's own lineage says.
    confounding : ConfoundingResult or dict, optional
        The batch-label association (:func:`genexflow.preprocessing.confounding.batch_label_association`);
        computed here from the sample sheet when not given.

    Returns
    -------
    dict
        Sections ``meta, cohort, batch, cv, oof, learning, biology, card`` (JSON-able).
    """
    task = getattr(config, "task", "classification")
    label = getattr(config, "label", None)
    pre = getattr(model, "preprocessing", None)
    data = {
        "kind": "training-run",
        "meta": {"cohort": cohort.name, "task": task, "label": label,
                 "batch_column": getattr(config, "batch_column", None),
                 "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "version": _version(),
                 "primary_metric": PRIMARY.get(task, "balanced_accuracy")},
        "cohort": cohort_section(cohort, config, pre, qc),
        "batch": batch_section(cohort, config, pre, confounding),
        "cv": cv_section(cv, task, (getattr(getattr(model, "info", None), "metrics", None) or {}).get("oof")),
        "oof": oof_section(cv),
        "learning": learning_section(cv, model),
        "biology": biology_section(explanation),
        "card": card_section(cohort, config, lineage, run_id, tracking_uri, experiment, model),
    }
    return clean_json(data)


def _version() -> str:
    return __version__


# ------------------------------------------------------------------------------------------------ cohort
def cohort_section(cohort: Cohort, config: Any, pre: Any, qc: dict[str, Any] | None) -> dict[str, Any]:
    label = getattr(config, "label", None)
    batch = getattr(config, "batch_column", None)
    s = cohort.samples
    lin = dict(cohort.meta.get("lineage") or {})
    out: dict[str, Any] = {
        "name": cohort.name, "n_samples": int(cohort.n_samples), "n_genes": int(cohort.n_genes),
        "value_type": cohort.value_type.value,
        "value_type_source": value_type_source(cohort),
        "n_genes_model": int(len(pre.genes_out_)) if pre is not None and hasattr(pre, "genes_out_") else None,
        "covariates": list(getattr(config, "covariates", []) or []),
        "source": cohort.meta.get("source") or cohort.meta.get("citation"),
    }
    if label and label in s.columns:
        col = s[label]
        out["n_labeled"] = int(col.notna().sum())
        if getattr(config, "task", "classification") == "classification":
            out["classes"] = {str(k): int(v) for k, v in col.dropna().astype(str).value_counts().sort_index().items()}
        else:
            v = pd.to_numeric(col, errors="coerce")
            out["target"] = {"mean": float(v.mean()), "sd": float(v.std()), "min": float(v.min()),
                             "max": float(v.max())}
    if batch and batch in s.columns:
        out["batches"] = {str(k): int(v) for k, v in s[batch].astype(str).value_counts().sort_index().items()}
    out["quarantine"] = quarantine_facts(lin.get("quarantine"))
    out["imputed"] = imputation_facts(cohort, pre)
    for k, v in (qc or {}).items():  # what the caller measured wins over what the cohort remembers
        if v is not None:
            out[k] = v
    return out


def quarantine_facts(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """Counts per kind and the first reasons from ingest's quarantine summary (``reasons.csv`` in its folder)."""
    if not summary:
        return None
    out = {"counts": dict(summary.get("counts") or {}), "dir": summary.get("dir"),
           "n_reasons": int(summary.get("n_reasons") or 0), "reasons": []}
    folder = summary.get("dir")
    if folder:
        f = Path(folder) / "reasons.csv"
        if f.is_file():
            try:
                df = pd.read_csv(f, nrows=MAX_REASONS)
            except (OSError, ValueError, pd.errors.ParserError):
                df = pd.DataFrame()
            keep = [c for c in ("kind", "id", "check", "column", "value", "message") if c in df.columns]
            out["reasons"] = df[keep].astype(str).to_dict("records")
    return out


def imputation_facts(cohort: Cohort, pre: Any) -> dict[str, Any]:
    """Missing cells in the training matrix (the ones preprocessing imputed), where they are and how."""
    X = np.asarray(cohort.X)
    if not np.issubdtype(X.dtype, np.floating):
        return {"n_cells": 0, "method": None, "samples": {}, "genes": {}}
    miss = np.isnan(X)
    n = int(miss.sum())
    method = None
    if pre is not None:
        imp = getattr(pre, "imputer_", None)
        method = (f"KNN (k={getattr(imp, 'k', '?')})" if imp is not None
                  else "training mean of the gene" if getattr(pre, "fill_means_", None) is not None else None)
    by_sample = pd.Series(miss.sum(1), index=cohort.sample_ids.astype(str))
    by_gene = pd.Series(miss.sum(0), index=cohort.genes.astype(str))
    return {"n_cells": n, "fraction": n / max(X.size, 1), "method": method if n else None,
            "samples": {k: int(v) for k, v in by_sample[by_sample > 0].sort_values(ascending=False).head(10).items()},
            "genes": {k: int(v) for k, v in by_gene[by_gene > 0].sort_values(ascending=False).head(10).items()}}


# ------------------------------------------------------------------------------------------------ batch
def without_correction(pre: Any) -> Any | None:
    """A shallow copy of a fitted preprocessing pipeline with its batch-correction step switched off, or
    None when the pipeline corrects nothing. Every other step keeps its fitted parameters."""
    steps = [a for a in CORRECTION_STEPS if getattr(pre, a, None) is not None]
    if not steps:
        return None
    view = copy.copy(pre)
    for a in steps:
        setattr(view, a, None)
    return view


def batch_section(cohort: Cohort, config: Any, pre: Any, confounding: Any) -> dict[str, Any]:
    """PCA of the preprocessed training rows before and after batch correction, silhouettes by batch and by
    label on the top 10 PCs, and the batch-label association test."""
    batch_col = getattr(config, "batch_column", None)
    label = getattr(config, "label", None)
    out: dict[str, Any] = {"batch_column": batch_col, "method": None, "views": {},
                           "requested": (getattr(config, "preprocessing", None) or {}).get("batch_method")}
    if confounding is None and batch_col and label and {batch_col, label} <= set(cohort.samples.columns):
        try:
            confounding = batch_label_association(cohort.samples[batch_col], cohort.samples[label],
                                                  task=getattr(config, "task", "auto"))
        except InputError as exc:  # one batch or one class: nothing to test; say why on the page
            out["association"] = {"note": str(exc)}
    if confounding is not None:
        out["association"] = confounding.to_dict() if hasattr(confounding, "to_dict") else dict(confounding)
    if pre is None or not hasattr(pre, "transform"):
        out["missing"] = "no fitted preprocessing in this run"
        return out
    rng = np.random.default_rng(0)
    rows = np.arange(cohort.n_samples)
    if len(rows) > MAX_PCA_POINTS:
        rows = np.sort(rng.choice(rows, MAX_PCA_POINTS, replace=False))
    sub = cohort.subset(rows) if len(rows) < cohort.n_samples else cohort
    s = sub.samples
    out["sample_ids"] = [str(i) for i in sub.sample_ids]
    out["labels"] = s[label].astype(str).tolist() if label in s.columns else None
    out["batches"] = s[batch_col].astype(str).tolist() if batch_col and batch_col in s.columns else None
    raw = without_correction(pre)
    out["method"] = next((a.rstrip("_") for a in CORRECTION_STEPS if getattr(pre, a, None) is not None), None)
    views = {"before": raw, "after": pre} if raw is not None else {"preprocessed": pre}
    for name, p in views.items():
        X = np.asarray(p.transform(sub), dtype=np.float64)
        Z, ev = _pca(X, 10)
        v = {"pc1": np.round(Z[:, 0], 4).tolist(),
             "pc2": np.round(Z[:, 1] if Z.shape[1] > 1 else np.zeros(len(Z)), 4).tolist(),
             "explained": [round(float(e), 4) for e in ev[:2]]}
        if out["batches"] is not None:
            v["batch_silhouette"] = _silhouette(Z, np.asarray(out["batches"]))
        if out["labels"] is not None and getattr(config, "task", "classification") == "classification":
            v["label_silhouette"] = _silhouette(Z, np.asarray(out["labels"]))
        out["views"][name] = v
    return out


# ------------------------------------------------------------------------------------------------ CV
def cv_section(cv: Any, task: str, oof: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Per-fold comparison table plus, when training recorded it, the gate's stable estimate ``oof``
    (:meth:`CVResult.oof_comparison`: pooled out-of-fold, deep model paired with the best baseline)."""
    if cv is None or not len(getattr(cv, "folds", [])):
        return None
    metric = PRIMARY.get(task, "balanced_accuracy")
    folds = cv.folds
    rows = cv_comparison(folds, metric, DEEP)
    other = [m for m in ("roc_auc", "macro_f1", "pr_auc", "ece", "rmse", "mae") if m in folds.columns]
    summary = cv.summary([metric, *other])
    return {
        "metric": metric, "split": cv.split_kind, "n_folds": int(folds["split"].nunique()),
        "n_repeats": int(folds["repeat"].nunique()) if "repeat" in folds else 1,
        "rows": [r.to_dict() for r in rows], "verdict": verdict(rows, metric),
        "folds": folds[["model", "split", "group", metric]].rename(columns={metric: "value"})
        .assign(group=lambda d: d["group"].astype(str)).to_dict("records"),
        "other_metrics": {m: {model: [float(summary.loc[model, f"{m}_mean"]), float(summary.loc[model, f"{m}_sd"])]
                              for model in summary.index} for m in other},
        "n_unlabeled": int(folds.attrs.get("n_unlabeled", 0)),
        "gate_estimate": {**(oof.get("vs_best_baseline") or {}), "metric": oof.get("metric"),
                          "n_rows": oof.get("n_rows"), "n_repeats": oof.get("n_repeats")}
        if oof and oof.get("vs_best_baseline") else None,
    }


def oof_section(cv: Any) -> dict[str, Any] | None:
    """Pooled out-of-fold predictions of the first repeat (every labelled row once per model)."""
    if cv is None or not len(getattr(cv, "predictions", [])):
        return None
    p = cv.predictions
    first = p[p["repeat"] == p["repeat"].min()]
    models = list(dict.fromkeys(first["model"]))
    ref = first[first["model"] == models[0]].set_index("sample_id")
    if len(ref) > MAX_OOF_ROWS:
        ref = ref.sample(MAX_OOF_ROWS, random_state=0)
    out: dict[str, Any] = {"task": cv.task, "class_names": list(cv.class_names), "models": models,
                           "y_true": ref["y_true"].tolist(), "outputs": {}}
    for m in models:
        o = first[first["model"] == m].drop_duplicates("sample_id").set_index("sample_id").reindex(ref.index)
        if cv.task == "classification":
            cols = [f"proba_{c}" for c in cv.class_names]
            out["outputs"][m] = np.round(o[cols].to_numpy(np.float64), 4).tolist()
        else:
            out["outputs"][m] = np.round(o["prediction"].to_numpy(np.float64), 5).tolist()
    return out


def learning_section(cv: Any, model: Any) -> dict[str, Any]:
    keep = ("epoch", "train_prediction_loss", "val_loss", "val_balanced_accuracy", "val_r2")
    hist: dict[str, list] = {}
    for name, h in (getattr(cv, "histories", None) or {}).items():
        hist[f"CV {name}"] = [{k: r.get(k) for k in keep if k in r} for r in h]
    if model is not None and getattr(model, "history", None):
        hist["final model"] = [{k: r.get(k) for k in keep if k in r} for r in model.history]
    best = (getattr(model, "info", None) and model.info.extra.get("best_epoch")) if model is not None else None
    return {"histories": hist, "final_best_epoch": best}


# ------------------------------------------------------------------------------------------------ biology
def biology_section(ex: Any) -> dict[str, Any] | None:
    if ex is None:
        return None
    genes = ex.genes.head(TOP_GENES)
    primary = ex.primary
    gene_rows = [{"gene": str(g), "score": float(r[primary]) if primary in r else None,
                  "methods": {m: float(r[m]) for m in ("saliency", "integrated_gradients", "shap") if m in r}}
                 for g, r in genes.iterrows()]
    pw = ex.pathways
    enr = ex.enrichment
    by = getattr(ex, "pathway_primary", None)
    by = by if by in pw.columns else primary if primary in pw.columns else ("attention" if "attention" in pw.columns else None)
    top = pw.sort_values(by, ascending=False).head(TOP_PATHWAYS) if by else pw.head(TOP_PATHWAYS)
    pairs = ex.crosstalk_pairs.head(TOP_PAIRS) if len(ex.crosstalk_pairs) else pd.DataFrame()
    ids = list(top.index.astype(str)) + (list(pairs["pathway_a"].astype(str)) + list(pairs["pathway_b"].astype(str))
                                         if len(pairs) else [])
    if len(enr):
        ids += list(enr.head(TOP_PATHWAYS).index.astype(str))
    names = pathway_names(dict.fromkeys(ids), _explanation_names(ex))
    pw_rows = []
    for pid, r in top.iterrows():
        e = enr.loc[pid] if len(enr) and pid in enr.index else None
        pw_rows.append({"id": str(pid), "name": names.get(str(pid)), "n_genes": int(r.get("n_genes", 0) or 0),
                        "score": float(r[by]) if by else None, "attention": _opt(r, "attention"),
                        "crosstalk": _opt(r, "crosstalk"),
                        "overlap": int(e["overlap"]) if e is not None else None,
                        "fdr": float(e["fdr"]) if e is not None else None,
                        "p_value": float(e["p_value"]) if e is not None else None})
    enr_rows = [{"id": str(pid), "name": names.get(str(pid)), "overlap": int(r["overlap"]),
                 "set_size": int(r["set_size"]), "fold_enrichment": float(r["fold_enrichment"]),
                 "p_value": float(r["p_value"]), "fdr": float(r["fdr"])}
                for pid, r in enr.head(TOP_PATHWAYS).iterrows()] if len(enr) else []
    pair_rows = [{"a": str(r["pathway_a"]), "b": str(r["pathway_b"]), "a_name": names.get(str(r["pathway_a"])),
                  "b_name": names.get(str(r["pathway_b"])), "strength": float(r["strength"])}
                 for _, r in pairs.iterrows()]
    return {"primary": primary, "ranked_by": by, "genes": gene_rows, "pathways": pw_rows, "enrichment": enr_rows,
            "crosstalk": pair_rows, "n_explained": len(ex.sample_ids)}


def _explanation_names(ex: Any) -> dict[str, str]:
    """The pathway names the explanation carries (its ``name`` columns, from the run's priors)."""
    out: dict[str, str] = {}
    for df, pairs in ((ex.pathways, (("name", None),)), (ex.enrichment, (("name", None),)),
                      (ex.crosstalk_pairs, (("name_a", "pathway_a"), ("name_b", "pathway_b")))):
        for col, id_col in pairs:
            if len(df) and col in df.columns:
                ids = df.index if id_col is None else df[id_col]
                out.update({str(i): str(n) for i, n in zip(ids, df[col], strict=True) if isinstance(n, str) and n})
    return out


def _opt(row: pd.Series, key: str) -> float | None:
    return float(row[key]) if key in row and pd.notna(row[key]) else None


# ------------------------------------------------------------------------------------------------ card
def ingest_report(cohort: Cohort) -> dict[str, Any]:
    """Ingest's ``validation.json`` for the cohort (its path is in the cohort's lineage), or {} when the
    cohort was not ingested or the report is not on this machine."""
    report = (cohort.meta.get("lineage") or {}).get("report")
    if not report or not Path(report).is_file():
        return {}
    try:
        return json.loads(Path(report).read_text())
    except (OSError, ValueError):
        return {}


def value_type_source(cohort: Cohort) -> str | None:
    """How the value type was decided: given by the user, or detected by ingest's rule (docs/ingest.md)."""
    lin = cohort.meta.get("lineage") or {}
    if lin.get("value_type_source") or cohort.meta.get("value_type_source"):
        return lin.get("value_type_source") or cohort.meta.get("value_type_source")
    if cohort.meta.get("value_type_detected"):
        return f"detected: {cohort.meta['value_type_detected']}"
    return ingest_report(cohort).get("value_type_source")


def ingested_cohort(cohort: Cohort) -> dict[str, Any]:
    """The validated cohort this run's rows came from (ingest's DVC md5, folder and run id): a training split
    is hashed as itself, the ingested cohort is what DVC versions."""
    lin = cohort.meta.get("lineage") or {}
    out: dict[str, Any] = {}
    if lin.get("run_id"):
        out["ingest_run"] = lin["run_id"]
    validated = ingest_report(cohort).get("validated") or {}
    if validated.get("dvc_md5"):
        out["ingested_md5"] = validated["dvc_md5"]
        out["ingested_path"] = validated.get("path")
    return out


def card_section(cohort: Cohort, config: Any, lineage: dict[str, Any] | None, run_id: str | None,
                 tracking_uri: str | None, experiment: str | None, model: Any) -> dict[str, Any]:
    lin = dict(lineage or {})
    params = config.flat_params() if hasattr(config, "flat_params") else {}
    return {
        "data": {"name": lin.get("name", cohort.name), "shape": [lin.get("n_samples", cohort.n_samples),
                                                                  lin.get("n_genes", cohort.n_genes)],
                 "md5": lin.get("md5"), "md5_source": lin.get("md5_source"), "path": lin.get("path"),
                 **ingested_cohort(cohort)},
        "parameters": {str(k): v if isinstance(v, bool | int | float | str) or v is None else str(v)
                       for k, v in params.items()},
        "mlflow": {"run_id": run_id, "tracking_uri": tracking_uri, "experiment": experiment},
        "model": {"classes": list(model.info.class_names) if model is not None else [],
                  "n_input_genes": len(model.info.input_genes) if model is not None else None,
                  "batch_levels": list(model.info.batch_levels) if model is not None else []},
        "registry": None, "gate": None, "infra": None, "outcome": None,
    }
