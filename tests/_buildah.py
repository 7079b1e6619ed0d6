"""Run commands in the images built by ``make images`` (infra/scripts/build_images.py) with buildah.

``buildah run --isolation chroot`` runs a command as the image's ``USER`` in the image's root filesystem
(own mount namespace) but in the host's network and PID namespaces: a server in the container is reached
on 127.0.0.1 from the test, and its processes are visible (and signalled) from here. ``podman run`` does
not work on these machines (the OCI runtime fails on setrlimit), so this is the container runtime here.

:class:`BuildahTaskHandler` is a kfp.local task handler: kfp.local's ``DockerRunner`` with this handler in
place of its Docker one runs each component's executor command inside the component's image, with the
pipeline root mounted at the same path, exactly as its Docker handler does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ISOLATION = ("--isolation", "chroot")


def load_build_script():
    """infra/scripts/build_images.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("build_images", REPO / "infra" / "scripts" / "build_images.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def image_config(tag: str) -> dict:
    """The image's Docker config (User, Env, Entrypoint, Healthcheck, Labels, ...)."""
    out = subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["Docker"]["config"]


def _volumes(volumes: dict[str, str] | None) -> list[str]:
    return [a for host, spec in (volumes or {}).items() for a in ("--volume", f"{host}:{spec}")]


def _env(env: dict[str, str] | None) -> list[str]:
    return [a for k, v in (env or {}).items() for a in ("--env", f"{k}={v}")]


class Container:
    """A working container of ``image`` (``buildah from``), removed on exit."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.name: str | None = None

    def __enter__(self) -> Container:
        self.name = subprocess.run(["buildah", "from", "--pull=never", self.image], capture_output=True,
                                   text=True, check=True).stdout.strip()
        return self

    def __exit__(self, *exc) -> None:
        if self.name:
            subprocess.run(["buildah", "rm", self.name], capture_output=True)

    def argv(self, cmd: list[str], *, volumes: dict[str, str] | None = None, env: dict[str, str] | None = None,
             user: str | None = None) -> list[str]:
        extra = ["--user", user] if user else []
        return ["buildah", "run", *ISOLATION, *extra, *_volumes(volumes), *_env(env), self.name, "--", *cmd]

    def run(self, cmd: list[str], *, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(cmd, **kw), capture_output=True, text=True, timeout=timeout)

    def popen(self, cmd: list[str], log: Path, **kw) -> subprocess.Popen:
        """Start ``cmd`` in the background, in a new session (stop it with :func:`stop`)."""
        with open(log, "wb") as out:
            return subprocess.Popen(self.argv(cmd, **kw), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the whole process group of a :meth:`Container.popen` (buildah does not forward signals to
    every process it started: a server's worker would outlive it), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


class BuildahTaskHandler:
    """kfp.local task handler: the executor command in the component's image (see the module docstring).

    ``ENV`` is added to every task's environment (the test pins thread counts on both sides).
    """

    ENV: dict[str, str] = {}
    LOG: list[str] = []

    def __init__(self, image: str, full_command: list[str], pipeline_root: str, runner, env_vars=None) -> None:
        self.image = image
        self.full_command = list(full_command)
        self.pipeline_root = pipeline_root
        self.env_vars = {**(env_vars or {}), **self.ENV}

    def run(self):
        from kfp.local import status

        with Container(self.image) as ctr:
            proc = ctr.run(self.full_command, volumes={self.pipeline_root: self.pipeline_root},
                           env=self.env_vars, timeout=1200)
        type(self).LOG.append(proc.stdout + proc.stderr)
        print(proc.stdout[-4000:], proc.stderr[-4000:])
        return status.Status.SUCCESS if proc.returncode == 0 else status.Status.FAILURE
