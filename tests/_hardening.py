"""Helpers for the hardening tests: run the real CLI in-process, small count matrices on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from genexflow.cli.main import main


def cli(args: list[str], capsys) -> tuple[int, str]:
    """``genexflow ARGS`` through the real entry point: (exit code, stdout + stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def counts(n_samples: int = 8, n_genes: int = 30, seed: int = 0) -> pd.DataFrame:
    """Raw counts, samples x genes (``s0``.., ``G0``..), int64."""
    rng = np.random.default_rng(seed)
    X = rng.negative_binomial(5, 0.01, size=(n_samples, n_genes)).astype(np.int64)
    return pd.DataFrame(X, index=pd.Index([f"s{i}" for i in range(n_samples)], name="sample_id"),
                        columns=pd.Index([f"G{j}" for j in range(n_genes)], name="gene_id"))


def sheet(index) -> pd.DataFrame:
    return pd.DataFrame({"batch": ["a", "b"] * (len(index) // 2) + ["a"] * (len(index) % 2),
                         "label": ["x", "x", "y", "y"] * (len(index) // 4) + ["x"] * (len(index) % 4)},
                        index=pd.Index(index, name="sample_id"))


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (to prove inputs were not modified)."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}
