"""Run real R/Bioconductor from the tests: exact float64 in, exact float64 out, one ``Rscript`` per batch.

Matrices travel as raw little-endian float64 (``NaN`` for missing, which R's ``is.na`` sees), so R reads
exactly the bits Python holds; labels travel as text lines. ``r_session`` skips the calling test with a
message when ``Rscript`` or a package is missing (``make sysdeps`` installs the Debian ones).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pytest

# R side of the protocol: rd()/rd_chr() read what Python wrote, wr() writes a numeric result back.
_PRELUDE = r"""
options(warn = 1)
.dir <- commandArgs(trailingOnly = TRUE)[1]
rd <- function(name) {
  d <- scan(file.path(.dir, paste0(name, ".dim")), quiet = TRUE)
  x <- readBin(file.path(.dir, paste0(name, ".f64")), "double", n = prod(d), endian = "little")
  if (length(d) == 2) matrix(x, nrow = d[1], ncol = d[2]) else x
}
rd_chr <- function(name) readLines(file.path(.dir, paste0(name, ".txt")))
wr <- function(name, x) {
  x <- as.matrix(x); storage.mode(x) <- "double"
  writeLines(as.character(dim(x)), file.path(.dir, paste0("out_", name, ".dim")))
  writeBin(as.vector(x), file.path(.dir, paste0("out_", name, ".f64")), endian = "little")
}
quiet <- function(expr) { invisible(capture.output(r <- suppressMessages(expr))); r }
"""


@cache
def _has_package(pkg: str) -> bool:
    if pkg == "base":
        return True
    r = subprocess.run(["Rscript", "-e", f"quit(status = !requireNamespace('{pkg}', quietly = TRUE))"],
                       capture_output=True, timeout=120)
    return r.returncode == 0


def require_r(*packages: str) -> None:
    """Skip the calling test (with the fix) unless ``Rscript`` and every package are installed."""
    if shutil.which("Rscript") is None:
        pytest.skip("Rscript not found: install r-base-core and the r-bioc-* packages (make sysdeps)")
    missing = [p for p in packages if not _has_package(p)]
    if missing:
        pytest.skip(f"R package(s) {', '.join(missing)} not installed (make sysdeps installs the Debian "
                    "r-bioc-* packages)")


def run_r(script: str, inputs: dict, workdir: Path, *, packages: tuple[str, ...] = (),
          timeout: int = 300) -> dict[str, np.ndarray]:
    """Run ``script`` in ``Rscript`` with ``inputs`` and return every ``wr(name, x)`` as an ndarray.

    Parameters
    ----------
    script : str
        R code; ``rd("x")`` returns input ``x`` (numeric vector or matrix), ``rd_chr("x")`` a character
        vector, ``wr("y", value)`` sends ``value`` back as ``out["y"]`` (a 2-D float64 array).
    inputs : dict
        name -> numeric ndarray (1-D or 2-D, NaN = NA) or list of str.
    workdir : Path
        An empty scratch folder (``tmp_path``).
    packages : tuple of str
        Loaded with ``library`` before the script (the test is skipped if one is missing).
    """
    require_r(*packages)
    workdir.mkdir(parents=True, exist_ok=True)
    for name, val in inputs.items():
        if isinstance(val, (list, tuple)) or (isinstance(val, np.ndarray) and val.dtype.kind in "OUS"):
            (workdir / f"{name}.txt").write_text("".join(f"{v}\n" for v in val))
            continue
        a = np.asarray(val, dtype="<f8")
        (workdir / f"{name}.dim").write_text("\n".join(map(str, a.shape)) + "\n")
        (a.T if a.ndim == 2 else a).tofile(workdir / f"{name}.f64")  # tofile writes C order: R's column-major
    libs = "".join(f"suppressPackageStartupMessages(library({p}))\n" for p in packages)
    (workdir / "script.R").write_text(_PRELUDE + libs + script)
    res = subprocess.run(["Rscript", str(workdir / "script.R"), str(workdir)], capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"Rscript failed ({res.returncode}):\n{res.stderr[-3000:]}")
    out = {}
    for dim in workdir.glob("out_*.dim"):
        name = dim.stem[4:]
        shape = tuple(int(v) for v in dim.read_text().split())
        flat = np.fromfile(workdir / f"out_{name}.f64", dtype="<f8")
        out[name] = flat.reshape(shape[::-1]).T  # column-major back to (rows, cols)
    return out


def fresh_seed() -> int:
    """A new seed each run (``GENEXFLOW_TEST_SEED`` replays one); put it in assertion messages."""
    env = os.environ.get("GENEXFLOW_TEST_SEED")
    return int(env) if env else int(np.random.SeedSequence().entropy % 2**31)
