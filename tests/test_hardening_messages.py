"""Hardening: messages that name the problem and the fix instead of "unexpected ..." or a wrong word:
a huge finite value in `predict`, a truncated Parquet in `score`, Ctrl-C in `score` (how to resume)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _hardening import cli, digest

from genexflow.serving.toy import make_toy_artifact, toy_cohort

GENEXFLOW = str(Path(sys.executable).with_name("genexflow"))


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return make_toy_artifact(tmp_path_factory.mktemp("art") / "a", n_genes=20)


def test_predict_names_a_huge_finite_value_instead_of_calling_it_infinite(art, tmp_path, capsys):
    """Before: 1e308 overflowed to float32 inf and `predict` called the finite value "infinite"."""
    from _serving_servers import triton_server

    from genexflow.serving.repository import deploy

    server, repo = triton_server()
    deploy(art, repo, "hardening_predict", server.url)
    co = toy_cohort(art.info, 4)
    frame = co.frame().astype(np.float64)
    frame.iloc[2, 5] = 1e308
    frame.to_csv(tmp_path / "x.csv")
    co.samples.to_csv(tmp_path / "s.csv")
    code, out = cli(["predict", tmp_path / "x.csv", "--samples", tmp_path / "s.csv", "--url", server.url,
                     "--model-name", "hardening_predict"], capsys)
    flat = " ".join(out.split())
    assert code == 2 and f"{frame.index[2]}/{frame.columns[5]}=1e+308" in flat, out
    assert "infinite values" not in flat and "1e+10" in flat, out


def test_score_on_a_truncated_parquet_says_so(art, tmp_path, capsys):
    co = toy_cohort(art.info, 50)
    co.write(tmp_path / "cohort")
    expr = tmp_path / "cohort" / "expression.parquet"
    expr.write_bytes(expr.read_bytes()[: expr.stat().st_size // 2])
    code, out = cli(["score", tmp_path / "cohort", "--local", "--artifact", art.folder, "-o", tmp_path / "p.parquet"],
                    capsys)
    flat = " ".join(out.split())
    assert code == 2 and "not a readable Parquet file, truncated or corrupt" in flat and "re-export" in flat, out
    assert "unexpected" not in flat


def test_ctrl_c_in_score_says_how_to_resume(art, tmp_path):
    n = 2000
    co = toy_cohort(art.info, n)
    co.write(tmp_path / "cohort")
    before = digest(tmp_path / "cohort" / "expression.parquet")
    out = tmp_path / "pred.parquet"
    args = [GENEXFLOW, "score", str(tmp_path / "cohort"), "--local", "--artifact", str(art.folder), "-o", str(out),
            "--chunk-size", "20", "--concurrency", "1"]
    # SIGINT at its default in the child: if the test process ignores SIGINT (a shell's background job without
    # job control, or an earlier test), the child inherits that, Python installs no KeyboardInterrupt handler
    # and the run just finishes (seen in full-suite runs: returncode 0 after all rows were scored)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
    parts = tmp_path / "pred.parquet.parts"
    deadline = time.monotonic() + 180
    while not (parts.is_dir() and list(parts.glob("part-*.parquet"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    flat = " ".join(err.split())
    assert proc.returncode == 130, err
    assert "interrupted:" in flat and "rerun the same command" in flat and str(parts) in flat, err
    assert not out.exists()
    # and the rerun does resume: it finishes with every sample once
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "resumed from an earlier run" in " ".join(res.stderr.split()), res.stderr
    assert pq.read_metadata(out).num_rows == n
    assert digest(tmp_path / "cohort" / "expression.parquet") == before
