"""Plain functions behind the components that have no library counterpart (sharding, merging, recording a
run outcome, turning metric dicts into KFP metrics). Components import them inside their bodies; tests
call them directly on tiny files."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from genexflow.bundle import PickledPreprocessing
from genexflow.cohort import Cohort
from genexflow.errors import InputError
from genexflow.ingest.values import detect_value_type
from genexflow.io import read_matrix, read_sample_sheet
from genexflow.metrics import evaluate
from genexflow.training.baselines import baseline_names, fit_predict_baseline
from genexflow.training.config import TrainConfig
from genexflow.training.folds import fit_preprocessing, transform
from genexflow.training.labels import encode_labels
from genexflow.training.model import TrainedModel
from genexflow.training.splits import train_val_split

MANIFEST = "manifest.csv"
PREDICTIONS = "predictions.parquet"
BASELINE_PREFIX = "baseline."


def shard_step(cohort_dir: str | Path, n_shards: int, out_dir: str | Path) -> list[dict[str, Any]]:
    """Split a cohort folder into at most ``n_shards`` contiguous, non-empty shards.

    Writes ``out_dir/shard-00000/`` ... (cohort folders) and ``out_dir/manifest.csv`` (sample_id, shard) so
    the merge can prove that nothing was lost or duplicated. Returns the ParallelFor items.
    """
    if n_shards < 1:
        raise InputError(f"n_shards must be >= 1 (got {n_shards})")
    cohort = Cohort.read(cohort_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = cohort.n_samples
    if n == 0:
        raise InputError(f"{cohort_dir}: the cohort has no samples to score")
    k = min(n_shards, n)
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    items, rows = [], []
    for i in range(k):
        idx = np.arange(bounds[i], bounds[i + 1])
        name = f"shard-{i:05d}"
        cohort.subset(samples=idx).write(out / name)
        items.append({"index": i, "name": name, "n_samples": int(len(idx))})
        rows.append(pd.DataFrame({"sample_id": cohort.sample_ids[idx].astype(str), "shard": i}))
    pd.concat(rows).to_csv(out / MANIFEST, index=False)
    return items


def shard_path(shards_dir: str | Path, shard: dict[str, Any]) -> Path:
    """Folder of one shard item returned by :func:`shard_step`."""
    path = Path(shards_dir) / str(shard["name"])
    if not path.is_dir():
        raise InputError(f"shard {shard.get('name')!r} not found under {shards_dir}")
    return path


def write_predictions(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write a predictions table (``sample_id`` column or index) as ``out/predictions.parquet``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if "sample_id" not in frame.columns:
        frame = frame.rename_axis("sample_id").reset_index()
    frame.to_parquet(out / PREDICTIONS, index=False)
    return out / PREDICTIONS


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions table indexed by ``sample_id`` (str) from a folder or a Parquet/CSV file."""
    path = Path(path)
    f = path / PREDICTIONS if path.is_dir() else path
    df = pd.read_csv(f) if f.suffix == ".csv" else pd.read_parquet(f)
    if "sample_id" in df.columns:
        df = df.set_index("sample_id")
    df.index = pd.Index(df.index.astype(str), name="sample_id")
    return df


def merge_step(parts: list[str | Path], shards_dir: str | Path, out_dir: str | Path) -> int:
    """Concatenate scored shards in manifest order; refuses a missing, extra or duplicated sample."""
    manifest = pd.read_csv(Path(shards_dir) / MANIFEST, dtype={"sample_id": str})
    frames = [read_predictions(p) for p in parts]
    merged = pd.concat(frames) if frames else pd.DataFrame()
    dup = merged.index[merged.index.duplicated()].unique()
    if len(dup):
        raise InputError(f"{len(dup)} sample(s) scored more than once (e.g. {', '.join(map(str, dup[:5]))})")
    expected = pd.Index(manifest["sample_id"])
    missing = expected.difference(merged.index)
    extra = merged.index.difference(expected)
    if len(missing) or len(extra):
        raise InputError(f"merge does not match the manifest: {len(missing)} sample(s) missing "
                         f"({', '.join(map(str, missing[:5]))}), {len(extra)} unexpected")
    write_predictions(merged.loc[expected], out_dir)
    return len(expected)


