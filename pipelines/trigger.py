"""Start a retraining run when a drift decision says so, at most once per cooldown (the monitoring
pipeline's ``trigger_retrain`` step and ``genexflow drift --trigger``).

``mode="local"``  runs the training pipeline with kfp.local in a local workspace
                  (:func:`genexflow.pipelines.workspace.run_training`), so a laptop retrains exactly as the
                  cluster would;
``mode="kfp"``    submits the compiled cluster training pipeline to a Kubeflow Pipelines endpoint through
                  ``kfp.Client`` (:func:`genexflow.pipelines.submit.submit_run`). An unreachable endpoint or
                  a refused request is an error, never a pretend success.

The cooldown is claimed atomically *before* the run starts (two checks racing cannot both start one) and
released again when the run cannot be started, so a failure does not block the next attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genexflow.errors import InputError
from genexflow.monitoring.policy import CooldownStore, DriftDecision, DriftPolicy
from genexflow.pipelines.compile import compiled_dir, spec_filename
from genexflow.pipelines.submit import build_run, submit_run
from genexflow.pipelines.workspace import Workspace, run_training

MODES = ("local", "kfp")


@dataclass
class TriggerResult:
    """What :func:`trigger_retrain` did.

    Attributes
    ----------
    triggered : bool
        A retraining run was started (local: and finished; kfp: accepted by the endpoint).
    mode : str
    reason : str
        Why it did or did not start (no drift, cooldown, started ...).
    run_id : str or None
        The local pipeline run folder, or the KFP run id.
    url : str or None
        The KFP UI link of the run.
    triggered_at : float or None
        Unix time the run was started.
    cooldown_remaining_s : float
        When blocked by the cooldown: seconds until the next run may start.
    details : dict
        Local: the training result (registered version, gate, deploy); kfp: the submission.
    """

    triggered: bool
    mode: str
    reason: str
    run_id: str | None = None
    url: str | None = None
    triggered_at: float | None = None
    cooldown_remaining_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"triggered": self.triggered, "mode": self.mode, "reason": self.reason, "run_id": self.run_id,
                "url": self.url, "triggered_at": self.triggered_at,
                "cooldown_remaining_s": round(self.cooldown_remaining_s, 1), "details": self.details}


def default_cooldown_store() -> CooldownStore:
    """``<workspace>/drift/cooldown.json`` of the default local workspace."""
    return CooldownStore(Workspace.default().root / "drift" / "cooldown.json")


def training_package(target: str = "cluster") -> Path:
    """The checked-in compiled training pipeline (``cluster``: with the kfp-kubernetes platform spec)."""
    return compiled_dir() / spec_filename("training", target)


def build_retrain_request(decision: DriftDecision, training_arguments: Mapping[str, Any], *,
                          package: str | Path | None = None, run_name: str | None = None,
                          experiment_id: str | None = None, service_account: str | None = None) -> Any:
    """The ``kfp_server_api.V2beta1Run`` body that ``mode="kfp"`` sends (arguments checked against the
    compiled pipeline's parameters), for inspection and dry runs."""
    return build_run(package or training_package(), arguments=dict(training_arguments),
                     run_name=run_name or _run_name(decision), experiment_id=experiment_id,
                     service_account=service_account, description=_description(decision))


def _run_name(decision: DriftDecision) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(decision.checked_at))
    return f"retrain-on-drift-{stamp}"


def _description(decision: DriftDecision) -> str:
    text = "; ".join(f"[{r.kind}] {r.message}" for r in decision.reasons) or "forced retraining"
    return f"Retraining triggered by drift: {text}"[:1000]


