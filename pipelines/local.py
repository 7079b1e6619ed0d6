"""Run a genexflow pipeline on this machine with ``kfp.local`` and report what happened.

The same compiled DAG that runs on a cluster runs here: every lightweight component executes in a
subprocess of the current Python environment (``SubprocessRunner(use_venv=False)``), artifacts land under
``<root>/<pipeline>-<timestamp>/<task>/``. kfp.local prints every executor input and output; we send that
verbose log to a file and turn its task events into concise progress (step name, state, wall time) plus a
:class:`LocalRun` summary that lists every task's parameters and artifact locations.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kfp import local

from genexflow.errors import GenexflowError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXEC = re.compile(r"^Executing task '([^']+)'")
_DONE = re.compile(r"^Task '([^']+)' finished with status (\w+)")
_CACHED = re.compile(r"^Task '?([^' ]+)'? cache hit")
_PIPE_DONE = re.compile(r"^Pipeline '([^']+)' finished with status (\w+)")


class PipelineRunError(GenexflowError):
    """A local pipeline run failed; the message names the failed step and the log file; ``.run`` holds
    the partial :class:`LocalRun`."""

    def __init__(self, message: str, run: LocalRun | None = None):
        super().__init__(message)
        self.run = run


@dataclass
class TaskEvent:
    """One state change of a task, as kfp.local reports it."""

    task: str
    state: str  # RUNNING | SUCCESS | FAILURE | CACHED
    time: float
    seconds: float | None = None


@dataclass
class TaskRecord:
    """What one task produced: output parameters and artifact URIs (local paths)."""

    name: str
    path: Path
    state: str = "SUCCESS"
    seconds: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, list[str]] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    def artifact(self, name: str) -> str | None:
        uris = self.artifacts.get(name) or []
        return uris[0] if uris else None

    @property
    def output(self) -> Any:
        """The single return value of a component (KFP's ``Output`` parameter)."""
        return self.parameters.get("Output")


@dataclass
class LocalRun:
    """Summary of one local pipeline run."""

    pipeline: str
    run_dir: Path
    state: str
    seconds: float
    log_path: Path | None
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    events: list[TaskEvent] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCESS"

    def task(self, name: str) -> TaskRecord:
        """The record of a task by its name in the DAG (``train``, ``for-loop-2-iteration-0/batch-infer``)."""
        if name not in self.tasks:
            raise KeyError(f"no task {name!r} in run {self.run_dir.name} (tasks: {', '.join(sorted(self.tasks))})")
        return self.tasks[name]

    def find(self, prefix: str) -> list[TaskRecord]:
        """Tasks whose DAG name is ``prefix`` or ``prefix-<n>`` (components used more than once), or that
        run ``prefix`` inside a loop iteration."""
        pat = re.compile(rf"(^|/){re.escape(prefix)}(-\d+)?$")
        return [t for n, t in sorted(self.tasks.items()) if pat.search(n)]

    def ran(self, prefix: str) -> bool:
        return bool(self.find(prefix))

    @classmethod
    def load(cls, run_dir: str | Path) -> LocalRun:
        """Read a finished local run back from its folder (state from the exit handler's outcome when the
        pipeline has one; per-task wall times are not kept on disk)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise GenexflowError(f"{run_dir}: no such pipeline run folder")
        tasks = collect_tasks(run_dir)
        state = "UNKNOWN"
        for t in tasks.values():
            if t.name.split("/")[-1].startswith("record-outcome") and t.output:
                state = "SUCCESS" if t.output == "SUCCEEDED" else "FAILURE"
        name = re.sub(r"-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d+$", "", run_dir.name)
        log = run_dir / "kfp.log"
        return cls(name, run_dir, state, 0.0, log if log.exists() else None, tasks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline, "run_dir": str(self.run_dir), "state": self.state,
            "seconds": round(self.seconds, 2), "log": str(self.log_path) if self.log_path else None,
            "tasks": {n: {"state": t.state, "seconds": t.seconds, "parameters": t.parameters,
                          "artifacts": t.artifacts, "metadata": t.metadata} for n, t in sorted(self.tasks.items())},
        }


class _EventTap(logging.Filter):
    """Observe kfp.local's task log records (a filter on the root logger survives kfp swapping the root
    handlers for its own); never suppresses a record."""

    def __init__(self, on_event: Callable[[TaskEvent], None] | None):
        super().__init__()
        self.events: list[TaskEvent] = []
        self._started: dict[str, list[float]] = {}
        self._on_event = on_event
        self.pipeline_state: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = _ANSI.sub("", record.getMessage()).strip()
        except Exception:  # a foreign record with bad args: not ours to judge
            return True
        now = record.created
        ev = None
        if m := _EXEC.match(msg):
            self._started.setdefault(m[1], []).append(now)
            ev = TaskEvent(m[1], "RUNNING", now)
        elif m := _DONE.match(msg):
            starts = self._started.get(m[1]) or []
            t0 = starts.pop(0) if starts else None  # loop iterations share a name: first in, first out
            ev = TaskEvent(m[1], m[2], now, None if t0 is None else now - t0)
        elif m := _CACHED.match(msg):
            ev = TaskEvent(m[1], "CACHED", now, 0.0)
        elif m := _PIPE_DONE.match(msg):
            self.pipeline_state = m[2]
        if ev is not None:
            self.events.append(ev)
            if self._on_event is not None:
                self._on_event(ev)
        return True


def collect_tasks(run_dir: Path) -> dict[str, TaskRecord]:
    """Read every ``executor_output.json`` under a kfp.local run folder."""
    tasks: dict[str, TaskRecord] = {}
    for out in sorted(run_dir.rglob("executor_output.json")):
        name = out.parent.relative_to(run_dir).as_posix()
        try:
            data = json.loads(out.read_text() or "{}")
        except json.JSONDecodeError:
            data = {}
        raw = data.get("artifacts") or {}
        arts = {k: [a.get("uri", "") for a in v.get("artifacts", [])] for k, v in raw.items()}
        meta = {k: dict((v.get("artifacts") or [{}])[0].get("metadata") or {}) for k, v in raw.items()}
        tasks[name] = TaskRecord(name, out.parent, parameters=data.get("parameterValues") or {}, artifacts=arts,
                                 metadata=meta)
    return tasks


def _attach_events(tasks: dict[str, TaskRecord], events: list[TaskEvent]) -> None:
    """Give each task record its state and wall time. Loop iterations share a task name in the log, so an
    event goes to the iteration whose output file was written closest to the event's time."""
    taken: set[str] = set()
    for ev in events:
        if ev.state == "RUNNING":
            continue
        cands = [r for n, r in tasks.items() if (n == ev.task or n.endswith("/" + ev.task)) and n not in taken]
        if not cands:
            continue

        def gap(r: TaskRecord, t: float = ev.time) -> float:
            f = r.path / "executor_output.json"
            return abs(f.stat().st_mtime - t) if f.exists() else float("inf")

        rec = min(cands, key=gap)
        taken.add(rec.name)
        rec.state, rec.seconds = ev.state, ev.seconds


