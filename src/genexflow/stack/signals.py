"""Turn SIGTERM / SIGHUP into an exception, so ``finally`` blocks and context managers that stop the
servers a command started run on a polite kill too (Python's default for SIGTERM is to die on the spot,
leaving every child server orphaned)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM or SIGHUP. A BaseException (like
    KeyboardInterrupt, but not one: the CLI framework turns that into a silent exit 130), so ``except
    Exception`` does not swallow it while ``finally`` and ``except BaseException`` clean-ups run."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _raise(signum: int, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated`; the old handlers come back after.

    A no-op outside the main thread (Python delivers signals to the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def install() -> None:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` for the rest of the process (the CLI entry point)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _raise)
