"""Error types. Every user-facing failure is a :class:`GenexflowError` with a one-line message that
names the problem and, where possible, how to fix it; the CLI prints it without a traceback."""

from __future__ import annotations


class GenexflowError(Exception):
    """Base class for errors that the CLI reports as one clear line (exit code 2)."""

    exit_code = 2


class InputError(GenexflowError, ValueError):
    """Bad user input: unreadable, malformed or inconsistent files and values."""


class ValidationError(InputError):
    """Critical data-validation failure (a failed expectation); carries the failing details."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


class NotFittedError(GenexflowError, AttributeError):
    """An estimator was used before ``fit``."""
