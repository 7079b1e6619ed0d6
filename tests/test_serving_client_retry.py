"""TritonClient's retry (tenacity): transport errors are retried with exponential backoff, then one clear error."""

from __future__ import annotations

import time

import numpy as np
import pytest

from genexflow.serving.client import ServerUnavailable, TritonClient
from genexflow.stack._process import free_port


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_dead_server_is_retried_with_backoff_then_named(protocol):
    url = f"{'grpc://' if protocol == 'grpc' else 'http://'}127.0.0.1:{free_port()}"
    client = TritonClient(url, "m", retries=3, backoff_s=0.05, timeout_s=2)
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"failed after 4 attempts") as err:
        client.infer({"expression": np.zeros((1, 2), np.float32)})
    elapsed = time.monotonic() - t0
    assert "is the server running" in str(err.value)
    # waits 0.05 + 0.1 + 0.2 s between the four attempts
    assert elapsed >= 0.35, elapsed
