"""MLflow model registry for serving artifacts: register, gate, promote, roll back, deploy. Aliases, never stages.

Every registered version is an MLflow ``onnx`` model (``model/``: ``model.onnx`` with the exact exported
bytes, ``model.json`` sidecar, ``MLmodel`` with the tensor signature and compact contract metadata) plus
the training bundle (``bundle/``) when given. Version tags hold ``sha256`` of ``model.onnx``, ``metrics``,
``baselines`` and ``lineage`` (JSON). Decisions are tags too:

* ``gate.*`` (decision, reason, metrics of challenger / champion / baselines on the same held-out data,
  policy, time) on the challenger version;
* ``infra.*`` (decision, reason, max_abs_diff, time) from :mod:`genexflow.serving.infra_validate`;
* ``promotion.*`` / ``rollback.*`` (time, reason, previous champion) on the versions that gain or lose the
  ``champion`` alias, and a ``history`` tag (JSON list) on the registered model.

``challenger`` is set at registration; :meth:`Registry.promote` moves ``champion`` only for a version whose
gate and infra validation passed, recording the previous champion so :meth:`Registry.rollback` can re-point
it. :meth:`Registry.download` refuses an artifact whose sha256 differs from the registry's.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genexflow import paths
from genexflow.errors import InputError
from genexflow.export import ServingArtifact, export_bundle, load_artifact, run_onnx, sha256_file
from genexflow.io import json_default
from genexflow.metrics import evaluate_labels, higher_is_better
from genexflow.serving.inputs import build_inputs
from genexflow.serving.repository import DEFAULT_MODEL_NAME, ModelRepository, deploy
from genexflow.training.tracking import default_artifact_location

CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_NAME = "genexflow-classifier"
_TAG_MAX = 4900  # MLflow model-version tag values are limited to 5000 characters


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the workspace's embedded store, as training uses it
    (:func:`genexflow.paths.default_tracking_uri`: ``sqlite:///<$GENEXFLOW_WORKSPACE or ./.genexflow>/mlflow.db``)."""
    return paths.default_tracking_uri()


