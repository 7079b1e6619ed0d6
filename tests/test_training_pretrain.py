"""Label-free pretraining: the denoising autoencoder learns, saves/loads, initializes PathwayNet's
autoencoder branch by gene name, fine-tunes through cross-validation, and the CLI registers it in MLflow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from genexflow.simulate import simulate_cohort
from genexflow.training.config import MODEL_PRESETS, TrainConfig
from genexflow.training.cv import cross_validate, encode_labels, prepare_fold, train_deep
from genexflow.training.pretrain import PretrainConfig, PretrainedEncoder, init_from_pretrained, pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohorts():
    a, _ = simulate_cohort(n_samples=80, n_genes=150, n_pathways=8, seed=2, value_type="log-expression")
    b, _ = simulate_cohort(n_samples=60, n_genes=150, n_pathways=8, seed=2, value_type="log-expression",
                           name="unlabeled")
    return a, b


def test_pretrain_learns_and_round_trips(cohorts, tmp_path):
    a, b = cohorts
    enc = pretrain([a, b], PretrainConfig(ae_hidden=32, latent_dim=8, epochs=30, batch_size=32))
    assert enc.n_samples == 140 and enc.sources == [a.name, "unlabeled"]
    h = enc.history
    assert h[-1]["train_loss"] < 0.8 * h[0]["train_loss"]  # it learns to reconstruct
    assert min(r["val_loss"] for r in h) < 1.0  # better than predicting the (scaled) mean
    back = PretrainedEncoder.load(enc.save(tmp_path / "enc"))
    assert back.genes == enc.genes and back.config.latent_dim == 8
    x = torch.randn(3, len(enc.genes))
    torch.testing.assert_close(back.module()(x)[1], enc.module()(x)[1])


def test_init_from_matches_genes_by_name_and_fine_tunes(cohorts, tmp_path):
    a, b = cohorts
    enc = pretrain([b], PretrainConfig(ae_hidden=32, latent_dim=8, epochs=5, batch_size=32))
    folder = enc.save(tmp_path / "enc")
    cfg = TrainConfig(epochs=3, lr=1e-3, batch_size=16, num_threads=1, init_from=str(folder),
                      model={**MODEL_PRESETS["tiny"], "ae_hidden": 64, "latent_dim": 4})
    lab = encode_labels(a, cfg)
    fold = prepare_fold(a, None, lab.y, None, cfg)
    from genexflow.training.cv import build_model

    net = build_model(fold.priors, 0, lab.n_classes, cfg)
    assert (net.config.ae_hidden, net.config.latent_dim) == (32, 8)  # the encoder's sizes win
    genes = list(reversed(fold.genes))  # a different gene order: weights must follow the names
    n = init_from_pretrained(net, folder, genes)
    assert n == len(set(genes) & set(enc.genes)) > 0
    j = genes.index(enc.genes[0])
    torch.testing.assert_close(net.encoder_ae[0].weight[:, j], enc.state_dict["encoder_ae.0.weight"][:, 0])
    res = train_deep(fold, cfg, lab.n_classes)
    assert len(res.history) >= 1
    cv = cross_validate(a, cfg, n_splits=2, baselines=[])
    assert np.isfinite(cv.folds["balanced_accuracy"]).all()


def test_cli_pretrain_registers_the_encoder(cohorts, tmp_path):
    import mlflow

    from genexflow.cli.main import app

    a, _ = cohorts
    a.write(tmp_path / "cohort")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = CliRunner().invoke(app, ["pretrain", str(tmp_path / "cohort"), "--out", str(tmp_path / "enc"),
                                 "--ae-hidden", "16", "--latent-dim", "4", "--epochs", "3", "--tracking-uri", uri])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "enc" / "encoder.pt").is_file()
    client = mlflow.MlflowClient(uri)
    versions = client.search_model_versions("name='genexflow-encoder'")
    assert len(versions) == 1
    run = client.get_run(versions[0].run_id)
    assert run.data.params["pretrain.latent_dim"] == "4" and "val_loss" in run.data.metrics
