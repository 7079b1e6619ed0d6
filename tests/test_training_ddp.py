"""DDP: ``torchrun --nproc_per_node 2`` on gloo gives the same training as one process for the same
global batch and seed.

Stated tolerance: with model dropout off (the only per-rank random draw), per-epoch losses agree to
1e-5 relative and evaluation probabilities to 1e-5 absolute (float32 gradient all-reduce changes the
summation order only). With dropout on, the runs are statistically equivalent but not identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genexflow.simulate import simulate_cohort

MODEL = ('model={"gcn_dim":4,"gcn_layers":1,"readout_dims":[32,16],"d_model":16,"n_heads":2,"transformer_layers":1,'
         '"ff_dim":32,"ae_hidden":32,"latent_dim":8,"head_hidden":32,"gcn_dropout":0.0,"attn_dropout":0.0,'
         '"head_dropout":0.0}')


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _args(train: Path, ev: Path, out: Path) -> list[str]:
    return ["-m", "genexflow.training", str(train), "--label", "label", "--batch-column", "batch",
            "--covariates", "age,sex", "--epochs", "5", "--lr", "0.002", "--batch-size", "16", "--set", MODEL,
            "--set", "num_threads=1", "--set", "noise_std=0.05", "--eval", str(ev), "--out", str(out),
            "--no-reference"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    train, _ = simulate_cohort(n_samples=70, n_genes=150, n_pathways=8, seed=4)
    ev, _ = simulate_cohort(n_samples=30, n_genes=150, n_pathways=8, seed=4, batch_labels=["batch1", "batch2", "x"])
    train.write(tmp_path / "train")
    ev.write(tmp_path / "eval")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/unused.db"}
    one = subprocess.run([sys.executable, *_args(tmp_path / "train", tmp_path / "eval", tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([*_torchrun(), "--standalone", "--nproc_per_node", "2",
                          *_args(tmp_path / "train", tmp_path / "eval", tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert len(a["history"]) == len(b["history"]) == 5
    for ha, hb in zip(a["history"], b["history"], strict=True):
        for key in ("train_loss", "train_prediction_loss", "val_loss"):
            assert hb[key] == pytest.approx(ha[key], rel=1e-5), key
    np.testing.assert_allclose(np.array(b["eval_output"]), np.array(a["eval_output"]), atol=1e-5)
    assert b["eval"]["accuracy"] == pytest.approx(a["eval"]["accuracy"])
    # the training actually moved (not a trivially equal no-op)
    assert a["history"][-1]["train_loss"] < a["history"][0]["train_loss"]
