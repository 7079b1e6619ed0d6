"""The retraining trigger: the KFP request body (kfp_server_api objects), real refusals from an
unreachable endpoint, the cooldown (also across processes), and a real local training run via kfp.local."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from genexflow.errors import InputError
from genexflow.monitoring.policy import CooldownStore, DriftDecision, DriftPolicy, Reason
from genexflow.pipelines.trigger import build_retrain_request, training_package, trigger_retrain


def _decision(drift: bool = True) -> DriftDecision:
    reasons = [Reason("batch", "unseen batch(es) site_9", 1.0, 0.0), Reason("gene", "40% genes drifted", 0.4, 0.05)]
    return DriftDecision(drift, reasons if drift else [], {"gene": {"drift_share": 0.4}})


ARGS = {"expression_uri": "/data/new/expression.parquet", "samples_uri": "/data/new/samples.csv",
        "label_column": "label", "batch_column": "batch", "covariates": ["age", "sex"],
        "model_name": "genexflow-classifier", "mlflow_tracking_uri": "http://mlflow:5000"}


def test_kfp_request_body_is_a_v2beta1_run_of_the_training_pipeline():
    import kfp_server_api

    from genexflow.pipelines.submit import request_json

    body = build_retrain_request(_decision(), ARGS, experiment_id="exp-1")
    assert isinstance(body, kfp_server_api.V2beta1Run)
    assert body.display_name.startswith("retrain-on-drift-")
    assert body.experiment_id == "exp-1"
    assert isinstance(body.runtime_config, kfp_server_api.V2beta1RuntimeConfig)
    assert body.runtime_config.parameters == ARGS
    assert "[batch] unseen batch(es) site_9" in body.description
    spec = body.pipeline_spec
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "genexflow-training"
    assert "platform_spec" in spec  # the cluster package carries kfp-kubernetes settings
    payload = request_json(body)
    assert payload["runtime_config"]["parameters"]["covariates"] == ["age", "sex"]
    assert training_package().name == "training.k8s.yaml"


def test_unknown_training_argument_is_refused_before_sending():
    with pytest.raises(InputError):
        build_retrain_request(_decision(), {**ARGS, "not_a_parameter": 1})


def test_unreachable_endpoint_is_an_error_and_releases_the_cooldown(tmp_path):
    from genexflow.pipelines.submit import SubmitError

    store = CooldownStore(tmp_path / "cooldown.json")
    with pytest.raises(SubmitError, match="cannot reach|refused|cannot get"):
        trigger_retrain(_decision(), mode="kfp", training_arguments=ARGS, cooldown=store, model_key="m",
                        host="http://127.0.0.1:9")
    assert store.last("m") is None  # a failed start must not block the next attempt


def test_cooldown_blocks_a_second_trigger(tmp_path):
    store = CooldownStore(tmp_path / "cooldown.json")
    ok, _ = store.acquire("m", 24, info={"run_id": "earlier"})
    assert ok
    # would raise SubmitError (unreachable host) if the cooldown did not stop it first
    res = trigger_retrain(_decision(), mode="kfp", training_arguments=ARGS, cooldown=store, model_key="m",
                          host="http://127.0.0.1:9", policy=DriftPolicy(cooldown_hours=24))
    assert not res.triggered and res.reason.startswith("cooldown")
    assert 23 * 3600 < res.cooldown_remaining_s <= 24 * 3600
    assert res.details["last"]["run_id"] == "earlier"
    # another model has its own cooldown; an expired cooldown allows again
    assert store.remaining("other", 24) == 0.0
    assert store.acquire("m", 24, now=time.time() + 25 * 3600)[0]


def test_no_drift_starts_nothing(tmp_path):
    res = trigger_retrain(_decision(False), mode="kfp", training_arguments=ARGS,
                          cooldown=tmp_path / "c.json", host="http://127.0.0.1:9")
    assert not res.triggered and res.reason.startswith("no drift")
    assert not (tmp_path / "c.json").exists()
    with pytest.raises(InputError, match="trigger mode"):
        trigger_retrain(_decision(), mode="airflow", training_arguments=ARGS)
    with pytest.raises(InputError, match="training pipeline arguments"):
        trigger_retrain(_decision(), mode="kfp", training_arguments={}, cooldown=tmp_path / "c.json")


def _race(path: str, barrier, out) -> None:
    barrier.wait()
    out.put(CooldownStore(path).acquire("model", 1.0)[0])


def test_cooldown_is_atomic_across_processes(tmp_path):
    ctx = mp.get_context("fork")  # each child opens the file itself: flock still contends
    barrier, out = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "c.json"), barrier, out)) for _ in range(6)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(results) == [False] * 5 + [True]


@pytest.mark.slow
def test_drift_starts_a_real_local_training_run(tmp_path):
    """Drift check -> decision -> trigger_retrain(mode="local") runs the training pipeline with kfp.local
    (a tiny configuration: one epoch, two CV folds, one baseline) and registers a new model version.
    About 5 minutes on a busy 2-core machine."""
    from genexflow.monitoring.check import drift_check, record_trigger
    from genexflow.pipelines.workspace import Workspace, training_arguments
    from genexflow.profile import build_reference_profile
    from genexflow.simulate import simulate_cohort

    cohort, truth = simulate_cohort(n_samples=140, n_genes=120, n_batches=3, seed=1,
                                    batch_labels=["b1", "b2", "site_9"])
    new_mask = cohort.samples["batch"].to_numpy() == "site_9"
    prof = build_reference_profile(cohort.subset(~new_mask), batch_column="batch", label_column="label",
                                   gene_sets=truth.pathways)
    new = cohort.subset(new_mask)
    cohort.write(tmp_path / "all")  # retrain on the old batches plus the new one (ComBat needs them all)
    ws = Workspace(tmp_path / "ws")
    res = drift_check(new, prof, out_dir=tmp_path / "out", mlflow_tracking_uri=ws.tracking_uri, evidently=False)
    assert res.drift and "batch" in res.decision.reason_kinds
    args = training_arguments(tmp_path / "all" / "expression.parquet", tmp_path / "all" / "samples.csv", "label", ws,
                              batch_column="batch", train_config={"epochs": 1, "patience": 1, "num_threads": 1})
    args.update(cv_folds=2, explain_samples=0, baselines=["logreg_l2"])
    store = CooldownStore(tmp_path / "cooldown.json")
    tr = trigger_retrain(res.decision, mode="local", training_arguments=args, cooldown=store, workspace=ws,
                         model_key="demo")
    assert tr.triggered and tr.details["state"] == "SUCCESS"
    assert tr.details["registered_version"] is not None
    assert store.last("demo")["state"] == "started"
    record_trigger(res, tr, ws.tracking_uri)
    import mlflow

    tags = mlflow.MlflowClient(tracking_uri=ws.tracking_uri).get_run(res.mlflow_run_id).data.tags
    assert tags["genexflow.retrain_triggered"] == "yes"
    # the same drift again within the cooldown starts nothing
    again = trigger_retrain(res.decision, mode="local", training_arguments=args, cooldown=store, workspace=ws,
                            model_key="demo")
    assert not again.triggered and again.reason.startswith("cooldown")
