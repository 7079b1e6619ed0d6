"""One tracked training run, end to end (what ``genexflow train`` and the training pipeline call):

1. MLflow run: params, the dataset (DVC md5 + shape) as an input, the environment.
2. Optional Optuna search (each trial a nested run); the best config is used below.
3. Cross-validation of the deep model and the baselines on the same fold-fitted preprocessing: per-fold
   and summary metrics, the comparison table, per-held-out-batch table (LOBO), out-of-fold predictions,
   learning curves, ROC and confusion matrix, bootstrap CIs of the pooled out-of-fold metrics.
4. Final model on all labeled rows: per-epoch metrics, fitted preprocessing, the model with signature and
   input example, latent PCA by label and batch, interpretability (attention, saliency, IG, SHAP, pathway
   attributions, enrichment) tables and plots.
5. The model bundle (+ drift reference profile) written to ``out`` and logged under ``bundle/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genexflow.bundle import PickledPreprocessing
from genexflow.cohort import Cohort
from genexflow.cohort_checks import check_trainable
from genexflow.metrics import (
    bootstrap_ci,
    confusion,
    fast_classification_metrics,
    regression_metrics,
)
from genexflow.paths import workspace_dir
from genexflow.priors.genesets import provenance_tags
from genexflow.report import write_run_report
from genexflow.training import plots
from genexflow.training.config import TrainConfig
from genexflow.training.cv import DEEP, CVResult, cross_validate
from genexflow.training.hpo import batch_size_sweep, nested_cv, run_hpo
from genexflow.training.interpret import explain
from genexflow.training.model import TrainedModel
from genexflow.training.pretrain import encoder_folder, registered_source
from genexflow.training.tracking import NullTracker, RunTracker, markdown_table
from genexflow.training.trainer import current_dist


@dataclass
class RunOutcome:
    """What :func:`train_and_track` produced."""

    run_id: str | None
    bundle_dir: Path | None
    model: TrainedModel
    cv: CVResult | None
    config: TrainConfig
    hpo: Any = None
    explanation: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    report_path: Path | None = None

    @property
    def preprocessing(self) -> Any:
        """The fitted preprocessing pipeline inside the model (and the bundle)."""
        return self.model.preprocessing

    @property
    def preprocessing_sha256(self) -> str:
        """sha256 of the preprocessing bytes in the bundle (recorded when the preprocessing was fitted)."""
        return self.model.info.preprocessing_sha256


@dataclass
class Hooks:
    """Progress hooks (the CLI draws rich bars with them); all optional."""

    on_stage: Callable[[str], None] | None = None
    fold_epochs: Callable[[str, int], Callable[[int, dict], None]] | None = None  # (fold name, max epochs)
    on_fold: Callable[[Any, str, dict], None] | None = None
    on_trial: Callable[[int, float | None, str], None] | None = None


def train_and_track(
    cohort: Cohort,
    cfg: TrainConfig,
    *,
    cohort_path: str | Path | None = None,
    cv: int = 5,
    split: str = "stratified",
    n_repeats: int = 1,
    baselines: Sequence[str] | str | None = None,
    hpo_trials: int = 0,
    hpo_sampler: str = "tpe",
    hpo_space: dict | None = None,
    out: str | Path | None = None,
    tracking: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "genexflow",
    run_name: str | None = None,
    explain_samples: int = 100,
    explain_methods: Sequence[str] = ("attention", "saliency", "integrated_gradients", "shap"),
    reference_profile: bool = True,
    hooks: Hooks | None = None,
    tags: dict[str, Any] | None = None,
    preprocessing: PickledPreprocessing | None = None,
) -> RunOutcome:
    """Cross-validate, (optionally) search, train the final model, explain it and write the bundle.

    ``cv=0`` skips cross-validation (no comparison table). ``preprocessing`` is the pipeline fitted on
    ``cohort``'s labeled rows (the pipeline's ``preprocess-fit`` step): the final model uses it as it is
    and the bundle stores its bytes unchanged; without it the final model fits its own. See the module
    docstring for what is logged.
    """
    check_trainable(cohort, cfg.label, cfg.task, cfg.covariates or (), cfg.batch_column)
    # Under torchrun every rank runs this function (the trainer needs them all); only rank 0 tracks,
    # explains and writes the bundle.
    main = current_dist().is_main
    tracking = tracking and main
    hooks = hooks or Hooks()
    stage = hooks.on_stage or (lambda s: None)
    tracker: Any = (RunTracker(experiment, run_name or f"{cohort.name}-{cfg.label}", tracking_uri,
                               tags={"genexflow.cohort": cohort.name, "genexflow.task": cfg.task, **(tags or {})})
                    if tracking else NullTracker())
    with tracker:
        tracker.log_params({**cfg.flat_params(), "cv.folds": cv, "cv.split": split, "cv.repeats": n_repeats,
                            "hpo.trials": hpo_trials, "hpo.sampler": hpo_sampler})
        tracker.set_tags(provenance_tags(cfg.gene_sets))  # which priors: version + sha256 of the file
        lineage = tracker.log_dataset(cohort, cohort_path) or {}
        tracker.log_environment()
        if cfg.init_from:
            # Once per run: a registry reference (models:/genexflow-encoder/3) is downloaded here and every
            # fold starts from the same folder; the version it resolved to is recorded with the run.
            folder = encoder_folder(cfg.init_from, getattr(tracker, "tracking_uri", None) or tracking_uri)
            source = registered_source(folder)
            tracker.set_tags({"genexflow.init_from": str(cfg.init_from),
                              **({"genexflow.init_from.version": f"{source['name']}/{source['version']}",
                                  "genexflow.init_from.run_id": source["run_id"]} if source else {})})
            cfg = cfg.with_(init_from=str(folder))

        untuned = cfg  # what the nested CV below tunes per outer fold (the sweep and the search)
        if cfg.batch_sizes:
            stage(f"batch-size sweep {list(cfg.batch_sizes)} ({cfg.lr_scaling} lr scaling)")

            sweep = batch_size_sweep(cohort, cfg, cfg.batch_sizes, cfg.lr_scaling,
                                     tracker=tracker if tracking else None)
            cfg = sweep.best_config.with_(batch_sizes=[])  # the final model's choice, from all rows
            tracker.log_params({"batch_sweep.chosen": cfg.batch_size, "batch_sweep.lr": cfg.lr})
            tracker.log_table(sweep.table.set_index("batch_size"), "batch_sweep/table")
        hpo = None
        if hpo_trials > 0:
            stage(f"hyper-parameter search ({hpo_trials} trials)")

            hpo = run_hpo(cohort, cfg, n_trials=hpo_trials, sampler=hpo_sampler, space=hpo_space,
                          tracker=tracker if tracking else None, on_trial=hooks.on_trial,
                          split="stratified" if split == "lobo" and not cfg.batch_column else split,
                          n_splits=min(3, cv) if cv >= 2 else 3)
            cfg = hpo.best_config
            tracker.log_params({f"hpo.best.{k}": v for k, v in hpo.best_params.items()})
            tracker.log_metrics({f"hpo_best_{hpo.metric}": hpo.best_value, "hpo_pruned": hpo.n_pruned})
            tracker.log_table(hpo.trials.set_index("trial"), "hpo/trials")

        cvres = None
        metrics: dict[str, float] = {}
        if cv >= 2 or split == "lobo":
            stage(f"cross-validation ({split}, {cv} folds x {n_repeats})")
            cb = None
            if hooks.fold_epochs is not None or tracking:
                def cb(sp):
                    out_cbs = [tracker.epoch_callback(prefix=f"cv/{sp.name}/")]
                    if hooks.fold_epochs is not None:
                        out_cbs.append(hooks.fold_epochs(sp.name, cfg.epochs))
                    return out_cbs
            if hpo is not None or untuned.batch_sizes:
                # Nested: every outer fold runs its own batch-size sweep and search on its training rows, so
                # the reported score never saw the data it was tuned on (the sweep and search above only
                # pick the final model's config).
                nested = nested_cv(cohort, untuned.with_(batch_sizes=[]), n_trials=hpo_trials, split=split,
                                   n_splits=cv, n_repeats=n_repeats, inner_splits=min(3, cv) if cv >= 2 else 3,
                                   baselines=baselines, sampler=hpo_sampler, space=hpo_space,
                                   on_fold=hooks.on_fold, batch_sizes=untuned.batch_sizes,
                                   lr_scaling=untuned.lr_scaling)
                cvres = nested.cv
                tracker.log_metrics({"hpo_nested_optimism": nested.optimism()})
                if untuned.batch_sizes:
                    tracker.log_params({"batch_sweep.outer_choices": ",".join(
                        str(p["batch_size"]) for p in nested.best_params)})
            else:
                cvres = cross_validate(cohort, cfg, split=split, n_splits=cv, n_repeats=n_repeats,
                                       baselines=baselines, epoch_callbacks=cb, on_fold=hooks.on_fold)
            metrics = log_cv(tracker, cvres)

        stage("final model on all labeled samples")
        cbs = [tracker.epoch_callback(prefix="final/")]
        if hooks.fold_epochs is not None:
            cbs.append(hooks.fold_epochs("final", cfg.epochs))
        model = TrainedModel.fit(cohort, cfg, cbs, preprocessing=preprocessing)
        model.info.metrics = bundle_metrics(cvres) if cvres is not None else {}
        model.info.lineage = {"dataset": lineage, "mlflow_run_id": tracker.run_id,
                              "tracking_uri": getattr(tracker, "tracking_uri", None)}
        if hpo is not None:
            model.info.extra["hpo"] = {"best_params": hpo.best_params, "best_value": hpo.best_value,
                                       "metric": hpo.metric}
        tracker.log_metrics({"final_best_epoch": model.info.extra["best_epoch"],
                             "final_best_val_loss": min(h.get("val_loss", np.inf) for h in model.history)})
        if model.info.extra["best_epoch"] == -1:
            # The GLM-started wide path was never beaten on the validation rows: say so, it is the model.
            stage("note: no epoch beat the GLM start (wide path); the final model is the GLM plus a zero residual")
            tracker.set_tags({"genexflow.glm_start_kept": "true"})
        tracker.log_preprocessing(model.pickled)
        log_final_plots(tracker, model, cohort)

        if not main:
            return RunOutcome(None, None, model, cvres, cfg, hpo, None, metrics)
        explanation = None
        if explain_samples > 0 and explain_methods:
            stage("interpretability")

            explanation = explain(model, cohort, methods=explain_methods, n_samples=explain_samples,
                                  seed=cfg.seed)
            log_explanation(tracker, explanation, cohort)

        stage("model bundle")
        bundle_dir = Path(out) if out else _default_bundle_dir(tracker.run_id)
        ref_preds = oof_deep_predictions(cvres, cohort) if cvres is not None else None
        model.save(bundle_dir, reference=cohort if reference_profile else None, reference_predictions=ref_preds)
        if tracking:
            tracker.log_artifacts(bundle_dir, "bundle")
            ex = model.inputs(cohort.subset(np.arange(min(5, cohort.n_samples))))
            tracker.log_model(model.module, (ex.X, ex.covariates), cfg.task)
            tracker.set_tags({"genexflow.bundle_dir": str(bundle_dir.resolve())})
        stage("run report")
        report = write_run_report(bundle_dir / "report.html", cohort, config=cfg, model=model, cv=cvres,
                                  explanation=explanation, lineage=lineage, run_id=tracker.run_id,
                                  tracking_uri=getattr(tracker, "tracking_uri", None), experiment=experiment)
    return RunOutcome(tracker.run_id, bundle_dir, model, cvres, cfg, hpo, explanation, metrics, report)


def _default_bundle_dir(run_id: str | None) -> Path:
    return workspace_dir() / "bundles" / (run_id or "latest")


# --------------------------------------------------------------------------------------------- CV logging
def bundle_metrics(cvres: CVResult) -> dict[str, Any]:
    """Flat CV means of the deep model plus ``baselines: {name: {metric: mean}}``, and ``oof``
    (:meth:`CVResult.oof_comparison`: pooled out-of-fold metrics and the deep model vs the best baseline on
    the same rows with a bootstrap CI), the estimate the registry gate and monitoring's performance-decay
    check compare with."""
    s = cvres.summary()
    means = [c for c in s.columns if c.endswith("_mean")]
    deep = {c[:-5]: float(s.loc[DEEP, c]) for c in means if DEEP in s.index and np.isfinite(s.loc[DEEP, c])}
    base = {m: {c[:-5]: float(s.loc[m, c]) for c in means if np.isfinite(s.loc[m, c])}
            for m in s.index if m != DEEP}
    oof = _finite(cvres.oof_comparison())
    return {**deep, "baselines": base, "cv_split": cvres.split_kind, "cv_folds": int(s["n_folds"].max()),
            "oof": oof}


def _finite(d: Any) -> Any:
    """JSON-safe copy: NaN/inf floats dropped (bundle.json and MLflow tags are strict JSON)."""
    if isinstance(d, dict):
        return {k: _finite(v) for k, v in d.items() if not (isinstance(v, float) and not np.isfinite(v))}
    return d


def log_cv(tracker: Any, cvres: CVResult) -> dict[str, float]:
    """Per-fold metrics (step = fold index), summary means/SDs, tables, OOF predictions, plots, CIs."""
    for model, g in cvres.folds.groupby("model", sort=False):
        for i, row in enumerate(g.itertuples(index=False)):
            vals = {k: getattr(row, k) for k in cvres.metric_names()}
            tracker.log_metrics(vals, step=i, prefix=f"fold/{model}/")
    s = cvres.summary()
    flat: dict[str, float] = {}
    for model in s.index:
        for c in s.columns:
            if c != "n_folds" and np.isfinite(s.loc[model, c]):
                flat[f"cv_{model}_{c}"] = float(s.loc[model, c])
    tracker.log_metrics(flat)
    tracker.log_table(cvres.table(), "comparison/baselines")
    tracker.log_table(s, "comparison/summary")
    tracker.log_table(cvres.folds.set_index(["model", "split"]), "comparison/folds")
    if cvres.split_kind == "lobo":
        tracker.log_table(cvres.per_group("accuracy"), "comparison/per_batch_accuracy")
    tracker.log_text(cvres.predictions.to_csv(index=False), "predictions/out_of_fold.csv")
    if not cvres.modular.empty:  # pathway-specific heads: each program's own held-out score
        tracker.log_table(cvres.modular_summary(), "modular/pathway_heads")
    if cvres.histories:
        tracker.log_figure(plots.learning_curves(cvres.histories, "CV learning curves"), "plots/learning_curves_cv.png")
    # Pooled out-of-fold (first repeat) curves and bootstrap CIs.
    p = cvres.predictions
    if len(p):
        first = p[p["repeat"] == p["repeat"].min()]
        models = list(dict.fromkeys(first["model"]))
        ref = first[first["model"] == models[0]].set_index("sample_id")
        y = ref["y_true"].to_numpy()
        outs = {m: first[first["model"] == m].set_index("sample_id").loc[ref.index] for m in models}
        if cvres.task == "classification":
            cols = [f"proba_{c}" for c in cvres.class_names]
            probas = {m: o[cols].to_numpy() for m, o in outs.items()}
            tracker.log_figure(plots.roc_curves(y.astype(int), probas, cvres.class_names), "plots/roc_oof.png")
            if DEEP in probas:
                cm = confusion(y, probas[DEEP].argmax(1), len(cvres.class_names))
                tracker.log_figure(plots.confusion_matrix_plot(cm, cvres.class_names, "confusion (out-of-fold)"),
                                   "plots/confusion_oof.png")
                tracker.log_dict({"classes": cvres.class_names, "matrix": cm.tolist()}, "metrics/confusion_oof.json")
                ci = bootstrap_ci(fast_classification_metrics, y.astype(int), probas[DEEP], n_boot=500)
                tracker.log_dict(ci, "metrics/bootstrap_ci_oof.json")
                tracker.log_metrics({f"oof_{k}_ci_low": v[0] for k, v in ci.items()}
                                    | {f"oof_{k}_ci_high": v[1] for k, v in ci.items()})
        else:
            preds = {m: o["prediction"].to_numpy() for m, o in outs.items()}
            tracker.log_figure(plots.predicted_vs_true(y, preds), "plots/predicted_vs_true_oof.png")
            if DEEP in preds:
                ci = bootstrap_ci(regression_metrics, y, preds[DEEP], n_boot=200, stratify=False)
                tracker.log_dict(ci, "metrics/bootstrap_ci_oof.json")
    return flat


def oof_deep_predictions(cvres: CVResult, cohort: Cohort) -> np.ndarray | None:
    """Out-of-fold deep-model outputs in cohort row order (first repeat), for the drift reference; ``None``
    unless every row was predicted exactly once (stratified CV on a fully labeled cohort)."""
    p = cvres.predictions
    if not len(p) or cvres.split_kind not in ("stratified", "kfold"):
        return None
    d = p[(p["model"] == DEEP) & (p["repeat"] == p["repeat"].min())].set_index("sample_id")
    if len(d) != cohort.n_samples or not d.index.isin(cohort.sample_ids).all():
        return None
    d = d.loc[cohort.sample_ids]
    if cvres.task == "classification":
        return d[[f"proba_{c}" for c in cvres.class_names]].to_numpy()
    return d["prediction"].to_numpy()


# --------------------------------------------------------------------------------------------- final model logging
def log_final_plots(tracker: Any, model: TrainedModel, cohort: Cohort) -> None:
    if not getattr(tracker, "active", False):
        return

    tracker.log_figure(plots.learning_curves({"final": model.history}, "final model"), "plots/learning_curves_final.png")
    out = model.predict_arrays(cohort)
    if "latent" in out:
        colour: dict[str, Any] = {}
        info = model.info
        if info.label_column in cohort.samples.columns:
            colour[info.label_column] = cohort.samples[info.label_column].astype(str).tolist() \
                if info.task == "classification" else cohort.samples[info.label_column].tolist()
        if info.batch_column and info.batch_column in cohort.samples.columns:
            colour[info.batch_column] = cohort.samples[info.batch_column].astype(str).tolist()
        if colour:
            tracker.log_figure(plots.latent_pca(out["latent"], colour), "plots/latent_pca.png")


def log_explanation(tracker: Any, ex: Any, cohort: Cohort) -> None:
    tracker.log_table(ex.genes.head(200), "interpretability/top_genes")
    tracker.log_table(ex.pathways, "interpretability/pathways")
    if len(ex.enrichment):
        tracker.log_table(ex.enrichment.head(100), "interpretability/enrichment")
    if len(ex.crosstalk_pairs):
        tracker.log_table(ex.crosstalk_pairs, "interpretability/crosstalk_pairs")
    if not getattr(tracker, "active", False):
        return
    if ex.primary in ex.genes:
        tracker.log_figure(plots.top_bar(ex.genes[ex.primary], f"top genes ({ex.primary})"),
                           "plots/top_genes.png")
    for col in [c for c in ("attention", ex.primary, "enrichment", "crosstalk") if c in ex.pathways]:
        tracker.log_figure(plots.top_bar(ex.pathways[col], f"top pathways ({col})",
                                         xlabel=col if col != ex.primary else "mean |attribution|",
                                         names=ex.pathways["name"].to_dict() if "name" in ex.pathways else None),
                           f"plots/top_pathways_{col}.png")
    if "truth" in cohort.meta or "informative_pathways" in cohort.meta:
        planted = list(cohort.meta.get("informative_pathways", []))
        if planted:
            vals = {f"precision_at_{len(planted)}_{c}": ex.precision_at_k(planted, by=c)
                    for c in ("attention", ex.primary, "enrichment", "crosstalk") if c in ex.pathways}
            tracker.log_metrics(vals)


def comparison_markdown(cvres: CVResult) -> str:
    return markdown_table(cvres.table())


__all__ = ["Hooks", "RunOutcome", "bundle_metrics", "comparison_markdown", "log_cv", "train_and_track"]
