"""Batch scoring: streamed chunks, parity with a direct run, resume after interruption (in-process stop and
a SIGKILLed CLI run) without lost or duplicated rows, h5ad backed mode, refusal to mix runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genexflow.errors import InputError
from genexflow.export import run_onnx
from genexflow.serving.batch import CohortSource, LocalRunner, score_cohort
from genexflow.serving.inputs import build_inputs
from genexflow.serving.toy import make_toy_artifact, toy_cohort

GENEXFLOW = str(Path(sys.executable).parent / "genexflow")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    art = make_toy_artifact(root / "art", n_genes=60)
    co = toy_cohort(art.info, 3000, seed=4)
    # drop a few model genes and add an unknown one: the scorer must align by ID
    co = co.subset(genes=[g for g in co.genes if g not in art.info.input_genes[:2]])
    co.write(root / "cohort")
    feeds, _ = build_inputs(art.info, co.frame(), co.samples, [i.name for i in art.inputs])
    expected = run_onnx(art.onnx_path, feeds)["probabilities"]
    return root, art, co, expected


def test_scores_match_direct_run_and_keep_order(setup, tmp_path):
    root, art, co, expected = setup
    res = score_cohort(root / "cohort", tmp_path / "p.parquet", LocalRunner(art), chunk_size=256, concurrency=3)
    df = pd.read_parquet(tmp_path / "p.parquet")
    assert res.n_rows == 3000 and res.n_chunks == 12 and res.n_skipped_chunks == 0
    assert df.index.tolist() == co.sample_ids.tolist()
    assert np.abs(df.filter(like="p_").to_numpy() - expected).max() < 1e-6
    assert set(df["model_version"]) == {f"sha256:{art.sha256[:12]}"}
    assert not (tmp_path / "p.parquet.parts").exists()


def test_resume_after_stop_equals_uninterrupted(setup, tmp_path):
    root, art, co, expected = setup
    runner = LocalRunner(art)
    full = tmp_path / "full.parquet"
    score_cohort(root / "cohort", full, runner, chunk_size=200, concurrency=2)
    out = tmp_path / "resumed.parquet"
    first = score_cohort(root / "cohort", out, runner, chunk_size=200, concurrency=2, stop_after_chunks=4)
    assert not out.exists() and first.output.name == "resumed.parquet.parts"
    done = len(list(first.output.glob("part-*.parquet")))
    assert 4 <= done < 15
    (first.output / "part-0000014.tmp").write_bytes(b"half-written")  # a crash mid-write leaves this
    second = score_cohort(root / "cohort", out, runner, chunk_size=200, concurrency=2)
    assert second.n_skipped_chunks == done
    a, b = pd.read_parquet(full), pd.read_parquet(out)
    assert len(b) == 3000 and b.index.is_unique
    pd.testing.assert_frame_equal(a, b)
    # a different chunk size cannot reuse another run's parts
    score_cohort(root / "cohort", tmp_path / "x.parquet", runner, chunk_size=200, stop_after_chunks=1)
    with pytest.raises(InputError, match="different run"):
        score_cohort(root / "cohort", tmp_path / "x.parquet", runner, chunk_size=100)


def test_cli_resume_after_sigkill(setup, tmp_path):
    root, art, co, expected = setup
    out = tmp_path / "kill.parquet"
    parts = tmp_path / "kill.parquet.parts"
    cmd = [GENEXFLOW, "score", str(root / "cohort"), "-o", str(out), "--local", "--artifact", str(art.folder),
           "--chunk-size", "25", "--concurrency", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = False
    t_end = time.monotonic() + 60
    while time.monotonic() < t_end and proc.poll() is None:
        if len(list(parts.glob("part-*.parquet"))) >= 5:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait(30)
    if killed:
        assert not out.exists()
        n_before = len(list(parts.glob("part-*.parquet")))
        assert 5 <= n_before < 120
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    if killed:
        assert "resumed" in r.stderr
    df = pd.read_parquet(out)
    assert df.index.tolist() == co.sample_ids.tolist()
    assert np.abs(df.filter(like="p_").to_numpy() - expected).max() < 1e-6


def test_h5ad_backed_and_parquet_sources_agree(setup, tmp_path):
    root, art, co, expected = setup
    co.write_h5ad(tmp_path / "c.h5ad")
    score_cohort(tmp_path / "c.h5ad", tmp_path / "h.parquet", LocalRunner(art), chunk_size=700)
    df = pd.read_parquet(tmp_path / "h.parquet")
    assert np.abs(df.filter(like="p_").to_numpy() - expected).max() < 1e-6
    assert CohortSource(tmp_path / "c.h5ad").n_rows() == 3000
    with pytest.raises(InputError, match="unsupported"):
        CohortSource(setup[0] / "cohort" / "samples.csv")
