"""The three pipelines end to end with kfp.local on small simulated cohorts, against the real parts: MLflow
(sqlite), the registry, ONNX export, a real local Triton, the drift detectors.

One workspace for the module, in order: a first training run registers and promotes; a second, worse run is
gated out (the champion stays); batch inference through Triton scores every sample exactly once, equal to
the model's own predictions; monitoring retrains (nested) on a drifted cohort and does not on an
undrifted one.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genexflow.simulate import simulate_cohort

pytestmark = pytest.mark.slow

SMALL_MODEL = {"readout_dims": [32], "ae_hidden": 32, "latent_dim": 8, "d_model": 16, "n_heads": 2, "ff_dim": 32,
               "transformer_layers": 1, "head_hidden": 16, "gcn_dim": 4}
GOOD = {"epochs": 10, "patience": 4, "batch_size": 16, "lr": 5e-3, "model": SMALL_MODEL}
# the same network barely moved from its initialisation (and no GLM start for its wide path): worse than the
# champion on the same held-out rows
WORSE = {"epochs": 1, "patience": 1, "batch_size": 16, "lr": 1e-9, "wide_init": "none", "model": SMALL_MODEL}
# The first run also exercises the blueprint's model pieces through `genexflow run`: a batch-size sweep with a
# scaled learning rate, pathway-specific heads, and fine-tuning from the encoder registered in MLflow by
# pretraining (resolved by the train step from its registry URI).
ENCODER = {"ae_hidden": 32, "latent_dim": 8}
FIRST = {**GOOD, "batch_sizes": [8, 16], "init_from": "models:/genexflow-encoder/1",
         "model": {**SMALL_MODEL, "pathway_heads": 4}}
FAST = dict(cv_folds=0, explain_samples=0, baselines=["logreg_l2"], ingest_config={"data_docs": False},
            # the registry's baseline comparison is tested with the registry; here: champion vs challenger
            baseline_margin=-1.0)


def _planted(seed: int, **kw):
    """A simulated cohort with a strong planted label signal (30 genes x6 in one class), so a small network
    learns it in seconds and a barely trained one is clearly worse."""
    from genexflow.cohort import Cohort

    c, _ = simulate_cohort(n_samples=48, n_genes=300, n_pathways=12, n_informative=3, n_classes=2, n_batches=2,
                           signal=1.0, seed=seed, **kw)
    X = c.X.astype(np.float32)
    X[np.ix_((c.samples["label"] == "subtype_A").to_numpy(), np.arange(0, 300, 10))] *= 6
    return Cohort(X, c.genes, c.samples, c.value_type, c.name)


def _drifted(cohort):
    """New samples of the same genes from two unseen sites: per-gene shifts (log-normal, SD 1) and a
    quarter of the library size."""
    from genexflow.cohort import Cohort

    rng = np.random.default_rng(5)
    X = cohort.X.astype(np.float32) * np.exp(rng.normal(0, 1.0, cohort.n_genes)).astype(np.float32) / 4
    samples = cohort.samples.copy()
    samples.index = pd.Index([f"NEW{i:04d}" for i in range(len(samples))], name="sample_id")
    samples["batch"] = np.where(samples["batch"] == samples["batch"].iloc[0], "site_x", "site_y")
    return Cohort(np.round(X), cohort.genes, samples, cohort.value_type, "new_cohort")


def _write(cohort, folder):
    folder.mkdir(parents=True, exist_ok=True)
    cohort.frame().rename_axis("sample_id").reset_index().to_parquet(folder / "expression.parquet", index=False)
    cohort.samples.to_csv(folder / "samples.csv")
    return folder / "expression.parquet", folder / "samples.csv"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from genexflow.pipelines.workspace import Workspace
    from genexflow.training.pretrain import PretrainConfig, pretrain, register_encoder

    root = tmp_path_factory.mktemp("e2e")
    cohort = _planted(0, name="train_cohort")
    drifted = _drifted(cohort)
    ws = Workspace(root / "ws")
    # label-free pretraining on the training cohort plus the (unlabeled) new cohort, registered as version 1
    enc = pretrain([cohort, drifted], PretrainConfig(**ENCODER, epochs=3))
    reg = register_encoder(enc, enc.save(root / "encoder"), ws.tracking_uri)
    assert reg["version"] == 1
    return {"ws": ws, "cohort": cohort, "train": _write(cohort, root / "cohort"),
            "drifted": _write(drifted, root / "drifted")}


@pytest.fixture(scope="module")
def first(env, tmp_path_factory):
    """The first run goes through the CLI (``genexflow run ... --json``), as a user would start it."""
    import yaml
    from typer.testing import CliRunner

    from genexflow.cli.main import app
    from genexflow.pipelines.local import LocalRun
    from genexflow.pipelines.workspace import read_training_result

    expr, sheet = env["train"]
    cfg = tmp_path_factory.mktemp("cfg") / "train.yaml"
    cfg.write_text(yaml.safe_dump({**FIRST, "ingest": FAST["ingest_config"]}))
    res = CliRunner().invoke(app, [
        "run", "--expression", str(expr), "--samples", str(sheet), "--label", "label", "--batch-column", "batch",
        "--config", str(cfg), "--cv-folds", "2", "--explain-samples", "0", "--baselines", "logreg_l2",
        "--baseline-margin", "-1", "--workspace", str(env["ws"].root), "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    summary = json.loads(res.stdout)
    assert summary["state"] == "SUCCESS" and summary["tracking_uri"] == env["ws"].tracking_uri
    assert "<html" in open(summary["run_report"]).read(300).lower()  # --json names the run report too
    out = read_training_result(LocalRun.load(summary["pipeline_run"]), env["ws"], summary["model_name"])
    assert out.registered_version == summary["registered_version"]
    return out


@pytest.fixture(scope="module")
def second(env, first):
    from genexflow.pipelines.workspace import run_training, training_arguments

    expr, sheet = env["train"]
    args = training_arguments(expr, sheet, "label", env["ws"], batch_column="batch", train_config=WORSE, **FAST)
    return run_training(args, env["ws"])


def _registry(env):
    from genexflow.serving.registry import Registry

    return Registry(env["ws"].tracking_uri)


def test_first_run_registers_promotes_and_deploys(env, first):
    run = first.run
    assert run.succeeded and run.pipeline == "genexflow-training"
    order = ["ingest-validate", "preprocess-fit", "train", "evaluate", "export-onnx", "register", "gate",
             "infra-validate", "promote", "deploy", "record-outcome"]
    assert all(run.ran(t) for t in order), sorted(run.tasks)
    assert first.registered_version == "1" and first.gate_passed and first.promoted
    reg = _registry(env)
    champ = reg.get("genexflow-classifier", "champion")
    assert champ.version == 1
    assert champ.tags["gate.decision"] == "pass" and champ.tags["infra.decision"] == "pass"
    # deployed bytes are the registered bytes
    from genexflow.export import sha256_file

    deployed = env["ws"].triton_repository / "genexflow_classifier" / str(first.triton_version) / "model.onnx"
    assert deployed.is_file() and sha256_file(deployed) == champ.sha256
    # typed evaluation: model and baseline metrics on the held-out split, an HTML report
    assert 0.0 <= first.metrics["balanced_accuracy"] <= 1.0
    assert "baseline.logreg_l2.balanced_accuracy" in first.metrics
    assert "<table" in open(first.reports["evaluation report"]).read()
    # the exit handler recorded the outcome, also on the training's MLflow run
    assert first.outcome["state"] == "SUCCEEDED" and first.mlflow_run_id in first.outcome["mlflow_runs"]
    mlrun = reg.client.get_run(first.mlflow_run_id)
    assert mlrun.data.tags["genexflow.pipeline_outcome"] == "SUCCEEDED"
    assert "heldout_balanced_accuracy" in mlrun.data.metrics


def test_model_pieces_through_genexflow_run(env, first):
    """`genexflow run` with a batch-size sweep, pathway heads and a registered pretrained encoder: the sweep's
    choice and scaled learning rate, the encoder version and the heads' modular reading are recorded on the
    training run, and the served model (exported, infra-validated, deployed) is the fine-tuned network."""
    from pathlib import Path

    from genexflow.bundle import load_bundle, module_from_state
    from genexflow.training.hpo import scaled_lr

    reg = _registry(env)
    mlrun = reg.client.get_run(first.mlflow_run_id)
    chosen = int(mlrun.data.params["batch_sweep.chosen"])
    assert chosen in FIRST["batch_sizes"]
    assert float(mlrun.data.params["batch_sweep.lr"]) == pytest.approx(scaled_lr(GOOD["lr"], chosen, 16, "sqrt"))
    assert mlrun.data.tags["genexflow.init_from"] == FIRST["init_from"]
    assert mlrun.data.tags["genexflow.init_from.version"] == "genexflow-encoder/1"
    enc_run = reg.client.get_model_version("genexflow-encoder", "1").run_id
    assert mlrun.data.tags["genexflow.init_from.run_id"] == enc_run
    assert any(a.path.endswith("pathway_heads.csv") for a in reg.client.list_artifacts(first.mlflow_run_id, "modular"))
    module = module_from_state(load_bundle(Path(first.run.task("train").artifact("bundle")))[2])
    assert module.config.pathway_heads == 4 and module.config.latent_dim == ENCODER["latent_dim"]
    assert first.promoted and first.triton_version is not None


def test_run_report_model_card_is_completed_by_the_last_step(env, first, tmp_path):
    """The exit step re-renders the training run's report with registry, gate and infra-validation facts,
    and the registered version points at it (genexflow.report, issue 20)."""
    from genexflow.report import fetch_run_report, read_page_data

    reg = _registry(env)
    page = fetch_run_report(first.mlflow_run_id, tmp_path / "report.html", env["ws"].tracking_uri)
    card = read_page_data(page)["card"]
    assert card["registry"]["version"] == 1 and "champion" in card["registry"]["aliases"]
    assert card["gate"]["decision"] == "pass" and card["infra"]["decision"] == "pass"
    assert card["outcome"]["state"] == "SUCCEEDED" and card["data"]["ingested_md5"].endswith(".dir")
    v = reg.get("genexflow-classifier", "1")
    assert v.tags["genexflow.report"] == card["mlflow"]["report_uri"]


def test_one_preprocessor_from_fit_to_serving(env, first, tmp_path):
    """The pipeline fitted at preprocess-fit, by its sha256: the same bytes in the bundle that train wrote
    (and that evaluate checked), the registered version's tag and bundle, the ONNX sidecar and the sidecar
    of the artifact Triton serves. Training refits nothing."""
    from pathlib import Path

    from genexflow.bundle import PickledPreprocessing, load_bundle

    run = first.run
    fit = run.task("preprocess-fit")
    sha = fit.parameters["sha256"]
    assert len(sha) == 64
    assert PickledPreprocessing.read(fit.artifact("preprocessor")).sha256 == sha
    # the bundle train wrote holds those bytes, unchanged, and records their hash
    bundle = Path(run.task("train").artifact("bundle"))
    assert PickledPreprocessing.read(bundle / "preprocessing.pkl").sha256 == sha
    info, pre, _ = load_bundle(bundle)
    assert info.preprocessing_sha256 == sha and pre.genes_out_.tolist()
    # the registered version: tag, and the bundle logged with it
    reg = _registry(env)
    v = reg.get("genexflow-classifier", first.registered_version)
    assert v.tags["preprocessing_sha256"] == sha
    local = Path(reg.client.download_artifacts(v.run_id, "bundle", str(tmp_path)))
    assert PickledPreprocessing.read(local / "preprocessing.pkl").sha256 == sha
    assert reg.client.get_run(v.run_id).data.tags["genexflow.preprocessing_sha256"] == sha
    # the exported graph's sidecar and the one next to the served bytes in the Triton repository
    onnx_dir = Path(run.task("export-onnx").artifact("onnx"))
    served = env["ws"].triton_repository / "genexflow_classifier" / str(first.triton_version) / "model.json"
    for sidecar in (onnx_dir / "model.json", served):
        doc = json.loads(sidecar.read_text())
        assert doc["preprocessing"]["sha256"] == sha and doc["bundle"]["preprocessing_sha256"] == sha, sidecar


def test_worse_run_is_gated_out(env, first, second):
    run = second.run
    assert run.succeeded  # gated out is a decision, not a failure
    assert second.registered_version == "2" and second.gate_passed is False
    assert "champion v1" in second.gate_reason
    for step in ("infra-validate", "promote", "deploy"):
        assert not run.ran(step), step
    reg = _registry(env)
    assert reg.get("genexflow-classifier", "champion").version == 1
    assert reg.get("genexflow-classifier", "2").tags["gate.decision"] == "fail"
    assert second.outcome["state"] == "SUCCEEDED"


def test_batch_inference_through_triton(env, first):
    from genexflow.pipelines.workspace import run_batch_inference
    from genexflow.serving.triton_server import TritonServer
    from genexflow.training.model import predict

    expr, sheet = env["train"]
    with TritonServer(env["ws"].triton_repository) as server:
        run, path = run_batch_inference(expr, sheet, server.url, env["ws"], n_shards=5, parallelism=2,
                                        ingest_config={"data_docs": False})
    assert run.succeeded and len(run.find("batch-infer")) == 5
    pred = pd.read_parquet(path).set_index("sample_id")
    ingested = run.task("ingest-validate").parameters["n_samples"]
    assert len(pred) == ingested == env["cohort"].n_samples
    assert pred.index.is_unique and list(pred.index) == list(env["cohort"].sample_ids)
    # Triton answers what the trained model (bundle, in process) answers
    bundle = first.run.task("train").artifact("bundle")
    from genexflow.cohort import Cohort

    ref = predict(bundle, Cohort.read(first.run.task("ingest-validate").artifact("cohort")))
    classes = [c for c in ref.columns if c not in ("prediction", "batch_correction")]
    got = pred[[c for c in pred.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(got, ref.loc[pred.index, classes].to_numpy(), atol=1e-4)
    assert (pred["prediction"] == ref.loc[pred.index, "prediction"]).all()


def test_monitoring_without_drift_does_not_retrain(env, second):
    from genexflow.pipelines.workspace import monitoring_arguments, run_monitoring

    expr, sheet = env["train"]
    versions = len(_registry(env).versions("genexflow-classifier"))
    args = monitoring_arguments(expr, sheet, "label", env["ws"], batch_column="batch", train_config=GOOD, **FAST)
    res = run_monitoring(args, env["ws"])
    assert res.run.succeeded and not res.drift, res.reason
    assert res.retraining is None and not res.run.ran("train")
    assert len(_registry(env).versions("genexflow-classifier")) == versions


def test_monitoring_drift_triggers_retraining(env, second):
    from genexflow.pipelines.workspace import monitoring_arguments, run_monitoring

    expr, sheet = env["drifted"]
    # a short retraining: this test is about the trigger, the first two about training and gating
    args = monitoring_arguments(expr, sheet, "label", env["ws"], batch_column="batch",
                                train_config={**GOOD, "epochs": 2}, **FAST)
    res = run_monitoring(args, env["ws"])
    assert res.run.succeeded and res.drift, res.reason
    assert res.retraining is not None and res.retraining.registered_version == "3"
    decision = json.loads((res.run.task("drift-check").path / "evidence" / "decision.json").read_text())
    assert decision["drift"] is True and decision["reasons"]
    # the retraining used the new cohort
    ingests = res.run.find("ingest-validate")
    assert len(ingests) == 2


def test_failed_run_is_recorded_by_the_exit_handler(env):
    from genexflow.pipelines.local import PipelineRunError
    from genexflow.pipelines.workspace import run_training, training_arguments

    expr, sheet = env["train"]
    args = training_arguments(expr, sheet, "no_such_column", env["ws"], train_config=GOOD, **FAST)
    with pytest.raises(PipelineRunError, match="step 'ingest-validate' failed.*no_such_column") as err:
        run_training(args, env["ws"])
    run = err.value.run
    assert run is not None and not run.succeeded and not run.ran("train")
    outcome = json.loads(open(run.task("record-outcome").artifact("outcome")).read())
    assert outcome["state"] == "FAILED" and outcome["error"]
