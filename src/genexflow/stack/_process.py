"""Process plumbing shared by the local services (MLflow, PostgreSQL, Triton).

Every service is started in its own session (``start_new_session=True``), so its process-group id
equals its pid: stopping signals that one group only, never processes found by name. A pid file
stores ``pid`` and the kernel start time, so a later ``stop`` never signals a recycled pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from genexflow.errors import GenexflowError
from genexflow.paths import workspace_dir

LOCALHOST = "127.0.0.1"


class StackError(GenexflowError, RuntimeError):
    """A local service failed to start, answer its health check or stop."""


def genexflow_home() -> Path:
    """The workspace (:func:`genexflow.paths.workspace_dir`: ``$GENEXFLOW_WORKSPACE``, ``$GENEXFLOW_HOME`` or
    ``./.genexflow``)."""
    return workspace_dir()


def free_port(host: str = LOCALHOST, exclude: set[int] | None = None) -> int:
    """An unused TCP port on ``host`` (the kernel's choice; another process may still race for it)."""
    exclude = exclude or set()
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port
    raise StackError("could not find a free TCP port on 127.0.0.1")


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET ``url`` answers HTTP 200 (only http:// URLs are allowed)."""
    if not url.startswith("http://"):
        raise ValueError(f"only http:// URLs are probed, got {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # nosec B310 - scheme checked above
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_until(check: Callable[[], bool], timeout: float, *, alive: Callable[[], bool] | None = None,
               what: str = "service", log: Path | None = None, interval: float = 0.2) -> None:
    """Poll ``check`` until it is true; fail early when ``alive`` says the process died.

    Raises
    ------
    StackError
        On timeout or early exit, with the last lines of ``log`` in the message.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise StackError(f"{what} exited during start-up{_tail(log)}")
        time.sleep(interval)
    raise StackError(f"{what} was not healthy after {timeout:.0f} s{_tail(log)}")


def _tail(log: Path | None, n: int = 15) -> str:
    if log is None or not Path(log).exists():
        return ""
    lines = Path(log).read_text(errors="replace").splitlines()[-n:]
    return f"; last log lines ({log}):\n" + "\n".join(lines)


def _start_time(pid: int) -> float | None:
    """Start time of ``pid`` (seconds since the epoch, as psutil reports it), or None when it does not exist."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


@dataclass(frozen=True)
class ProcessRecord:
    """A started service process: its pid and start time (to detect pid reuse)."""

    pid: int
    start_time: float | None

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        return cls(pid, _start_time(pid))

    def alive(self) -> bool:
        """True while the same process (not a recycled pid) is running and not a zombie."""
        try:
            proc = psutil.Process(self.pid)
            if self.start_time is not None and proc.create_time() != self.start_time:
                return False
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": self.pid, "start_time": self.start_time}))

    @classmethod
    def read(cls, path: Path) -> ProcessRecord | None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        return cls(int(data["pid"]), data.get("start_time"))

    def stop(self, timeout: float = 30.0, *, group: bool = True) -> bool:
        """SIGTERM the process (its whole session group when ``group``), SIGKILL after ``timeout``.

        Returns True when it had to be killed.
        """
        if not self.alive():
            return False
        self._signal(signal.SIGTERM, group)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self._reap()
                return False
            time.sleep(0.1)
        self._signal(signal.SIGKILL, group)
        for _ in range(50):
            if not self.alive():
                break
            time.sleep(0.1)
        self._reap()
        return True

    def _signal(self, sig: int, group: bool) -> None:
        try:
            if group and os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        # Collect the exit status when the process is our child (no zombie left behind).
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def stop_pid_file(pid_file: str | Path, timeout: float = 30.0) -> bool:
    """Stop the process group recorded in ``pid_file`` and remove the file.

    Returns True when the recorded process was still running.
    """
    record = ProcessRecord.read(Path(pid_file))
    running = record is not None and record.alive()
    if running:
        record.stop(timeout=timeout)
    Path(pid_file).unlink(missing_ok=True)
    return running