def init_local(root: str | Path, *, enable_caching: bool = True) -> Path:
    """Initialise kfp.local for the current Python environment; returns the pipeline root."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    # Steps run as `python -m ...` subprocesses, which put the current folder first on sys.path: a folder
    # there named like an installed package (e.g. triton/, which torch probes for) would shadow it. Safe
    # path mode (Python 3.11+) leaves the current folder off sys.path in every step.
    os.environ["PYTHONSAFEPATH"] = "1"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True, enable_caching=enable_caching, cache_root=str(root / ".kfp_cache"))
    return root


def run_local(
    pipeline: Any,
    arguments: dict[str, Any],
    *,
    root: str | Path,
    enable_caching: bool = True,
    log_path: str | Path | None = None,
    on_event: Callable[[TaskEvent], None] | None = None,
    echo: bool = False,
) -> LocalRun:
    """Run a pipeline (a ``@dsl.pipeline`` function) locally and summarise the run.

    Parameters
    ----------
    pipeline : kfp GraphComponent
        E.g. ``genexflow.pipelines.training.training_pipeline``.
    arguments : dict
        Pipeline parameters.
    root : path
        The kfp.local pipeline root; the run writes ``<root>/<pipeline-name>-<timestamp>/``.
    enable_caching : bool
        Reuse outputs of cached (deterministic) steps run before with the same inputs.
    log_path : path, optional
        Where kfp's verbose log goes (default ``<run_dir>/kfp.log``; set ``echo=True`` to also print it).
    on_event : callable, optional
        Called with each :class:`TaskEvent` as it happens (progress display).

    Raises
    ------
    PipelineRunError
        A task failed; the message names it and where the full log is.
    """
    root = init_local(root, enable_caching=enable_caching)
    name = pipeline.component_spec.name if hasattr(pipeline, "component_spec") else pipeline.name
    before = {p.name for p in root.iterdir()} if root.exists() else set()
    tap = _EventTap(on_event)
    rootlog = logging.getLogger()
    rootlog.addFilter(tap)
    # kfp.local swaps builtins.print per task to indent logs; parallel loop iterations race on it and can
    # leave it swapped, so restore it ourselves
    original_print = builtins.print
    buf = io.StringIO()
    t0 = time.perf_counter()
    error: BaseException | None = None
    target = _Tee(buf, sys.stdout) if echo else buf
    try:
        with warnings.catch_warnings():
            # one project image for all steps; kfp warns when its name lacks "python"
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            # display names and platform settings are for the cluster UI; kfp.local says so per task
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            with contextlib.redirect_stdout(target):
                pipeline(**arguments)
    except BaseException as exc:  # kfp raises RuntimeError on a failed task; we re-raise below
        error = exc
    finally:
        rootlog.removeFilter(tap)
        builtins.print = original_print
    seconds = time.perf_counter() - t0
    new = sorted((p for p in root.iterdir() if p.is_dir() and p.name not in before
                  and p.name.startswith(_kfp_run_prefix(name))), key=lambda p: p.stat().st_mtime)
    run_dir = new[-1] if new else root
    log = Path(log_path) if log_path else (run_dir / "kfp.log" if new else root / f"{name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(_ANSI.sub("", buf.getvalue()))
    tasks = collect_tasks(run_dir) if new else {}
    _attach_events(tasks, tap.events)
    state = "FAILURE" if error is not None else (tap.pipeline_state or "SUCCESS")
    run = LocalRun(name, run_dir, state, seconds, log, tasks, tap.events)
    if error is not None:
        if isinstance(error, KeyboardInterrupt):
            raise error
        failed = [e.task for e in tap.events if e.state == "FAILURE"]
        where = f"step {failed[0]!r}" if failed else "the pipeline"
        raise PipelineRunError(
            f"{name}: {where} failed ({_last_error(buf.getvalue())}); full log: {log}", run
        ) from error
    return run


def _kfp_run_prefix(pipeline_name: str) -> str:
    # kfp.local names the run folder after the pipeline name, lower-cased with dashes
    return re.sub(r"[^a-z0-9-]+", "-", pipeline_name.lower()).strip("-")


def _last_error(log: str) -> str:
    """The most telling line of a failed task's log: the last exception line."""
    lines = [ln.strip() for ln in _ANSI.sub("", log).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception)\b.*:", ln) or ln.startswith("genexflow.errors"):
            return ln[:400]
    return lines[-1][:400] if lines else "no log output"


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self._streams = streams

    def write(self, s: str) -> int:
        for st in self._streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self._streams:
            st.flush()
