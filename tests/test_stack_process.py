"""ProcessRecord (psutil): the same process is alive; a recycled pid, an exited process or a zombie is not."""

from __future__ import annotations

import subprocess
import sys
import time

from genexflow.stack._process import ProcessRecord


def test_record_of_a_running_process_is_alive_and_survives_a_round_trip(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        rec = ProcessRecord.of(proc.pid)
        assert rec.start_time is not None and rec.alive()
        rec.write(tmp_path / "p.json")
        assert ProcessRecord.read(tmp_path / "p.json") == rec
        # same pid, another start time: a recycled pid is never taken for our process
        assert not ProcessRecord(proc.pid, rec.start_time - 10.0).alive()
    finally:
        proc.kill()
        proc.wait()
    assert not rec.alive()


def test_a_zombie_child_is_not_alive_and_stop_reaps_it():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    rec = ProcessRecord.of(proc.pid)
    deadline = time.monotonic() + 20
    while rec.alive() and time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        time.sleep(0.05)
    assert not rec.alive()
    assert rec.stop(timeout=1) is False
    proc.wait()
