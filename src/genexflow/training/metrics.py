"""Moved to :mod:`genexflow.metrics` (one metrics module for training, the gate and monitoring); this name
stays importable for existing code."""

from genexflow.metrics import *  # noqa: F403
from genexflow.metrics import __all__  # noqa: F401