def check_reachable(tracking_uri: str, timeout: float = 3.0) -> None:
    """Fail fast, naming the fix, when an ``http(s)://`` tracking server does not answer (MLflow itself
    retries for minutes before it gives up)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # nosec B310 - http(s) checked above
            return
    except urllib.error.HTTPError:
        return  # it answered (a proxy or an older server without /health): reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(
            f"MLflow tracking server {tracking_uri} is not reachable ({reason}); start it (`genexflow stack up`) "
            "or pass --tracking-uri (or set MLFLOW_TRACKING_URI) to a running server; without either, "
            "the workspace's own store is used") from None


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _json(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=json_default)
    return text if len(text) <= _TAG_MAX else text[: _TAG_MAX - 3] + "..."


@dataclass
class VersionInfo:
    """A registered version as the CLI shows it."""

    name: str
    version: int
    aliases: list[str]
    sha256: str
    run_id: str
    created: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        return json.loads(self.tags.get("metrics", "{}"))


@dataclass
class GatePolicy:
    """When a challenger may replace the champion.

    Parameters
    ----------
    metric : str
        Metric computed on the held-out data (classification: balanced_accuracy, accuracy, macro_f1,
        roc_auc, log_loss; regression: rmse, mae, r2).
    margin : float
        The challenger must beat the champion by at least this much (negative = may be slightly worse).
    baseline_margin : float
        The challenger must beat the best baseline by at least this much.
    min_value : float, optional
        Absolute floor (ceiling for lower-is-better metrics).
    """

    metric: str = "balanced_accuracy"
    margin: float = 0.0
    baseline_margin: float = 0.0
    min_value: float | None = None

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)


@dataclass
class GateDecision:
    passed: bool
    reason: str
    challenger_version: int
    champion_version: int | None
    metrics: dict[str, Any]
    policy: dict[str, Any]
    time: str


def evaluate_artifact(artifact: ServingArtifact, cohort: Any, label_column: str | None = None) -> dict[str, float]:
    """Metrics of ``artifact`` on a held-out :class:`~genexflow.cohort.Cohort` (in-process onnxruntime)."""
    info = artifact.info
    col = label_column or info.label_column
    y = cohort.column(col).to_numpy()
    feeds, _ = build_inputs(info, cohort.frame(), cohort.samples, [i.name for i in artifact.inputs])
    out = run_onnx(artifact.onnx_path, feeds, threads=2)
    first = artifact.outputs[0].name
    return evaluate_labels(info.task, y, out[first], info.class_names)


class Registry:
    """The MLflow registry as genexflow uses it.

    Parameters
    ----------
    tracking_uri : str, optional
        ``http://127.0.0.1:5000`` for a tracking server, ``sqlite:///...`` for an embedded store
        (default: :func:`default_tracking_uri`).
    """

    def __init__(self, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        # lazy: mlflow takes seconds to import
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.client = MlflowClient(self.tracking_uri, registry_uri or self.tracking_uri)

    # ------------------------------------------------------------------ register
    def register(self, artifact: ServingArtifact | str | Path, name: str = DEFAULT_NAME, *,
                 bundle_dir: str | Path | None = None, metrics: dict[str, float] | None = None,
                 baselines: dict[str, dict[str, float]] | None = None, lineage: dict | None = None,
                 run_id: str | None = None, experiment: str = "genexflow-registry",
                 set_challenger: bool = True) -> VersionInfo:
        """Register ``artifact`` (folder with model.onnx + model.json, or a training bundle, exported first)
        as a new version of ``name``.

        Logs it as an MLflow onnx model with its signature into ``run_id`` (the training run; a new run in
        ``experiment`` otherwise), tags the version with sha256 / metrics / baselines / lineage and points
        the ``challenger`` alias at it.
        """
        # lazy: mlflow takes seconds to import; onnx is only needed for export
        import mlflow.onnx
        import onnx
        from mlflow.exceptions import MlflowException

        if not isinstance(artifact, ServingArtifact) and (Path(artifact) / "bundle.json").exists() \
                and not (Path(artifact) / "model.json").exists():
            bundle_dir = bundle_dir or artifact
            artifact = export_bundle(artifact)
        art = artifact if isinstance(artifact, ServingArtifact) else load_artifact(artifact, verify=True)
        info = art.info
        metrics = dict(metrics if metrics is not None else info.metrics)
        baselines = baselines if baselines is not None else dict(info.metrics.get("baselines", {}) or {})
        metrics.pop("baselines", None)
        lineage = lineage if lineage is not None else dict(info.lineage)
        if run_id is None and lineage.get("mlflow_run_id"):
            try:  # the training run, when it lives in this tracking store
                run_id = self.client.get_run(str(lineage["mlflow_run_id"])).info.run_id
            except MlflowException:
                run_id = None
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(
                experiment, artifact_location=default_artifact_location(self.tracking_uri))
            run_id = self.client.create_run(exp_id, run_name=f"register-{name}").info.run_id
            own_run = True
        else:
            own_run = False
        with tempfile.TemporaryDirectory() as tmp:
            mdir = Path(tmp) / "model"
            mlflow.onnx.save_model(
                onnx.load(str(art.onnx_path)), str(mdir), signature=self.signature(art),
                metadata=self.contract_metadata(art), pip_requirements=["onnxruntime"],
                save_as_external_data=False,
            )
            shutil.copyfile(art.onnx_path, mdir / "model.onnx")  # the exact exported bytes
            shutil.copyfile(art.sidecar_path, mdir / "model.json")
            self.client.log_artifacts(run_id, str(mdir), "model")
        if bundle_dir is not None:
            self.client.log_artifacts(run_id, str(bundle_dir), "bundle")
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and np.isfinite(v):
                self.client.log_metric(run_id, k, float(v))
        self.client.set_tag(run_id, "genexflow.sha256", art.sha256)
        if own_run:
            self.client.set_terminated(run_id)
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description="genexflow serving model (ONNX with "
                                                "embedded preprocessing)")
        tags = {
            "sha256": art.sha256, "metrics": _json(metrics), "baselines": _json(baselines),
            "lineage": _json(lineage), "task": info.task, "value_type": info.value_type,
            "preprocessing_sha256": info.preprocessing_sha256,
            # the stable estimate from training (pooled out-of-fold, paired with the best baseline): the gate's
            "oof": _json({k: v for k, v in (info.metrics.get("oof") or {}).items()
                          if k in ("metric", "split", "n_repeats", "n_rows", "pathwaynet", "vs_best_baseline")}),
            "n_genes": str(len(info.input_genes)), "registered_at": _now(), "artifact_path": "model",
        }
        run = self.client.get_run(run_id)
        mv = self.client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags)
        if set_challenger:
            self.client.set_registered_model_alias(name, CHALLENGER, mv.version)
        return self.get(name, str(mv.version))

    @staticmethod
    def signature(art: ServingArtifact) -> Any:
        # lazy: mlflow takes seconds to import
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        def schema(specs: list) -> Any:
            return Schema([TensorSpec(np.dtype(s.dtype), tuple(s.shape), s.name) for s in specs])

        return ModelSignature(inputs=schema(art.inputs), outputs=schema(art.outputs))

    @staticmethod
    def contract_metadata(art: ServingArtifact) -> dict:
        """Compact contract for ``MLmodel`` metadata (the full gene list lives in ``model.json``)."""
        info = art.info
        return {"genexflow": {
            "sidecar": "model.json", "sha256": art.sha256, "task": info.task, "class_names": info.class_names,
            "value_type": info.value_type, "n_genes": len(info.input_genes),
            "input_genes_sha256": hashlib.sha256("\n".join(info.input_genes).encode()).hexdigest(),
            "first_genes": info.input_genes[:5], "covariates": [asdict(c) for c in info.covariates],
            "batch_column": info.batch_column, "batch_levels": info.batch_levels,
            "label_column": info.label_column, "preprocessing": art.preprocessing,
        }}

    # ------------------------------------------------------------------ read
    def get(self, name: str, ref: str | int) -> VersionInfo:
        """A version by number (``"3"``) or alias (``"champion"``)."""
        # lazy: mlflow takes seconds to import
        from mlflow.exceptions import MlflowException

        ref = str(ref)
        try:
            mv = (self.client.get_model_version(name, ref) if ref.isdigit()
                  else self.client.get_model_version_by_alias(name, ref))
        except MlflowException as exc:
            raise InputError(f"model {name!r} has no version or alias {ref!r} in {self.tracking_uri} "
                             f"({' '.join(str(exc).split())[:120]})") from None
        return self._info(mv)

    def _info(self, mv: Any) -> VersionInfo:
        created = _dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, _dt.UTC).isoformat(timespec="seconds")
        return VersionInfo(mv.name, int(mv.version), list(mv.aliases or []), mv.tags.get("sha256", ""),
                           mv.run_id or "", created, dict(mv.tags))

    def versions(self, name: str = DEFAULT_NAME) -> list[VersionInfo]:
        mvs = self.client.search_model_versions(f"name='{name}'")
        # search results may omit aliases; read each version so aliases are complete
        return sorted((self._info(self.client.get_model_version(name, m.version)) for m in mvs),
                      key=lambda v: v.version)

    def alias_version(self, name: str, alias: str) -> int | None:
        try:
            return self.get(name, alias).version
        except InputError:
            return None

    def download(self, name: str, ref: str | int, dst: str | Path) -> tuple[ServingArtifact, VersionInfo]:
        """Download a version's serving artifact into ``dst``; refuses a sha256 that differs from the tag."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep CLI output clean
        v = self.get(name, ref)
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        local = self.client.download_artifacts(v.run_id, v.tags.get("artifact_path", "model"), str(dst))
        art = load_artifact(local, verify=False)
        self.verify(v, art)
        return art, v

    @staticmethod
    def verify(v: VersionInfo, art: ServingArtifact) -> None:
        actual = sha256_file(art.onnx_path)
        if not v.sha256 or actual != v.sha256:
            raise InputError(f"refusing {art.onnx_path}: sha256 {actual[:16]}… differs from the registry's "
                             f"{v.sha256[:16] or '(none)'}… for {v.name} v{v.version}; the artifact was modified")

    # ------------------------------------------------------------------ decisions
    def tag(self, name: str, version: int, tags: dict[str, Any]) -> None:
        for k, val in tags.items():
            self.client.set_model_version_tag(name, str(version), k, val if isinstance(val, str) else _json(val))

    def _history(self, name: str, event: dict) -> None:
        rm = self.client.get_registered_model(name)
        hist = json.loads(rm.tags.get("history", "[]"))
        hist = (hist + [event])[-20:]
        text = json.dumps(hist, sort_keys=True)
        while len(text) > _TAG_MAX and len(hist) > 1:
            hist = hist[1:]
            text = json.dumps(hist, sort_keys=True)
        self.client.set_registered_model_tag(name, "history", text)

    def gate(self, name: str, heldout: Any, *, challenger: str | int = CHALLENGER,
             policy: GatePolicy | None = None, baselines: dict[str, dict[str, float]] | None = None,
             data_description: str = "") -> GateDecision:
        """Compare the challenger with the champion (and baselines) on the same held-out cohort.

        Both models are scored in-process with onnxruntime on ``heldout`` (champion vs challenger). Against
        the baselines the gate decides on the stable estimate when training recorded one (tag ``oof``:
        pooled out-of-fold predictions of repeated CV, the challenger paired with the best baseline on the
        same rows, a bootstrap CI of the difference): it fails only when the whole interval lies below
        ``baseline_margin``. Without it, on ``baselines`` or the ``baselines`` tag (held-out metrics).
        The decision is recorded as ``gate.*`` tags on the challenger version.
        """
        policy = policy or GatePolicy()
        ch = self.get(name, challenger)
        champ_v = self.alias_version(name, CHAMPION)
        with tempfile.TemporaryDirectory() as tmp:
            ch_art, _ = self.download(name, ch.version, Path(tmp) / "challenger")
            ch_m = evaluate_artifact(ch_art, heldout)
            champ_m = None
            if champ_v is not None and champ_v != ch.version:
                champ_art, _ = self.download(name, champ_v, Path(tmp) / "champion")
                champ_m = evaluate_artifact(champ_art, heldout)
        base = baselines if baselines is not None else json.loads(ch.tags.get("baselines", "{}") or "{}")
        m = policy.metric
        if m not in ch_m:
            raise InputError(f"gate metric {m!r} is not available for this task; use one of {sorted(ch_m)}")
        sign = 1.0 if policy.higher_is_better else -1.0
        reasons, ok = [], True
        c_val = ch_m[m]
        if champ_m is not None:
            delta = sign * (c_val - champ_m[m])
            if delta < policy.margin:
                ok = False
                reasons.append(f"{m} {c_val:.4f} vs champion v{champ_v} {champ_m[m]:.4f}: improvement {delta:+.4f} "
                               f"< margin {policy.margin:+.4f}")
            else:
                reasons.append(f"beats champion v{champ_v} on {m} by {delta:+.4f} (margin {policy.margin:+.4f})")
        else:
            reasons.append("no champion yet")
        oof = json.loads(ch.tags.get("oof", "{}") or "{}")
        paired = (oof.get("vs_best_baseline") or {}) if oof.get("metric") == m else {}
        base_vals = {b: v[m] for b, v in base.items() if isinstance(v, dict) and m in v}
        if paired:
            # The stable estimate: out-of-fold predictions of repeated CV, the challenger paired with the best
            # baseline on the same rows. Refused only when the whole interval lies below the margin.
            d, lo, hi, best = (paired["difference"], paired["ci_low"], paired["ci_high"], paired["baseline"])
            what = (f"out-of-fold {m} vs best baseline {best}: {d:+.4f} (95% CI {lo:+.4f} to {hi:+.4f}, "
                    f"{paired.get('n', '?')} rows)")
            best_case = hi if sign > 0 else -lo  # the interval's most favourable improvement
            if best_case < policy.baseline_margin:
                ok = False
                reasons.append(f"{what} is credibly below the margin {policy.baseline_margin:+.4f}")
            else:
                reasons.append(f"{what}; not credibly below the margin {policy.baseline_margin:+.4f}")
        elif base_vals:
            best = max(base_vals, key=lambda b: sign * base_vals[b])
            delta = sign * (c_val - base_vals[best])
            if delta < policy.baseline_margin:
                ok = False
                reasons.append(f"{m} {c_val:.4f} does not beat baseline {best} {base_vals[best]:.4f} by "
                               f"{policy.baseline_margin:+.4f}")
            else:
                reasons.append(f"beats best baseline {best} by {delta:+.4f}")
        if policy.min_value is not None and sign * c_val < sign * policy.min_value:
            ok = False
            reasons.append(f"{m} {c_val:.4f} misses the floor {policy.min_value}")
        decision = GateDecision(ok, "; ".join(reasons), ch.version, champ_v if champ_m is not None else None,
                                {"challenger": ch_m, "champion": champ_m, "baselines": base_vals,
                                 "oof_vs_best_baseline": paired or None,
                                 "n_heldout": int(getattr(heldout, "n_samples", 0)), "data": data_description},
                                asdict(policy), _now())
        self.tag(name, ch.version, {
            "gate.decision": "pass" if ok else "fail", "gate.reason": decision.reason[:_TAG_MAX],
            "gate.metrics": decision.metrics, "gate.policy": decision.policy, "gate.time": decision.time,
            "gate.champion_version": str(decision.champion_version or ""),
        })
        self._history(name, {"event": "gate", "version": ch.version, "passed": ok, "time": decision.time,
                             "metric": m, "value": c_val})
        return decision

    def record_infra(self, name: str, version: int, passed: bool, reason: str, details: dict) -> None:
        self.tag(name, version, {"infra.decision": "pass" if passed else "fail", "infra.reason": reason[:_TAG_MAX],
                                 "infra.details": details, "infra.time": _now()})
        self._history(name, {"event": "infra-validate", "version": version, "passed": passed, "time": _now()})

    def promote(self, name: str, ref: str | int = CHALLENGER, *, reason: str = "",
                require_gate: bool = True, require_infra: bool = True, force: bool = False) -> VersionInfo:
        """Point ``champion`` at ``ref``; refuses unless its gate and infra validation passed (or ``force``)."""
        v = self.get(name, ref)
        missing = []
        if require_gate and v.tags.get("gate.decision") != "pass":
            missing.append(f"gate: {v.tags.get('gate.decision', 'not run')} ({v.tags.get('gate.reason', '-')})")
        if require_infra and v.tags.get("infra.decision") != "pass":
            missing.append(f"infra validation: {v.tags.get('infra.decision', 'not run')} "
                           f"({v.tags.get('infra.reason', '-')})")
        if missing and not force:
            raise InputError(f"refusing to promote {name} v{v.version}: " + "; ".join(missing)
                             + " — run `genexflow models gate` and infra validation first, or --force")
        prev = self.alias_version(name, CHAMPION)
        if prev == v.version:
            return v
        self.client.set_registered_model_alias(name, CHAMPION, str(v.version))
        if self.alias_version(name, CHALLENGER) == v.version:
            self.client.delete_registered_model_alias(name, CHALLENGER)
        t = _now()
        why = reason or ("forced" if missing else "gate and infra validation passed")
        self.tag(name, v.version, {"promotion.time": t, "promotion.reason": why,
                                   "promotion.previous_champion": str(prev or "")})
        if prev is not None:
            self.tag(name, prev, {"demotion.time": t, "demotion.replaced_by": str(v.version)})
        self._history(name, {"event": "promote", "version": v.version, "previous": prev, "time": t, "reason": why})
        return self.get(name, v.version)

    def rollback(self, name: str, *, reason: str = "", to: int | None = None) -> VersionInfo:
        """Re-point ``champion`` to the version it replaced (or ``to``); records why."""
        cur = self.get(name, CHAMPION)
        target = to
        if target is None:
            prev = cur.tags.get("promotion.previous_champion", "")
            if not prev:
                raise InputError(f"{name} v{cur.version} has no previous champion to roll back to; "
                                 "pass --to VERSION")
            target = int(prev)
        tv = self.get(name, target)
        t = _now()
        self.client.set_registered_model_alias(name, CHAMPION, str(tv.version))
        why = reason or "manual rollback"
        self.tag(name, cur.version, {"rollback.time": t, "rollback.reason": why,
                                     "rollback.replaced_by": str(tv.version)})
        self.tag(name, tv.version, {"rollback.restored_at": t, "rollback.restored_from": str(cur.version)})
        self._history(name, {"event": "rollback", "version": tv.version, "from": cur.version, "time": t,
                             "reason": why})
        return self.get(name, tv.version)

    def history(self, name: str = DEFAULT_NAME) -> list[dict]:
        return json.loads(self.client.get_registered_model(name).tags.get("history", "[]"))

    # ------------------------------------------------------------------ deploy
    def deploy(self, name: str, ref: str | int, repository: str | Path, *, url: str | None = None,
               model_name: str | None = None, artifact_dir: str | Path | None = None,
               target: str = "local") -> Any:
        """Deploy a registered version into a Triton model repository (and load it when ``url`` is given).

        ``artifact_dir`` deploys a local copy instead of downloading, after checking its sha256 against the
        registry's (a copy that differs is refused). ``target="gpu"`` writes the production layout
        (``onnxruntime_onnx`` platform, ``KIND_GPU``) for a GPU Triton.
        """
        v = self.get(name, ref)
        meta = {"registered_model": name, "version": v.version, "alias": str(ref) if not str(ref).isdigit() else "",
                "deployed_at": _now()}
        with tempfile.TemporaryDirectory() as tmp:
            if artifact_dir is not None:
                art = load_artifact(artifact_dir, verify=False)
                self.verify(v, art)
            else:
                art, _ = self.download(name, v.version, Path(tmp) / "artifact")
            repo = ModelRepository(repository, target=target)
            return deploy(art, repo, model_name or DEFAULT_MODEL_NAME, url, expected_sha256=v.sha256,
                          registry=meta)


def registered_bundle(model_name: str, ref: str, tracking_uri: str, dst: str | Path) -> Path:
    """Download the training bundle logged with registered version ``ref`` (number or alias) of
    ``model_name``; the drift check reads its reference profile. Refuses a version without a bundle."""
    reg = Registry(tracking_uri or None)
    v = reg.get(model_name, ref)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = reg.client.download_artifacts(v.run_id, "bundle", str(dst))
    except Exception as exc:  # MlflowException / OSError: the version was registered without its bundle
        raise InputError(f"{model_name} v{v.version} ({ref}) has no training bundle in run {v.run_id}: "
                         f"{' '.join(str(exc).split())[:160]}") from exc
    return Path(local)
