"""Submit compiled pipelines to a Kubeflow Pipelines endpoint: one-off runs and recurring (cron) runs.

The request bodies are built here as ``kfp_server_api`` objects (exactly what ``kfp.Client`` sends to the
v2beta1 API), so they can be inspected and tested without a cluster (``genexflow pipeline submit
--dry-run`` prints them); :func:`submit_run` / :func:`schedule_run` send them through a connected
``kfp.Client``. Nothing here pretends a submission succeeded: an unreachable endpoint is an error.

The endpoint comes from ``--host`` or ``KFP_HOST``; an optional bearer token from ``KFP_TOKEN``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kfp
import kfp_server_api
from kfp.client.client import _extract_pipeline_yaml

from genexflow.errors import GenexflowError, InputError

DEFAULT_EXPERIMENT = "genexflow"


class SubmitError(GenexflowError):
    """The KFP endpoint could not be reached or refused the request."""


def resolve_host(host: str | None) -> str:
    """``host`` or ``$KFP_HOST``; raises ``InputError`` when neither is set."""
    host = host or os.environ.get("KFP_HOST")
    if not host:
        raise InputError("no KFP endpoint: pass --host URL or set KFP_HOST (e.g. http://localhost:8080)")
    if not re.match(r"^https?://", host):
        raise InputError(f"KFP host {host!r} must start with http:// or https://")
    return host.rstrip("/")


def load_package(package: str | Path) -> dict[str, Any]:
    """Read a compiled pipeline (YAML, with or without a platform spec) the way ``kfp.Client`` does and
    return the ``pipeline_spec`` request field."""
    package = Path(package)
    if not package.is_file():
        raise InputError(f"{package}: no such compiled pipeline (run `genexflow pipeline compile` first)")
    return _extract_pipeline_yaml(str(package)).to_dict()


def pipeline_parameters(spec: dict[str, Any]) -> dict[str, dict]:
    """The root input parameters of a ``pipeline_spec`` request field: ``{name: {type, default?}}``."""
    ps = spec.get("pipeline_spec", spec)
    params = ps.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {k: {"type": v.get("parameterType"), **({"default": v["defaultValue"]} if "defaultValue" in v else {})}
            for k, v in params.items()}


def check_arguments(spec: dict[str, Any], arguments: dict[str, Any]) -> None:
    """Refuse unknown parameters and missing required ones before anything is sent."""
    params = pipeline_parameters(spec)
    unknown = sorted(set(arguments) - set(params))
    if unknown:
        raise InputError(f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(params))}")
    ps = spec.get("pipeline_spec", spec)
    defs = ps.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    missing = sorted(k for k, v in defs.items() if not v.get("isOptional") and k not in arguments)
    if missing:
        raise InputError(f"missing required pipeline parameter(s): {', '.join(missing)} (pass --param NAME=VALUE)")


def normalize_cron(cron: str) -> str:
    """KFP's scheduler uses 6-field cron (seconds first); accept the usual 5-field form too."""
    fields = cron.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise InputError(f"cron expression {cron!r} must have 5 fields (min hour dom month dow) or 6 (with seconds)")
    allowed = re.compile(r"^[0-9A-Za-z*/,?#LW-]+$")
    bad = [f for f in fields if not allowed.match(f)]
    if bad:
        raise InputError(f"cron expression {cron!r}: invalid field(s) {', '.join(bad)}")
    return " ".join(fields)


def build_run(
    package: str | Path,
    *,
    arguments: dict[str, Any] | None = None,
    run_name: str,
    experiment_id: str | None = None,
    pipeline_root: str | None = None,
    service_account: str | None = None,
    description: str | None = None,
) -> Any:
    """The ``V2beta1Run`` request body for a one-off run of a compiled pipeline."""
    spec = load_package(package)
    arguments = dict(arguments or {})
    check_arguments(spec, arguments)
    return kfp_server_api.V2beta1Run(
        display_name=run_name,
        description=description,
        experiment_id=experiment_id,
        pipeline_spec=spec,
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(pipeline_root=pipeline_root, parameters=arguments),
        service_account=service_account,
    )


