"""Submit / schedule request bodies against the kfp client's API objects (no cluster here): the bodies carry
the compiled spec exactly as ``kfp.Client`` would send it, parameters are checked before anything is sent,
cron schedules are normalised, and an unreachable endpoint is an error, never a fake success."""

from __future__ import annotations

import json
import socket

import kfp
import kfp_server_api
import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from typer.testing import CliRunner

from genexflow.cli.main import app
from genexflow.errors import InputError
from genexflow.pipelines import compile as comp
from genexflow.pipelines import submit as sub

TRAINING = comp.compiled_dir() / "training.k8s.yaml"
MONITORING = comp.compiled_dir() / "monitoring.k8s.yaml"
ARGS = {"expression_uri": "/data/cohorts/a/expression.parquet", "samples_uri": "/data/cohorts/a/samples.csv",
        "label_column": "label", "covariates": ["age", "sex"], "hpo_trials": 10}


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_run_body_matches_kfp_client():
    body = sub.build_run(TRAINING, arguments=ARGS, run_name="train-1", experiment_id="exp-1")
    assert isinstance(body, kfp_server_api.V2beta1Run)
    # what kfp.Client.create_run_from_pipeline_package builds for the same package and arguments
    ref = kfp.Client._create_job_config(None, params=ARGS, pipeline_package_path=str(TRAINING), pipeline_id=None,
                                        version_id=None, enable_caching=None, cache_key=None, pipeline_root=None)
    assert body.pipeline_spec == ref.pipeline_spec
    assert body.runtime_config.parameters == ref.runtime_config.parameters == ARGS
    payload = sub.request_json(body)
    assert payload["display_name"] == "train-1" and payload["experiment_id"] == "exp-1"
    # the cluster package carries both documents; each parses as its protobuf message
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(payload["pipeline_spec"]["pipeline_spec"], spec)
    assert spec.pipeline_info.name == "genexflow-training"
    platform = pipeline_spec_pb2.PlatformSpec()
    json_format.ParseDict(payload["pipeline_spec"]["platform_spec"], platform)
    assert "exec-train" in platform.platforms["kubernetes"].deployment_spec.executors
    json.dumps(payload)  # serializable as sent


def test_run_body_checks_parameters():
    with pytest.raises(InputError, match="unknown pipeline parameter.*labl"):
        sub.build_run(TRAINING, arguments={**ARGS, "labl": "x"}, run_name="r")
    with pytest.raises(InputError, match="missing required.*label_column"):
        sub.build_run(TRAINING, arguments={k: v for k, v in ARGS.items() if k != "label_column"}, run_name="r")
    with pytest.raises(InputError, match="no such compiled pipeline"):
        sub.build_run(comp.compiled_dir() / "nope.yaml", arguments={}, run_name="r")


def test_recurring_run_body():
    args = {"expression_uri": "/data/incoming/expression.parquet", "samples_uri": "/data/incoming/samples.csv",
            "label_column": "label"}
    body = sub.build_recurring_run(MONITORING, name="monitor", cron="0 6 * * 1", arguments=args,
                                   experiment_id="exp-2", max_concurrency=1)
    assert isinstance(body, kfp_server_api.V2beta1RecurringRun)
    payload = sub.request_json(body)
    assert payload["trigger"]["cron_schedule"]["cron"] == "0 0 6 * * 1"
    assert payload["max_concurrency"] == "1" and payload["no_catchup"] is True
    assert payload["mode"] == kfp_server_api.RecurringRunMode.ENABLE
    assert payload["runtime_config"]["parameters"] == args
    assert payload["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "genexflow-monitoring"
    paused = sub.request_json(sub.build_recurring_run(MONITORING, name="m", cron="*/15 * * * * *", arguments=args,
                                                      enabled=False, no_catchup=False, max_concurrency=3))
    assert paused["mode"] == kfp_server_api.RecurringRunMode.DISABLE
    assert paused["trigger"]["cron_schedule"]["cron"] == "*/15 * * * * *"
    assert paused["no_catchup"] is False and paused["max_concurrency"] == "3"


@pytest.mark.parametrize("cron", ["0 6 * *", "0 6 * * * * *", "0 6 * * mon;rm"])
def test_bad_cron(cron):
    with pytest.raises(InputError, match="cron"):
        sub.normalize_cron(cron)


def test_host_resolution(monkeypatch):
    monkeypatch.delenv("KFP_HOST", raising=False)
    with pytest.raises(InputError, match="KFP_HOST"):
        sub.resolve_host(None)
    monkeypatch.setenv("KFP_HOST", "http://kfp.example:8080/")
    assert sub.resolve_host(None) == "http://kfp.example:8080"
    with pytest.raises(InputError, match="http"):
        sub.resolve_host("kfp.example")


def test_unreachable_endpoint_is_an_error():
    host = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(sub.SubmitError, match="cannot reach Kubeflow Pipelines.*connection refused"):
        sub.submit_run(TRAINING, arguments=ARGS, run_name="r", host=host)


def test_cli_dry_run_and_errors(monkeypatch):
    monkeypatch.delenv("KFP_HOST", raising=False)
    runner = CliRunner()
    res = runner.invoke(app, ["pipeline", "schedule", "monitoring", "--cron", "30 5 * * *", "--dry-run",
                              "-p", "expression_uri=/d/e.parquet", "-p", "samples_uri=/d/s.csv",
                              "-p", "label_column=label", "-p", 'covariates=["age"]'])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["trigger"]["cron_schedule"]["cron"] == "0 30 5 * * *"
    assert payload["runtime_config"]["parameters"]["covariates"] == ["age"]
    res = runner.invoke(app, ["pipeline", "submit", "training", "-p", "label_column=x"])
    assert res.exit_code != 0


def test_run_cli_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["run", "--workspace", str(tmp_path)])
    assert res.exit_code != 0 and "missing --expression, --samples, --label" in str(res.exception or res.output)
    res = runner.invoke(app, ["run", "--dataset", "nope", "--workspace", str(tmp_path)])
    assert "unknown dataset" in str(res.exception or res.output)
    res = runner.invoke(app, ["run", "-e", str(tmp_path / "x.csv"), "-s", str(tmp_path / "s.csv"), "-l", "y",
                              "--workspace", str(tmp_path)])
    assert "not found" in str(res.exception or res.output)
    res = runner.invoke(app, ["pipeline", "run", "nope", "--workspace", str(tmp_path)])
    assert "unknown pipeline" in str(res.exception or res.output)
