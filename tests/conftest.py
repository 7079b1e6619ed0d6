"""Shared fixtures. Tests that need ``../shared/data`` use the ``shared_data`` fixture, which skips with a
message when the folder is absent; everything else runs on data shipped in the package or generated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GENEXFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared reference data not found at {SHARED_DATA} (set GENEXFLOW_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # Tests run on 2-core machines; keep BLAS and torch from oversubscribing.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))


@pytest.fixture
def one_torch_thread():
    """Small models on a shared 2-core box: one intra-op thread is several times faster than two fighting
    for the cores. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
