"""The training loop on small synthetic problems: learning, early stopping, seeding, schedule, augmentation,
class weights, regression target scaling, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genexflow.training.config import TrainConfig
from genexflow.training.trainer import (
    TensorData,
    Trainer,
    global_batches,
    module_loss,
    predict_module,
    seed_everything,
    warmup_cosine,
)


class MLP(torch.nn.Module):
    def __init__(self, g=10, k=2, c=0):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(g + c, 16), torch.nn.ReLU(), torch.nn.Linear(16, k))

    def forward(self, x, cov):
        return self.net(torch.cat([x, cov], 1))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _xor(n=240, g=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, g)).astype(np.float32)
    y = ((X[:, 0] * X[:, 1]) > 0).astype(np.int64)
    return TensorData(X, np.zeros((n, 0)), y)


def _cfg(**kw):
    base = dict(epochs=40, lr=1e-2, batch_size=32, patience=40, num_threads=1)
    return TrainConfig(**{**base, **kw})


def test_learns_a_nonlinear_problem():
    d = _xor()
    seed_everything(0)
    res = Trainer(_cfg()).fit(MLP(), d.take(np.arange(200)), d.take(np.arange(200, 240)))
    acc = (predict_module(res.module, d.take(np.arange(200, 240)), "classification")["proba"].argmax(1)
           == d.y[200:]).mean()
    assert acc >= 0.8
    assert res.history[-1]["train_prediction_loss"] < 0.6 * res.history[0]["train_prediction_loss"]


def test_early_stopping_restores_best_weights():
    d = _xor(n=80)
    seed_everything(1)
    # Heavily overfitting setup: validation loss rises after a few epochs.
    cfg = _cfg(epochs=200, lr=3e-2, patience=5)
    res = Trainer(cfg).fit(MLP(g=10), d.take(np.arange(40)), d.take(np.arange(40, 80)))
    assert res.stopped_epoch < 199 and res.stopped_epoch == res.best_epoch + cfg.patience
    val = d.take(np.arange(40, 80))
    with torch.no_grad():
        out = res.module(torch.as_tensor(val.X), torch.as_tensor(val.covariates))
        loss = torch.nn.functional.cross_entropy(out, torch.as_tensor(val.y)).item()
    assert loss == pytest.approx(res.best_val_loss, rel=1e-5)
    assert res.history[-1]["val_loss"] > res.best_val_loss


def test_same_seed_same_history_different_seed_differs():
    d = _xor(n=120)

    def run(seed):
        seed_everything(seed)
        m = MLP()
        return Trainer(_cfg(epochs=5, seed=seed, noise_std=0.1, gene_dropout=0.1)).fit(
            m, d.take(np.arange(100)), d.take(np.arange(100, 120))).history

    a, b, c = run(3), run(3), run(4)
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in b]
    assert [h["train_loss"] for h in a] != [h["train_loss"] for h in c]


def test_warmup_cosine_schedule():
    f = warmup_cosine(100, 0.05)
    assert [round(f(s), 3) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert f(5) == pytest.approx(1.0)
    assert f(52) == pytest.approx(0.5, abs=0.02)
    assert f(99) < 0.01
    batches = global_batches(50, 16, seed=0, epoch=0)
    assert [len(b) for b in batches] == [13, 13, 12, 12]
    assert sorted(np.concatenate(batches)) == list(range(50))
    assert not np.array_equal(batches[0], global_batches(50, 16, seed=0, epoch=1)[0])


def test_lr_follows_schedule_in_history():
    d = _xor(n=64)
    res = Trainer(_cfg(epochs=10, lr=1e-3, warmup_fraction=0.2)).fit(MLP(), d, None)
    lrs = [h["lr"] for h in res.history]
    assert lrs[0] < lrs[2]  # warming up
    assert lrs[-1] < lrs[3]  # decaying


def test_class_weights_raise_minority_recall():
    rng = np.random.default_rng(0)
    n = 300
    X = rng.normal(size=(n, 5)).astype(np.float32)
    y = (X[:, 0] + 0.8 * rng.normal(size=n) > 1.3).astype(np.int64)  # ~12% positives, noisy
    d = TensorData(X, None, y)
    rec = {}
    for w in (False, True):
        seed_everything(0)
        res = Trainer(_cfg(epochs=30, lr=1e-2, class_weighted=w)).fit(MLP(g=5), d, None)
        pred = predict_module(res.module, d, "classification")["proba"].argmax(1)
        rec[w] = (pred[y == 1] == 1).mean()
    assert rec[True] > rec[False] + 0.1


def test_module_loss_uses_module_loss_method():
    class WithLoss(MLP):
        def loss(self, out, x, y, class_weight=None):
            from dataclasses import dataclass

            @dataclass
            class L:
                total: torch.Tensor
                prediction: torch.Tensor
                metrics: dict

            p = torch.nn.functional.cross_entropy(out, y)
            return L(p * 2, p, {"custom": 1.0})

    m = WithLoss()
    x, y = torch.randn(4, 10), torch.tensor([0, 1, 0, 1])
    out = m(x, torch.zeros(4, 0))
    loss = module_loss(m, out, x, y, "classification", 0.1)
    assert loss.metrics["custom"] == 1.0
    assert float(loss.total.detach()) == pytest.approx(2 * float(loss.prediction.detach()))


def test_regression_targets_are_standardized_and_restored():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (1000 + 50 * X[:, 0]).astype(np.float32)  # far from unit scale
    d = TensorData(X, None, y)
    seed_everything(0)
    res = Trainer(_cfg(task="regression", epochs=60, lr=1e-2)).fit(MLP(g=4, k=1), d, None)
    assert res.target_mean == pytest.approx(y.mean(), rel=1e-4)
    pred = predict_module(res.module, d, "regression", res.target_mean, res.target_std)["prediction"]
    assert np.corrcoef(pred, y)[0, 1] > 0.95 and abs(pred.mean() - 1000) < 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    d = _xor(n=96)
    outs = {}
    for dev in ("cpu", "cuda"):
        seed_everything(0)
        res = Trainer(_cfg(epochs=3, device=dev)).fit(MLP(), d, None)
        outs[dev] = predict_module(res.module, d, "classification")["proba"]
    np.testing.assert_allclose(outs["cpu"], outs["cuda"], atol=1e-4)
