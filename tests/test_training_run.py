"""End to end: one tracked run (MLflow params, per-epoch metrics, dataset lineage, environment, plots,
comparison table, fitted preprocessing, logged model with signature, bundle + drift reference), the
bundle's predict(), and ``genexflow train`` from the command line with MLFLOW_TRACKING_URI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genexflow.simulate import simulate_cohort
from genexflow.training.config import MODEL_PRESETS, TrainConfig


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    torch.set_num_threads(1)
    c, _ = simulate_cohort(n_samples=60, n_genes=200, n_pathways=10, seed=3)
    folder = tmp_path_factory.mktemp("cohort") / "sim"
    c.write(folder)
    return folder


@pytest.fixture(scope="module")
def outcome(cohort_dir, tmp_path_factory):
    from genexflow.cohort import Cohort
    from genexflow.training.run import train_and_track

    tmp = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=16, batch_column="batch", covariates=["age", "sex"],
                      num_threads=1, model=MODEL_PRESETS["tiny"])
    cohort = Cohort.read(cohort_dir)
    out = train_and_track(cohort, cfg, cohort_path=cohort_dir, cv=2, baselines=["hist_gb"],
                          tracking_uri=f"sqlite:///{tmp}/mlflow.db", out=tmp / "bundle", explain_samples=12,
                          explain_methods=("attention", "integrated_gradients"), run_name="e2e")
    return out, cohort, f"sqlite:///{tmp}/mlflow.db"


def _artifacts(client, run_id, path=""):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def test_mlflow_run_has_everything(outcome, cohort_dir):
    import mlflow
    from mlflow.tracking import MlflowClient

    from genexflow.ingest.lineage import dvc_md5

    out, cohort, uri = outcome
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    run = client.get_run(out.run_id)
    p = run.data.params
    assert p["lr"] == "0.001" and p["model.d_model"] == "16" and p["cv.folds"] == "2"
    assert p["covariates"] == "age,sex"
    # per-epoch metrics of the final fit, one point per epoch
    hist = client.get_metric_history(out.run_id, "final/val_loss")
    assert [m.step for m in hist] == list(range(len(out.model.history)))
    assert "cv_pathwaynet_balanced_accuracy_mean" in run.data.metrics
    assert "cv_hist_gb_roc_auc_mean" in run.data.metrics
    # dataset lineage: DVC md5 of the cohort folder and its shape, as a run input
    (ds,) = run.inputs.dataset_inputs
    tags = {t.key: t.value for t in ds.tags}
    assert tags["dvc_md5"] == dvc_md5(cohort_dir) and tags["shape"] == "60x200"
    assert ds.dataset.digest == dvc_md5(cohort_dir)[:36]
    arts = set(_artifacts(client, out.run_id))
    for a in ("plots/learning_curves_cv.png", "plots/roc_oof.png", "plots/confusion_oof.png", "plots/latent_pca.png",
              "plots/top_genes.png", "comparison/baselines.md", "comparison/summary.csv",
              "preprocessing/preprocessing.pkl", "environment/requirements.txt", "environment/environment.json",
              "interpretability/enrichment.csv", "predictions/out_of_fold.csv", "metrics/bootstrap_ci_oof.json",
              "bundle/bundle.json", "bundle/model.pt", "bundle/reference/profile.json"):
        assert a in arts, a
    table = client.download_artifacts(out.run_id, "comparison/baselines.md")
    text = open(table).read()
    assert "pathwaynet" in text and "hist_gb" in text and "±" in text


def test_logged_model_signature_and_predictions(outcome):
    import mlflow

    out, cohort, uri = outcome
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("genexflow")
    (lm,) = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert lm.source_run_id == out.run_id
    pyf = mlflow.pyfunc.load_model(f"models:/{lm.model_id}")
    inp = pyf.metadata.signature.inputs.to_dict()[0]
    n_in = len(out.model.info.extra["model_genes"]) + out.model.info.n_covariates
    assert list(inp["tensor-spec"]["shape"]) == [-1, n_in]
    data = out.model.inputs(cohort.subset(np.arange(6)))
    got = pyf.predict(np.hstack([data.X, data.covariates]).astype(np.float32))
    ref = out.model.predict(cohort.subset(np.arange(6)))[out.model.info.class_names].to_numpy()
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


def test_bundle_round_trip_and_contract(outcome):
    from genexflow.bundle import load_bundle
    from genexflow.training import predict

    out, cohort, _ = outcome
    info, pre, state = load_bundle(out.bundle_dir)
    assert info.task == "classification" and info.label_column == "label"
    assert info.batch_levels == sorted(cohort.samples["batch"].unique())
    assert [c.name for c in info.covariates] == ["age", "sex"]
    assert info.input_genes == list(cohort.genes)
    assert set(info.metrics["baselines"]) == {"hist_gb"} and "balanced_accuracy" in info.metrics
    # the stable estimate for the gate and monitoring: pooled out-of-fold, paired with the best baseline
    oof = info.metrics["oof"]
    assert oof["pathwaynet"]["balanced_accuracy"] == pytest.approx(out.cv.pooled("pathwaynet")["balanced_accuracy"])
    vs = oof["vs_best_baseline"]
    assert vs["baseline"] == "hist_gb" and vs["ci_low"] <= vs["difference"] <= vs["ci_high"]
    assert vs["n"] == cohort.n_samples
    assert info.lineage["mlflow_run_id"] == out.run_id
    # same predictions from the folder, the objects and the in-memory model, on shuffled gene order
    shuffled = cohort.subset(genes=np.random.default_rng(0).permutation(cohort.n_genes))
    a = predict(out.bundle_dir, shuffled)
    b = predict((info, pre, state), cohort)
    c = out.model.predict(cohort)
    np.testing.assert_allclose(a[info.class_names].to_numpy(), c[info.class_names].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(b[info.class_names].to_numpy(), c[info.class_names].to_numpy(), atol=1e-6)
    assert (a.index == cohort.sample_ids).all() and set(a["prediction"]) <= set(info.class_names)


def test_cli_train_uses_mlflow_tracking_uri(cohort_dir, tmp_path, monkeypatch):
    import mlflow

    from genexflow.cli.main import main

    uri = f"sqlite:///{tmp_path}/env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "train.yaml"
    cfg.write_text("num_threads: 1\nbatch_size: 16\nlr: 0.001\n")
    main(["train", str(cohort_dir), "--label", "label", "--batch-column", "batch", "--split", "lobo",
          "--epochs", "2", "--preset", "tiny", "--config", str(cfg), "--baselines", "hist_gb",
          "--explain-samples", "0", "--run-name", "cli-run", "--out", str(tmp_path / "b")])
    info = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert info["extra"]["train_config"]["model"]["d_model"] == MODEL_PRESETS["tiny"]["d_model"]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["genexflow"])
    assert list(runs["tags.mlflow.runName"]) == ["cli-run"]
    assert runs["params.cv.split"].iloc[0] == "lobo"
    assert not (tmp_path / ".genexflow" / "mlflow.db").exists()  # the env URI won, not the default store


def test_cli_errors_are_one_line(tmp_path, capsys):
    from genexflow.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["train", str(tmp_path / "nope"), "--label", "label"])
    assert e.value.code == 2
    assert "no such cohort" in capsys.readouterr().err