def trigger_retrain(
    decision: DriftDecision,
    *,
    mode: str = "local",
    training_arguments: Mapping[str, Any] | None = None,
    policy: DriftPolicy | None = None,
    cooldown: CooldownStore | str | Path | None = None,
    model_key: str = "default",
    force: bool = False,
    workspace: Any = None,
    host: str | None = None,
    experiment: str = "genexflow",
    namespace: str | None = None,
    package: str | Path | None = None,
    client: Any = None,
    on_event: Callable[[Any], None] | None = None,
) -> TriggerResult:
    """Start the training pipeline when ``decision.drift`` (or ``force``) and the cooldown allows.

    Parameters
    ----------
    decision : DriftDecision
    mode : {"local", "kfp"}
    training_arguments : mapping
        Parameters of the training pipeline (e.g. from
        :func:`genexflow.pipelines.workspace.training_arguments`: the new cohort's expression and sample
        sheet URIs, label column, model name ...).
    policy : DriftPolicy, optional
        Supplies ``cooldown_hours``.
    cooldown : CooldownStore or path, optional
        Default: ``<workspace>/drift/cooldown.json``.
    model_key : str
        Cooldown key (one cooldown per monitored model).
    force : bool
        Retrain even without drift (the cooldown still applies).
    workspace : genexflow.pipelines.workspace.Workspace, optional
        Local mode: where kfp.local and MLflow keep their state (default workspace when omitted).
    host, experiment, namespace, package, client
        KFP mode: endpoint (or ``KFP_HOST``), experiment, namespace, compiled pipeline (default: the
        checked-in cluster training spec) and an optional connected ``kfp.Client``.
    on_event : callable, optional
        Local mode: progress callback for pipeline task events.

    Returns
    -------
    TriggerResult

    Raises
    ------
    InputError
        Bad mode or missing training arguments.
    genexflow.pipelines.local.PipelineRunError, genexflow.pipelines.submit.SubmitError
        The run could not be started or failed (the cooldown is released).
    """
    if mode not in MODES:
        raise InputError(f"unknown trigger mode {mode!r}; use local or kfp")
    policy = policy or DriftPolicy()
    if not (decision.drift or force):
        return TriggerResult(False, mode, "no drift: nothing to retrain")
    if not training_arguments:
        raise InputError("retraining needs the training pipeline arguments (expression/sample-sheet URIs, "
                         "label column ...): pass training_arguments")
    store = cooldown if isinstance(cooldown, CooldownStore) else (
        CooldownStore(cooldown) if cooldown is not None else default_cooldown_store())
    ok, left = store.acquire(model_key, policy.cooldown_hours,
                             info={"mode": mode, "reasons": decision.reason_kinds, "state": "starting"})
    if not ok:
        last = store.last(model_key) or {}
        return TriggerResult(False, mode, f"cooldown: retraining for {model_key!r} was triggered "
                             f"{_ago(last.get('time'))}; next allowed in {left / 3600:.1f} h",
                             cooldown_remaining_s=left, details={"last": last})
    started = time.time()
    try:
        if mode == "local":
            res = _run_local(training_arguments, workspace, on_event)
        else:
            res = _submit(decision, training_arguments, host, experiment, namespace, package, client)
    except BaseException:
        store.release(model_key)  # nothing started: do not hold the cooldown
        raise
    res.triggered_at = started
    store.update(model_key, state="started", run_id=res.run_id, url=res.url)
    return res


def _ago(t: Any) -> str:
    if not t:
        return "recently"
    mins = (time.time() - float(t)) / 60
    return f"{mins:.0f} min ago" if mins < 120 else f"{mins / 60:.1f} h ago"


def _run_local(arguments: Mapping[str, Any], workspace: Any, on_event: Callable[[Any], None] | None) -> TriggerResult:
    ws = workspace if workspace is not None else Workspace.default()
    result = run_training(dict(arguments), ws, on_event=on_event)
    info = result.to_dict()
    return TriggerResult(True, "local", f"training pipeline ran locally ({result.run.state})",
                         run_id=str(result.run.run_dir), details=info)


def _submit(decision: DriftDecision, arguments: Mapping[str, Any], host: str | None, experiment: str,
            namespace: str | None, package: str | Path | None, client: Any) -> TriggerResult:
    sub = submit_run(package or training_package(), arguments=dict(arguments), run_name=_run_name(decision),
                     host=host, experiment=experiment, namespace=namespace, client=client)
    return TriggerResult(True, "kfp", "training run submitted to Kubeflow Pipelines", run_id=sub.id, url=sub.url,
                         details={"experiment_id": sub.experiment_id, "run_name": sub.name})
