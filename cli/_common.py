"""Helpers shared by the CLI command modules: progress bars and console output."""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

console = Console(stderr=True)


def progress() -> Progress:
    """A rich progress bar on stderr (stdout stays clean for piping)."""
    return Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=False,
    )


@contextmanager
def step(description: str):
    """Show a spinner while a step runs and its wall time when it ends."""
    t0 = time.perf_counter()
    with console.status(f"[bold]{description}…"):
        yield
    console.print(f"[green]✓[/] {description} ({time.perf_counter() - t0:.1f} s)")