def build_recurring_run(
    package: str | Path,
    *,
    name: str,
    cron: str,
    arguments: dict[str, Any] | None = None,
    experiment_id: str | None = None,
    max_concurrency: int = 1,
    no_catchup: bool = True,
    enabled: bool = True,
    start_time: str | None = None,
    end_time: str | None = None,
    pipeline_root: str | None = None,
    service_account: str | None = None,
    description: str | None = None,
) -> Any:
    """The ``V2beta1RecurringRun`` request body: a cron-triggered schedule of a compiled pipeline.

    ``max_concurrency`` bounds overlapping runs (1: a slow monitoring run is never stacked);
    ``no_catchup`` skips missed intervals instead of backfilling them after a pause.
    """
    if max_concurrency < 1:
        raise InputError("max_concurrency must be >= 1")
    spec = load_package(package)
    arguments = dict(arguments or {})
    check_arguments(spec, arguments)
    trigger = kfp_server_api.V2beta1Trigger(cron_schedule=kfp_server_api.V2beta1CronSchedule(
        cron=normalize_cron(cron), start_time=start_time, end_time=end_time))
    mode = kfp_server_api.RecurringRunMode.ENABLE if enabled else kfp_server_api.RecurringRunMode.DISABLE
    return kfp_server_api.V2beta1RecurringRun(
        display_name=name,
        description=description,
        experiment_id=experiment_id,
        mode=mode,
        pipeline_spec=spec,
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(pipeline_root=pipeline_root, parameters=arguments),
        trigger=trigger,
        max_concurrency=str(max_concurrency),
        no_catchup=no_catchup,
        service_account=service_account,
    )


def request_json(body: Any) -> dict[str, Any]:
    """The JSON the client sends for a request body (what ``--dry-run`` prints)."""
    return kfp_server_api.ApiClient().sanitize_for_serialization(body)


@dataclass
class Submitted:
    """What the endpoint answered."""

    kind: str  # "run" | "recurring-run"
    id: str
    name: str
    url: str
    experiment_id: str | None


def connect(host: str | None = None, namespace: str | None = None, token: str | None = None) -> Any:
    """A ``kfp.Client`` for the endpoint; raises :class:`SubmitError` when it is unreachable."""
    host = resolve_host(host)
    token = token or os.environ.get("KFP_TOKEN")
    try:
        return kfp.Client(host=host, namespace=namespace, existing_token=token)
    except Exception as exc:  # urllib3/requests/ApiException: all mean "no usable endpoint"
        raise SubmitError(f"cannot reach Kubeflow Pipelines at {host}: {_short(exc)}") from exc


def _experiment_id(client: Any, experiment: str, namespace: str | None) -> str:
    try:
        exp = client.create_experiment(name=experiment, namespace=namespace)
    except Exception as exc:
        raise SubmitError(f"cannot get or create experiment {experiment!r}: {_short(exc)}") from exc
    return exp.experiment_id


def submit_run(package: str | Path, *, arguments: dict[str, Any] | None = None, run_name: str,
               host: str | None = None, experiment: str = DEFAULT_EXPERIMENT, namespace: str | None = None,
               service_account: str | None = None, client: Any = None) -> Submitted:
    """Create a run of a compiled pipeline on the endpoint."""
    build_run(package, arguments=arguments, run_name=run_name)  # validate before connecting
    client = client or connect(host, namespace)
    exp_id = _experiment_id(client, experiment, namespace)
    body = build_run(package, arguments=arguments, run_name=run_name, experiment_id=exp_id,
                     service_account=service_account)
    try:
        run = client._run_api.run_service_create_run(run=body)
    except Exception as exc:
        raise SubmitError(f"the endpoint refused the run: {_short(exc)}") from exc
    return Submitted("run", run.run_id, run_name, f"{client._get_url_prefix()}/#/runs/details/{run.run_id}", exp_id)


def schedule_run(package: str | Path, *, name: str, cron: str, arguments: dict[str, Any] | None = None,
                 host: str | None = None, experiment: str = DEFAULT_EXPERIMENT, namespace: str | None = None,
                 max_concurrency: int = 1, no_catchup: bool = True, enabled: bool = True,
                 service_account: str | None = None, client: Any = None) -> Submitted:
    """Create a recurring run (cron) of a compiled pipeline on the endpoint."""
    build_recurring_run(package, name=name, cron=cron, arguments=arguments, max_concurrency=max_concurrency)
    client = client or connect(host, namespace)
    exp_id = _experiment_id(client, experiment, namespace)
    body = build_recurring_run(package, name=name, cron=cron, arguments=arguments, experiment_id=exp_id,
                               max_concurrency=max_concurrency, no_catchup=no_catchup, enabled=enabled,
                               service_account=service_account)
    try:
        rr = client._recurring_run_api.recurring_run_service_create_recurring_run(recurring_run=body)
    except Exception as exc:
        raise SubmitError(f"the endpoint refused the recurring run: {_short(exc)}") from exc
    return Submitted("recurring-run", rr.recurring_run_id, name,
                     f"{client._get_url_prefix()}/#/recurringrun/details/{rr.recurring_run_id}", exp_id)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    for reason in ("Connection refused", "Name or service not known", "timed out", "certificate verify failed",
                   "Max retries exceeded"):
        if reason in str(exc):
            return reason.lower()
    status = getattr(exc, "status", None)
    if status:
        return f"HTTP {status} {getattr(exc, 'reason', '')}".strip()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
