"""The model pieces end to end through one tracked run and the ONNX export: a batch-size sweep with a
scaled learning rate (recorded in MLflow), pathway-specific heads (their modular reading logged) and a
pretrained encoder as the starting point; the bundle exports to ONNX and matches the Python pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from genexflow.simulate import simulate_cohort
from genexflow.training.config import MODEL_PRESETS, TrainConfig
from genexflow.training.hpo import scaled_lr

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scaled_lr_rules():
    assert scaled_lr(1e-3, 64, 16, "linear") == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 64, 16, "sqrt") == pytest.approx(2e-3)
    with pytest.raises(Exception, match="scaling rule"):
        scaled_lr(1e-3, 64, 16, "cube")


def test_sweep_picks_a_batch_size_and_run_records_it(tmp_path):
    import mlflow

    from genexflow.export import export_bundle, run_onnx
    from genexflow.serving.inputs import build_inputs
    from genexflow.training.model import predict
    from genexflow.training.pretrain import PretrainConfig, pretrain
    from genexflow.training.run import train_and_track

    c, _ = simulate_cohort(n_samples=48, n_genes=100, n_pathways=6, seed=4, value_type="log-expression")
    base = TrainConfig(epochs=2, lr=1e-3, batch_size=16, num_threads=1, model=MODEL_PRESETS["tiny"])
    enc = pretrain(c, PretrainConfig(ae_hidden=32, latent_dim=8, epochs=3))
    folder = enc.save(tmp_path / "enc")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = base.with_(batch_sizes=[8, 32], init_from=str(folder), model={"pathway_heads": 4})
    out = train_and_track(c, cfg, cv=2, baselines=[], tracking_uri=uri, out=tmp_path / "bundle",
                          explain_samples=0, reference_profile=False)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(out.run_id)
    chosen = int(run.data.params["batch_sweep.chosen"])
    assert chosen in (8, 32)
    assert float(run.data.params["batch_sweep.lr"]) == pytest.approx(scaled_lr(1e-3, chosen, 16, "sqrt"))
    assert out.config.batch_size == chosen
    # the reported CV is nested: each outer fold swept on its own training rows
    outer = [int(b) for b in run.data.params["batch_sweep.outer_choices"].split(",")]
    assert len(outer) == 2 and set(outer) <= {8, 32}
    children = mlflow.search_runs(experiment_names=["genexflow"], filter_string=f"tags.mlflow.parentRunId = '{out.run_id}'")
    assert sorted(children["params.batch_size"].astype(int)) == [8, 32]
    arts = [a.path for a in client.list_artifacts(out.run_id, "modular")]
    assert any(a.endswith("pathway_heads.csv") for a in arts)
    assert out.model.module.config.latent_dim == 8 and out.model.module.config.pathway_heads == 4

    art = export_bundle(out.bundle_dir, tmp_path / "onnx")
    assert [o.name for o in art.outputs] == ["probabilities"]
    feeds, _ = build_inputs(art.info, c.frame(), c.samples, [i.name for i in art.inputs])
    got = run_onnx(art.onnx_path, feeds)["probabilities"]
    ref = predict(out.bundle_dir, c)[art.info.class_names].to_numpy()
    assert np.abs(got - ref).max() <= 1e-4
