"""Hyper-parameter search with Optuna (TPE or grid) over the training and model settings.

Each trial runs fold-fitted cross-validation of the deep model (no baselines) and reports the running mean
of the metric after every fold, so the median pruner stops bad trials early. With a tracker, each trial is
a nested MLflow run (params, per-fold metrics, the value, the state). The best configuration is returned
as a :class:`~genexflow.training.config.TrainConfig` for the final training.

Search-space keys are ``TrainConfig`` fields (``lr``, ``weight_decay``, ``batch_size``...) or
``model.<PathwayNetConfig field>`` (``model.d_model``, ``model.gcn_layers``, ``model.head_dropout``...).
Values are ``("loguniform", lo, hi)``, ``("uniform", lo, hi)``, ``("int", lo, hi)`` or
``("categorical", [choices])`` for TPE, and lists of values for the grid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from genexflow.cohort import Cohort
from genexflow.errors import InputError
from genexflow.metrics import LOWER_IS_BETTER
from genexflow.overrides import nest_dotted
from genexflow.training.config import NESTED_FIELDS, TrainConfig
from genexflow.training.cv import DEEP, CVResult, cross_validate, encode_labels
from genexflow.training.splits import make_splits

#: TPE search space over hidden sizes, learning rate, dropout, GCN and attention depth.
DEFAULT_SPACE: dict[str, tuple] = {
    "lr": ("loguniform", 1e-4, 3e-3),
    "weight_decay": ("loguniform", 1e-5, 1e-2),
    "model.head_dropout": ("uniform", 0.2, 0.5),
    "model.head_hidden": ("categorical", [32, 64, 128]),
    "model.d_model": ("categorical", [16, 32, 64]),
    "model.transformer_layers": ("int", 1, 2),
    "model.gcn_layers": ("int", 1, 3),
    "model.latent_dim": ("categorical", [8, 16, 32]),
    "model.pathway_interactions": ("categorical", [0, 2, 4, 8]),
}

#: Grid used when ``sampler="grid"`` and no grid is given.
DEFAULT_GRID: dict[str, list] = {"lr": [3e-4, 1e-3], "model.head_dropout": [0.2, 0.4]}


def apply_params(cfg: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """A copy of ``cfg`` with flat ``{"lr": .., "model.d_model": ..}`` parameters applied."""
    changes = nest_dotted(params, NESTED_FIELDS)
    if "model" in changes and "model.n_heads" not in params and "d_model" in changes["model"]:
        # keep heads dividing d_model
        heads = cfg.model.get("n_heads", 4)
        changes["model"]["n_heads"] = int(np.gcd(int(changes["model"]["d_model"]), int(heads))) or 1
    return cfg.with_(**changes)


def _suggest(trial, name: str, spec: Any) -> Any:
    if isinstance(spec, list | tuple) and spec and spec[0] in ("loguniform", "uniform", "int", "categorical"):
        kind = spec[0]
        if kind == "loguniform":
            return trial.suggest_float(name, spec[1], spec[2], log=True)
        if kind == "uniform":
            return trial.suggest_float(name, spec[1], spec[2])
        if kind == "int":
            return trial.suggest_int(name, spec[1], spec[2])
        return trial.suggest_categorical(name, list(spec[1]))
    if isinstance(spec, list):
        return trial.suggest_categorical(name, spec)
    raise InputError(f"bad search-space entry for {name!r}: {spec!r}")


@dataclass
class HPOResult:
    """Outcome of :func:`run_hpo`."""

    best_params: dict[str, Any]
    best_value: float
    best_config: TrainConfig
    metric: str
    trials: pd.DataFrame
    study: Any = None

    @property
    def n_pruned(self) -> int:
        return int((self.trials["state"] == "PRUNED").sum()) if len(self.trials) else 0


def run_hpo(
    cohort: Cohort,
    cfg: TrainConfig,
    n_trials: int = 20,
    sampler: str = "tpe",
    space: Mapping[str, Any] | None = None,
    metric: str | None = None,
    split: str = "stratified",
    n_splits: int = 3,
    tracker: Any = None,
    timeout: float | None = None,
    pruner: str = "median",
    prune_startup: int = 2,
    on_trial: Callable[[int, float | None, str], None] | None = None,
) -> HPOResult:
    """Search hyper-parameters by cross-validated deep-model performance.

    Parameters
    ----------
    cohort : Cohort
    cfg : TrainConfig
        Base configuration; trials override the searched keys.
    n_trials : int
        TPE trials (grid: capped at the grid size).
    sampler : {"tpe", "grid"}
    space : mapping, optional
        TPE space (:data:`DEFAULT_SPACE`) or grid (:data:`DEFAULT_GRID`).
    metric : str, optional
        Default ``balanced_accuracy`` (classification) / ``r2`` (regression).
    split, n_splits : CV inside each trial (split seeds differ from the evaluation CV's).
    tracker : RunTracker, optional
        Each trial becomes a nested run of the tracker's run.
    pruner : {"median", "none"}
        Median rule: a trial whose running mean after a fold is worse than the median of earlier trials at
        that fold stops; the first ``prune_startup`` trials always run to the end.
    on_trial : callable ``(number, value, state)``
    """
    # lazy: optuna is only needed for HPO
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric = metric or ("balanced_accuracy" if cfg.task == "classification" else "r2")
    direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    if sampler == "tpe":
        space = dict(space or DEFAULT_SPACE)
        samp = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(5, max(1, n_trials // 3)))
    elif sampler == "grid":
        space = dict(space or DEFAULT_GRID)
        if not all(isinstance(v, list) for v in space.values()):
            raise InputError("a grid search space maps each key to a list of values")
        samp = optuna.samplers.GridSampler(space, seed=cfg.seed)
        n_trials = min(n_trials, int(np.prod([len(v) for v in space.values()])))
    else:
        raise InputError(f"unknown sampler {sampler!r}; use tpe or grid")
    prn = (optuna.pruners.MedianPruner(n_startup_trials=prune_startup, n_warmup_steps=0) if pruner == "median"
           else optuna.pruners.NopPruner())
    study = optuna.create_study(direction=direction, sampler=samp, pruner=prn)

    labels = encode_labels(cohort, cfg)
    data = cohort.subset(labels.labeled) if not labels.labeled.all() else cohort
    y = labels.y[labels.labeled]
    batches = data.samples[cfg.batch_column].astype(str).to_numpy() if cfg.batch_column else None
    # Different shuffles from the evaluation CV, so the search does not tune to the reported folds.
    splits = make_splits(split, y, batches, n_splits=n_splits, seed=cfg.seed + 7919, task=cfg.task)

    def objective(trial) -> float:
        params = {k: _suggest(trial, k, v) for k, v in space.items()}
        tcfg = apply_params(cfg, params)
        ctx = tracker.child(f"trial-{trial.number:03d}", tags={"hpo.trial": trial.number}) if tracker else None
        ch = ctx.__enter__() if ctx else None
        state = "COMPLETE"
        try:
            if ch is not None:
                ch.log_params({**params, "trial": trial.number})
            values: list[float] = []
            for i, sp in enumerate(splits):
                res = cross_validate(data, tcfg, splits=[sp], baselines=[])
                v = float(res.folds.loc[res.folds["model"] == DEEP, metric].iloc[0])
                values.append(v if np.isfinite(v) else (1e9 if direction == "minimize" else -1e9))
                running = float(np.mean(values))
                trial.report(running, step=i)
                if ch is not None:
                    ch.log_metrics({metric: v}, step=i, prefix="fold_")
                if trial.should_prune():
                    state = "PRUNED"
                    raise optuna.TrialPruned()
            value = float(np.mean(values))
            if ch is not None:
                ch.log_metrics({metric: value, f"{metric}_sd": float(np.std(values))})
            return value
        except optuna.TrialPruned:
            raise
        except Exception:
            state = "FAIL"
            raise
        finally:
            if ch is not None:
                ch.set_tags({"hpo.state": state})
                ctx.__exit__(None, None, None)
            if on_trial is not None:
                on_trial(trial.number, trial.user_attrs.get("value"), state)

    study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise InputError("no HPO trial completed; check the search space and data size")
    best = study.best_trial
    rows = [{"trial": t.number, "state": t.state.name, "value": t.value, **t.params} for t in study.trials]
    return HPOResult(dict(best.params), float(best.value), apply_params(cfg, best.params), metric,
                     pd.DataFrame(rows), study)


def grid_from_lists(pairs: Sequence[str]) -> dict[str, list]:
    """Parse ``["lr=1e-4,1e-3", "model.d_model=16,32"]`` into a grid (numbers converted)."""
    grid: dict[str, list] = {}
    for p in pairs:
        k, _, vals = p.partition("=")
        if not vals:
            raise InputError(f"grid entry {p!r} must look like key=v1,v2")
        grid[k.strip()] = [_num(v.strip()) for v in vals.split(",")]
    return grid


def _num(s: str) -> Any:
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


@dataclass
class NestedCVResult:
    """Outcome of :func:`nested_cv`: the outer folds' scores and each outer fold's own search.

    Attributes
    ----------
    cv : CVResult
        Outer-fold metrics and out-of-fold predictions of the tuned deep model (and the baselines on the
        same outer folds): the score no search ever saw.
    best_params : list of dict
        Per outer fold, the configuration its inner search picked (in ``cv.folds`` split order).
    inner_best : list of float
        Per outer fold, the inner search's best value (optimistic: compare with ``cv``'s to see how much
        the search overfits).
    searched : list of ndarray
        Per outer fold, the sample IDs its search was run on (the outer training rows).
    """

    cv: Any
    best_params: list[dict[str, Any]]
    inner_best: list[float]
    searched: list[np.ndarray]

    def optimism(self, metric: str | None = None) -> float:
        """Mean inner best value minus the outer-fold mean of the deep model (positive = optimistic)."""
        metric = metric or ("balanced_accuracy" if self.cv.task == "classification" else "r2")
        outer = self.cv.folds.loc[self.cv.folds["model"] == DEEP, metric]
        return float(np.mean(self.inner_best) - outer.mean())


def nested_cv(
    cohort: Cohort,
    cfg: TrainConfig,
    n_trials: int = 10,
    split: str = "stratified",
    n_splits: int = 5,
    n_repeats: int = 1,
    inner_splits: int = 3,
    baselines: Sequence[str] | str | None = None,
    sampler: str = "tpe",
    space: Mapping[str, Any] | None = None,
    metric: str | None = None,
    tracker: Any = None,
    timeout: float | None = None,
    on_fold: Callable[[Any, str, dict[str, float]], None] | None = None,
    batch_sizes: Sequence[int] = (),
    lr_scaling: str = "sqrt",
) -> NestedCVResult:
    """Nested cross-validation: an Optuna search inside every outer training fold, scored on the outer test.

    For each outer split, :func:`run_hpo` searches on the outer training rows only (its own inner
    ``inner_splits``-fold CV); the best configuration is then trained on the whole outer training fold
    and scored on the outer test rows, which neither the search nor the early stopping ever saw. The
    baselines (their own inner-CV penalties) run on the same outer folds. The reported score therefore
    never saw the data it was tuned on (Varma & Simon 2006; Cawley & Talbot 2010).

    Parameters
    ----------
    cohort, cfg : as in :func:`run_hpo`
    n_trials : int
        Trials per outer fold.
    split, n_splits, n_repeats : the outer splits (as :func:`genexflow.training.cv.cross_validate`)
    inner_splits : int
        Folds of each inner search.
    baselines : baselines on the outer folds (``[]`` for none)
    tracker : RunTracker, optional
        Inner trials become nested runs (``outer-<fold>/trial-<n>``).
    batch_sizes, lr_scaling : the batch-size sweep (:func:`batch_size_sweep`), run first on each outer
        training fold when given; ``n_trials=0`` runs the sweep alone. The chosen size and learning rate
        are recorded in ``best_params`` as ``batch_size`` / ``lr``.
    """
    labels = encode_labels(cohort, cfg)
    data = cohort.subset(labels.labeled) if not labels.labeled.all() else cohort
    y = labels.y[labels.labeled]
    batches = data.samples[cfg.batch_column].astype(str).to_numpy() if cfg.batch_column else None
    outer = make_splits(split, y, batches, n_splits=n_splits, n_repeats=n_repeats, seed=cfg.seed, task=cfg.task)
    inner_split = "stratified" if split == "lobo" else split
    parts: list[CVResult] = []
    best_params: list[dict[str, Any]] = []
    inner_best: list[float] = []
    searched: list[np.ndarray] = []
    for i, sp in enumerate(outer):
        # the search sees the outer training rows only
        inner = data.subset(sp.train)
        searched.append(np.asarray(inner.sample_ids))
        fold_cfg, chosen, value = cfg.with_(seed=cfg.seed + 101 * i), {}, float("nan")
        if batch_sizes:
            sweep = batch_size_sweep(inner, fold_cfg, batch_sizes, lr_scaling, n_splits=inner_splits, metric=metric)
            fold_cfg = sweep.best_config
            chosen = {"batch_size": fold_cfg.batch_size, "lr": fold_cfg.lr}
            value = float(sweep.table.loc[sweep.table["chosen"], f"{sweep.metric}_mean"].iloc[0])
        if n_trials > 0:
            search = run_hpo(inner, fold_cfg, n_trials=n_trials, sampler=sampler, space=space, metric=metric,
                             split=inner_split, n_splits=inner_splits, tracker=tracker, timeout=timeout)
            fold_cfg, chosen, value = search.best_config, {**chosen, **search.best_params}, search.best_value
        best_params.append(chosen)
        inner_best.append(value)
        parts.append(cross_validate(data, fold_cfg.with_(seed=cfg.seed, batch_sizes=[]), splits=[sp],
                                    baselines=baselines, on_fold=on_fold))
    folds = pd.concat([p.folds for p in parts], ignore_index=True)
    folds.attrs["n_unlabeled"] = int((~labels.labeled).sum())
    preds = pd.concat([p.predictions for p in parts], ignore_index=True)
    hist = {k: v for p in parts for k, v in p.histories.items()}
    modular = [p.modular for p in parts if not p.modular.empty]
    cv = CVResult(cfg.task, labels.class_names, folds, preds, hist, split,
                  modular=pd.concat(modular, ignore_index=True) if modular else pd.DataFrame())
    return NestedCVResult(cv, best_params, inner_best, searched)


#: Learning-rate scaling rules for a batch size b relative to the base batch size b0.
LR_SCALING = {"linear": 1.0, "sqrt": 0.5}  # lr_b = lr_0 * (b / b0) ** exponent


@dataclass
class BatchSweepResult:
    """Outcome of :func:`batch_size_sweep`: one row per batch size and the chosen configuration."""

    table: pd.DataFrame
    best_config: TrainConfig
    metric: str

    @property
    def best_batch_size(self) -> int:
        return int(self.best_config.batch_size)


def scaled_lr(lr: float, batch_size: int, base_batch_size: int, rule: str = "sqrt") -> float:
    """``lr * (batch_size / base_batch_size) ** e`` with e = 1 (linear, Goyal et al. 2017) or 1/2
    (square root, Krizhevsky 2014; the rule for adaptive optimizers such as Adam, Malladi et al. 2022)."""
    if rule not in LR_SCALING:
        raise InputError(f"unknown lr scaling rule {rule!r}; use {', '.join(LR_SCALING)}")
    return float(lr * (batch_size / base_batch_size) ** LR_SCALING[rule])


def batch_size_sweep(
    cohort: Cohort,
    cfg: TrainConfig,
    sizes: Sequence[int] = (8, 16, 32, 64, 128),
    rule: str = "sqrt",
    n_splits: int = 3,
    metric: str | None = None,
    tracker: Any = None,
    tolerance: float = 0.01,
) -> BatchSweepResult:
    """Cross-validate the deep model at several batch sizes, each with its scaled learning rate.

    ``cfg.batch_size`` / ``cfg.lr`` are the base pair; batch size b trains with
    :func:`scaled_lr`. Each size is a nested MLflow run under ``tracker`` (params ``batch_size``, ``lr``,
    ``lr_scaling``; metrics: the CV mean/SD of ``metric`` and seconds per epoch). The chosen size is the
    largest (fastest per epoch) whose mean is within ``tolerance`` of the best mean. Splits use other
    shuffles than the reported CV (as :func:`run_hpo`).
    """
    metric = metric or ("balanced_accuracy" if cfg.task == "classification" else "r2")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    sizes = sorted({int(b) for b in sizes})
    if not sizes or sizes[0] < 1:
        raise InputError("batch sizes must be positive integers")
    labels = encode_labels(cohort, cfg)
    data = cohort.subset(labels.labeled) if not labels.labeled.all() else cohort
    splits = make_splits("stratified", labels.y[labels.labeled], n_splits=n_splits, seed=cfg.seed + 7919,
                         task=cfg.task)
    rows = []
    for b in sizes:
        lr = scaled_lr(cfg.lr, b, cfg.batch_size, rule)
        bcfg = cfg.with_(batch_size=b, lr=lr)
        res = cross_validate(data, bcfg, splits=splits, baselines=[])
        f = res.folds[res.folds["model"] == DEEP]
        epochs = sum(len(h) for h in res.histories.values())
        row = {"batch_size": b, "lr": lr, f"{metric}_mean": float(f[metric].mean()),
               f"{metric}_sd": float(f[metric].std(ddof=0)), "seconds_per_epoch": float(f["seconds"].sum()) / max(epochs, 1)}
        rows.append(row)
        if tracker is not None:
            with tracker.child(f"batch-{b}", tags={"batch_sweep": b}) as ch:
                ch.log_params({"batch_size": b, "lr": lr, "lr_scaling": rule, "base_batch_size": cfg.batch_size,
                               "base_lr": cfg.lr})
                ch.log_metrics({k: v for k, v in row.items() if k not in ("batch_size", "lr")})
    table = pd.DataFrame(rows)
    score = sign * table[f"{metric}_mean"]
    ok = table[score >= score.max() - tolerance]
    best = ok.iloc[-1]  # the largest batch size among the near-best: fewest steps per epoch
    table["chosen"] = table["batch_size"] == best["batch_size"]
    return BatchSweepResult(table, cfg.with_(batch_size=int(best["batch_size"]), lr=float(best["lr"])), metric)