def infer_value_type(value_type: str, expression: str | Path, samples: str | Path | None = None) -> str:
    """``value_type`` unless it is ``auto``: then read it off the values with
    :func:`genexflow.ingest.values.detect_value_type` (the rule is in docs/ingest.md: integer-valued
    with a wide range is counts, even with a stray negative cell, which ingest then quarantines)."""
    if value_type and value_type != "auto":
        return value_type

    path = Path(expression)
    if path.is_dir() or path.suffix == ".h5ad":
        return Cohort.read(path).value_type.value
    ids = list(read_sample_sheet(samples, check_unique=False).index) if samples else None
    df = read_matrix(path, "auto", ids)
    try:
        return detect_value_type(df.to_numpy(), df.index, df.columns).value_type.value
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def split_evaluation(metadata: dict[str, Any]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Split an evaluation ``Metrics`` artifact's values into the model's metrics and the baselines'
    (keys ``baseline.<name>.<metric>``)."""
    model: dict[str, float] = {}
    base: dict[str, dict[str, float]] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        if k.startswith(BASELINE_PREFIX):
            name, _, metric = k[len(BASELINE_PREFIX):].partition(".")
            if metric:
                base.setdefault(name, {})[metric] = float(v)
        else:
            model[k] = float(v)
    return model, base


def gate_markdown(decision: Any, out: str | Path) -> Path:
    """The gate decision as a Markdown table (a KFP ``Markdown`` artifact)."""
    m = decision.metrics
    rows = {"challenger": m["challenger"]}
    if m.get("champion"):
        rows[f"champion v{decision.champion_version}"] = m["champion"]
    for b, val in (m.get("baselines") or {}).items():
        rows[f"baseline {b}"] = {decision.policy["metric"]: val}
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=sorted(m["challenger"]))
    table = table.apply(pd.to_numeric, errors="coerce").rename_axis("model")
    lines = [f"## Gate: {'PASSED' if decision.passed else 'NOT PASSED'} (challenger v{decision.challenger_version})",
             "", decision.reason, "", table.astype(object).where(table.notna(), None).to_markdown(floatfmt=".4f", missingval=""),
             "", f"policy: `{json.dumps(decision.policy)}`, held-out samples: {m.get('n_heldout')}"]
    Path(out).write_text("\n".join(lines) + "\n")
    return Path(out)


def log_metrics(metrics_artifact: Any, values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Log the finite scalar entries of ``values`` (nested dicts flattened with '.') to a KFP ``Metrics``."""
    logged: dict[str, float] = {}

    def walk(d: dict, pre: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{pre}{k}.")
            elif isinstance(v, bool | int | float | np.integer | np.floating) and math.isfinite(float(v)):
                logged[f"{pre}{k}"] = float(v)

    walk(values, prefix)
    for k, v in logged.items():
        metrics_artifact.log_metric(k, v)
    return logged


def record_outcome(state: str, error: str, pipeline_job: str, out: str | Path, *, tracking_uri: str = "",
                   experiment: str = "", model_name: str = "", extra: dict | None = None) -> dict[str, Any]:
    """Record how a pipeline run ended: ``out`` (JSON) and, when MLflow is configured, a tag
    ``genexflow.pipeline_outcome`` on every MLflow run of this pipeline job (tagged
    ``genexflow.pipeline_job`` by the train step)."""
    record = {"pipeline_job": pipeline_job, "state": state, "error": error or None, "model_name": model_name,
              "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **(extra or {})}
    tagged: list[str] = []
    if tracking_uri or experiment:
        # lazy: mlflow takes seconds to import
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri or None)
        exp = client.get_experiment_by_name(experiment) if experiment else None
        if exp is not None:
            runs = client.search_runs([exp.experiment_id],
                                      filter_string=f"tags.`genexflow.pipeline_job` = '{pipeline_job}'")
            for r in runs:
                client.set_tag(r.info.run_id, "genexflow.pipeline_outcome", state)
                if error:
                    client.set_tag(r.info.run_id, "genexflow.pipeline_error", error[:5000])
                tagged.append(r.info.run_id)
    record["mlflow_runs"] = tagged
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=1))
    return record


