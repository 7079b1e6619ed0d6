"""The plain functions behind the shard / merge / outcome components, on tiny generated cohorts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genexflow.cohort import Cohort
from genexflow.components import _steps
from genexflow.errors import InputError


@pytest.fixture
def cohort_dir(tmp_path):
    rng = np.random.default_rng(0)
    n = 23
    c = Cohort(X=rng.poisson(20, size=(n, 7)).astype(np.float32), genes=pd.Index([f"G{i}" for i in range(7)]),
               samples=pd.DataFrame({"label": rng.choice(["a", "b"], n)},
                                    index=pd.Index([f"S{i:03d}" for i in range(n)], name="sample_id")),
               value_type="counts", name="tiny")
    return c.write(tmp_path / "cohort")


def _score(shard_dir, out):
    c = Cohort.read(shard_dir)
    frame = pd.DataFrame({"prediction": c.X.sum(axis=1)}, index=c.sample_ids)
    return _steps.write_predictions(frame, out)


@pytest.mark.parametrize("n_shards", [1, 4, 23, 50])
def test_shard_merge_loses_nothing(tmp_path, cohort_dir, n_shards):
    items = _steps.shard_step(cohort_dir, n_shards, tmp_path / "shards")
    assert len(items) == min(n_shards, 23)
    assert sum(i["n_samples"] for i in items) == 23 and min(i["n_samples"] for i in items) >= 1
    parts = [_score(_steps.shard_path(tmp_path / "shards", it), tmp_path / f"p{it['index']}") for it in items]
    n = _steps.merge_step(list(reversed([p.parent for p in parts])), tmp_path / "shards", tmp_path / "merged")
    merged = _steps.read_predictions(tmp_path / "merged")
    full = Cohort.read(cohort_dir)
    assert n == 23 and list(merged.index) == list(full.sample_ids)  # manifest order, whatever the part order
    np.testing.assert_allclose(merged["prediction"].to_numpy(), full.X.sum(axis=1))


def test_merge_refuses_loss_and_duplicates(tmp_path, cohort_dir):
    items = _steps.shard_step(cohort_dir, 3, tmp_path / "shards")
    parts = [_score(_steps.shard_path(tmp_path / "shards", it), tmp_path / f"p{it['index']}").parent for it in items]
    with pytest.raises(InputError, match="missing"):
        _steps.merge_step(parts[:2], tmp_path / "shards", tmp_path / "m")
    with pytest.raises(InputError, match="more than once"):
        _steps.merge_step(parts + parts[:1], tmp_path / "shards", tmp_path / "m")
    with pytest.raises(InputError, match="n_shards"):
        _steps.shard_step(cohort_dir, 0, tmp_path / "s0")
    with pytest.raises(InputError, match="not found"):
        _steps.shard_path(tmp_path / "shards", {"name": "shard-99999"})


def test_infer_value_type(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"S{i}" for i in range(6)]
    pd.DataFrame({"sample_id": ids, "label": list("ababab")}).to_csv(tmp_path / "s.csv", index=False)

    def write(X, name):
        df = pd.DataFrame(X, index=pd.Index(ids, name="sample_id"), columns=[f"G{i}" for i in range(X.shape[1])])
        df.reset_index().to_csv(tmp_path / name, index=False)
        return tmp_path / name

    counts = write(rng.poisson(100, (6, 40)).astype(float), "c.csv")
    logx = write(rng.normal(6, 2, (6, 40)), "l.csv")
    tpm_raw = rng.gamma(2, 50, (6, 40))
    tpm = write(tpm_raw / tpm_raw.sum(1, keepdims=True) * 1e6, "t.csv")
    fpkm = write(rng.gamma(2, 50, (6, 40)) + 0.5, "f.csv")
    assert _steps.infer_value_type("auto", counts, tmp_path / "s.csv") == "counts"
    assert _steps.infer_value_type("auto", logx, tmp_path / "s.csv") == "log-expression"
    assert _steps.infer_value_type("auto", tpm, tmp_path / "s.csv") == "tpm"
    assert _steps.infer_value_type("fpkm", counts) == "fpkm"  # explicit wins
    with pytest.raises(InputError, match="--value-type"):
        _steps.infer_value_type("auto", fpkm, tmp_path / "s.csv")


def test_split_evaluation_and_log_metrics():
    class M:
        def __init__(self):
            self.metadata = {}

        def log_metric(self, k, v):
            self.metadata[k] = v

    m = M()
    logged = _steps.log_metrics(m, {"accuracy": 0.9, "n": 3, "ok": True, "nan": float("nan"), "name": "x",
                                    "baseline": {"logreg": {"accuracy": 0.8, "log_loss": 0.4}}})
    assert "nan" not in logged and "name" not in logged and logged["ok"] == 1.0
    model, base = _steps.split_evaluation(m.metadata)
    assert model == {"accuracy": 0.9, "n": 3.0, "ok": 1.0}
    assert base == {"logreg": {"accuracy": 0.8, "log_loss": 0.4}}


def test_record_outcome_without_mlflow(tmp_path):
    rec = _steps.record_outcome("FAILED", "Task train failed.", "job-1", tmp_path / "o.json")
    assert json.loads((tmp_path / "o.json").read_text())["state"] == "FAILED"
    assert rec["mlflow_runs"] == [] and rec["error"] == "Task train failed."


def test_trigger_retrain_component_never_fakes_a_submission(tmp_path):
    """The cluster retrain step (its Python body, as the container runs it) against an endpoint that is
    down: the step fails with a clear error and releases the cooldown it claimed."""
    import socket

    from kfp import dsl

    from genexflow.monitoring.policy import CooldownStore, DriftDecision, Reason
    from genexflow.pipelines.monitoring import trigger_retrain
    from genexflow.pipelines.submit import SubmitError

    evidence = tmp_path / "evidence"
    evidence.mkdir()
    decision = DriftDecision(True, [Reason("gene", "120 of 300 genes drifted", 0.4, 0.05)], {})
    (evidence / "decision.json").write_text(decision.to_json())
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    args = {"expression_uri": "/data/new/expression.parquet", "samples_uri": "/data/new/samples.csv",
            "label_column": "label"}
    cooldown = tmp_path / "cooldown.json"
    with pytest.raises(SubmitError, match="cannot reach Kubeflow Pipelines"):
        trigger_retrain.python_func(evidence=dsl.Artifact(uri=str(evidence)), training_arguments=args,
                                    kfp_host=f"http://127.0.0.1:{port}", model_key="m", cooldown_path=str(cooldown))
    assert CooldownStore(cooldown).last("m") is None
    # a bad parameter is refused before any connection is attempted
    with pytest.raises(InputError, match="unknown pipeline parameter"):
        trigger_retrain.python_func(evidence=dsl.Artifact(uri=str(evidence)),
                                    training_arguments={**args, "epochs": 3}, kfp_host=f"http://127.0.0.1:{port}",
                                    model_key="m", cooldown_path=str(cooldown))
