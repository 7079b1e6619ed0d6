"""Where genexflow keeps its state: one workspace per project, one cache per user.

* The **workspace** (``$GENEXFLOW_WORKSPACE``; ``$GENEXFLOW_HOME`` is its older name; default
  ``./.genexflow``) holds what belongs to a project: the MLflow store (``mlflow.db`` + ``mlartifacts/``),
  pipeline runs, the quarantine, bundles, the Triton model repository and the local stack's state. Every
  command that has a default for one of these takes it from here, so one variable moves them all.
* The **cache** (``$GENEXFLOW_CACHE_DIR``, default the per-user cache folder, e.g.
  ``~/.cache/genexflow``) holds what is the same for every project: the 450 MB Triton server
  environment is built there once, not under the current folder of whatever command first needed it.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DEFAULT_WORKSPACE = ".genexflow"


def workspace_dir() -> Path:
    """``$GENEXFLOW_WORKSPACE``, else ``$GENEXFLOW_HOME``, else ``./.genexflow`` (absolute, not created)."""
    root = os.environ.get("GENEXFLOW_WORKSPACE") or os.environ.get("GENEXFLOW_HOME") or DEFAULT_WORKSPACE
    return Path(root).expanduser().absolute()


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the workspace's embedded store ``sqlite:///<workspace>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    ws = workspace_dir()
    ws.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{ws / 'mlflow.db'}"


def cache_dir() -> Path:
    """``$GENEXFLOW_CACHE_DIR``, else the per-user cache folder (``$XDG_CACHE_HOME/genexflow`` on Linux)."""
    env = os.environ.get("GENEXFLOW_CACHE_DIR")
    return Path(env).expanduser().absolute() if env else Path(platformdirs.user_cache_dir("genexflow"))