# ------------------------------------------------------------------------------------ training adapters
def kfp_numbers(obj: Any) -> Any:
    """Undo KFP's JSON round trip of dict/list parameters, where every number became a float: integral
    floats become ints again (``{"epochs": 15.0}`` -> 15), recursively."""
    if isinstance(obj, dict):
        return {k: kfp_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [kfp_numbers(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    return obj


def train_config(config: dict | None, label: str, batch_column: str = "", covariates: Any = (),
                 preprocessing: dict | None = None, seed: int = 0) -> Any:
    """A :class:`~genexflow.training.TrainConfig` from pipeline parameters (``config`` holds any other
    TrainConfig field: epochs, lr, model, task ...)."""
    d = kfp_numbers(dict(config or {}))  # typed fields are coerced by TrainConfig.from_dict; this fixes model/...
    d.update(label=label, batch_column=batch_column or None, covariates=list(covariates or []), seed=int(seed))
    if preprocessing:
        d["preprocessing"] = {**d.get("preprocessing", {}), **kfp_numbers(dict(preprocessing))}
    return TrainConfig.from_dict(d)


def holdout_split(cohort_dir: str | Path, cfg: Any, test_fraction: float) -> tuple[Any, Any]:
    """Stratified (classification) hold-out split of the labelled rows: ``(train, test)`` cohorts.
    Unlabelled rows are left out of both (training ignores them; they cannot be evaluated)."""
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    cohort = Cohort.read(cohort_dir)
    labels = encode_labels(cohort, cfg)
    rows = np.flatnonzero(labels.labeled)
    tr, te = train_val_split(labels.y[rows], test_fraction, cfg.seed, stratify=cfg.task == "classification")
    if len(te) < 2 or len(tr) < 4:
        raise InputError(f"{len(rows)} labelled samples are too few for a {test_fraction:.0%} hold-out split "
                         "(need >= 4 training and >= 2 test samples)")
    return cohort.subset(rows[tr]), cohort.subset(rows[te])


@dataclass
class FittedPreprocessing:
    """What the ``preprocess-fit`` step produced: the split sizes and the fitted pipeline's bytes."""

    pickled: PickledPreprocessing
    pipeline: Any
    n_train: int
    n_test: int

    @property
    def sha256(self) -> str:
        return self.pickled.sha256

    @property
    def n_genes_out(self) -> int:
        return len(self.pipeline.genes_out_)

    def metadata(self) -> dict[str, Any]:
        return {"pipeline": repr(self.pipeline)[:500], "n_genes_out": self.n_genes_out, "sha256": self.sha256}


def fit_heldout_preprocessing(cohort_dir: str | Path, cfg: Any, test_fraction: float, preprocessor_out: str | Path,
                              train_out: str | Path, test_out: str | Path) -> FittedPreprocessing:
    """Hold out a test split, fit the preprocessing on the training rows once and write the pipeline's bytes
    (``preprocessor_out``), the training rows and the held-out rows."""
    tr, te = holdout_split(cohort_dir, cfg, test_fraction)
    pre = fit_preprocessing(tr, cfg)
    pickled = PickledPreprocessing.of(pre)
    pickled.write(preprocessor_out)
    tr.write(train_out)
    te.write(test_out)
    return FittedPreprocessing(pickled, pre, tr.n_samples, te.n_samples)


class HeldoutEvaluation:
    """Held-out metrics of the model and the baselines (see :func:`evaluate_heldout`)."""

    def __init__(self, task: str, class_names: list[str], metrics: dict[str, float],
                 baselines: dict[str, dict[str, float]], y_true: np.ndarray, output: np.ndarray,
                 n_train: int, n_test: int):
        self.task, self.class_names = task, class_names
        self.metrics, self.baselines = metrics, baselines
        self.y_true, self.output = y_true, output
        self.n_train, self.n_test = n_train, n_test

    @property
    def primary_metric(self) -> str:
        return "balanced_accuracy" if self.task == "classification" else "r2"

    def flat(self) -> dict[str, float]:
        out = dict(self.metrics)
        for b, m in self.baselines.items():
            out.update({f"{BASELINE_PREFIX}{b}.{k}": v for k, v in m.items()})
        return out

    def confusion(self) -> np.ndarray:
        k = len(self.class_names)
        pred = self.output.argmax(1)
        return np.bincount(self.y_true.astype(int) * k + pred, minlength=k * k).reshape(k, k)

    def log_kfp(self, metrics: Any, classification: Any) -> None:
        """Scalars to a KFP ``Metrics``; confusion matrix (and ROC for two classes) to ``ClassificationMetrics``."""
        log_metrics(metrics, {**self.flat(), "n_train": self.n_train, "n_test": self.n_test})
        if self.task != "classification":
            return
        classification.log_confusion_matrix(list(self.class_names), self.confusion().tolist())
        if len(self.class_names) == 2:
            fpr, tpr, thr = roc_curve(self.y_true, self.output[:, 1])
            thr = np.nan_to_num(thr, posinf=1.0)
            classification.log_roc_curve(fpr.tolist(), tpr.tolist(), thr.tolist())

    def write_html(self, path: str | Path) -> Path:
        """A self-contained HTML report: model vs baselines on the held-out split, confusion matrix."""
        rows = {"model (PathwayNet)": self.metrics, **{f"baseline {b}": m for b, m in sorted(self.baselines.items())}}
        table = (pd.DataFrame.from_dict(rows, orient="index").reindex(columns=sorted(self.metrics))
                 .apply(pd.to_numeric, errors="coerce").rename_axis("model"))
        parts = [
            "<html><head><meta charset='utf-8'><title>genexflow held-out evaluation</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>",
            "</head><body><h1>Held-out evaluation</h1>",
            f"<p>{self.task}; {self.n_train} training samples, {self.n_test} held-out samples. Baselines are fit on "
            "the same training rows with the same fitted preprocessing.</p>",
            table.to_html(float_format="{:.4f}".format, na_rep=""),
        ]
        if self.task == "classification":
            cm = pd.DataFrame(self.confusion(), index=self.class_names, columns=self.class_names)
            parts += ["<h2>Confusion matrix (rows: true, columns: predicted)</h2>", cm.to_html()]
        parts.append("</body></html>")
        Path(path).write_text("\n".join(parts))
        return Path(path)


def evaluate_heldout(bundle_dir: str | Path, preprocessor_path: str | Path, train_dir: str | Path,
                     test_dir: str | Path, *, baselines: list[str] | None = None, seed: int = 0,
                     tracking_uri: str = "", run_id: str = "") -> HeldoutEvaluation:
    """Metrics on the held-out split of the trained model (its bundle, raw cohort in) and of the baselines
    (``genexflow.training.baselines``, fit on the training split's rows transformed by the model's own
    preprocessing, which must be the one in ``preprocessor_path``); logged as ``heldout_*`` metrics to the
    training run when ``run_id`` is given."""
    model = TrainedModel.load(bundle_dir)
    info = model.info
    tr, te = Cohort.read(train_dir), Cohort.read(test_dir)
    cfg = train_config({"task": info.task}, info.label_column, info.batch_column or "",
                       [c.name for c in info.covariates])
    ytr = encode_labels(tr, cfg, class_names=info.class_names or None).y
    yte = encode_labels(te, cfg, class_names=info.class_names or None).y
    pred = model.predict(te)
    out = pred[info.class_names].to_numpy() if info.task == "classification" else pred["prediction"].to_numpy()
    metrics = evaluate(info.task, yte, out)
    fitted = PickledPreprocessing.read(preprocessor_path).sha256
    if info.preprocessing_sha256 != fitted:
        raise InputError(f"the model's preprocessing (sha256 {info.preprocessing_sha256[:12] or 'none'}…) is not the "
                         f"one fitted at preprocess-fit ({fitted[:12]}…); the bundle was trained on another pipeline")
    pre = model.preprocessing
    Xtr, Xte = transform(pre, tr), transform(pre, te)
    kw: dict[str, Any] = {}
    if model.priors is not None and getattr(model.priors, "gene_sets", None):
        kw = {"gene_sets": dict(model.priors.gene_sets), "genes": [str(g) for g in pre.genes_out_]}
    base: dict[str, dict[str, float]] = {}
    for name in baseline_names(info.task, baselines or None):
        if name.startswith("pathway") and not kw:
            continue  # no gene sets to score pathways with
        _, bout = fit_predict_baseline(name, info.task, Xtr, ytr, Xte, n_classes=len(info.class_names) or None,
                                       seed=seed, **kw)
        base[name] = evaluate(info.task, yte, bout)
    ev = HeldoutEvaluation(info.task, list(info.class_names), metrics, base, yte, np.asarray(out), tr.n_samples,
                           te.n_samples)
    if run_id:
        # lazy: mlflow takes seconds to import
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri or None)
        for k, v in ev.flat().items():
            if math.isfinite(v):
                client.log_metric(run_id, "heldout_" + k.replace(BASELINE_PREFIX, "baseline_"), v)
    return ev
