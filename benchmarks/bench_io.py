"""Peak memory and time of reading a 5,000 x 20,000 float32 Parquet matrix.

genexflow.io.read_matrix (column-chunked reads into one preallocated matrix) vs the peer
``pandas.read_parquet(...).set_index("sample_id").to_numpy()``; each in a fresh process, peak RSS above
the interpreter baseline, as a multiple of the matrix size. Target: genexflow < 3x the matrix.

    .venv/bin/python benchmarks/bench_io.py [--samples 5000 --genes 20000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import sys, time
import numpy as np, pandas as pd, pyarrow  # baseline includes the libraries
from genexflow.io import read_matrix
def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
with open("/proc/self/clear_refs", "w") as fh:  # reset the high-water mark (VmHWM) after the imports
    fh.write("5")
base = status_kib("VmRSS")
t0 = time.perf_counter()
if sys.argv[2] == "genexflow":
    X = read_matrix(sys.argv[1], orientation="samples").to_numpy()
else:
    X = pd.read_parquet(sys.argv[1]).set_index("sample_id").to_numpy()
dt = time.perf_counter() - t0
peak = status_kib("VmHWM")
print((peak - base) * 1024, dt, X.nbytes)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--genes", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    import pandas as pd

    from genexflow.io import write_matrix

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.parquet"
        rng = np.random.default_rng(0)
        df = pd.DataFrame(rng.gamma(2, 2, size=(a.samples, a.genes)).astype(np.float32),
                          index=pd.Index([f"S{i}" for i in range(a.samples)], name="sample_id"),
                          columns=[f"G{j}" for j in range(a.genes)])
        write_matrix(df, path)
        del df
        rows = {}
        for who in ("genexflow", "pandas"):
            runs = []
            for _ in range(a.repeats):
                out = subprocess.run([sys.executable, "-c", CHILD, str(path), who], capture_output=True,
                                     text=True, check=True)
                runs.append([float(x) for x in out.stdout.split()])
            rows[who] = (min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2])
    nbytes = rows["genexflow"][2]
    print(f"read {a.samples} x {a.genes} float32 Parquet ({nbytes / 2**20:.0f} MiB matrix)")
    print(f"{'reader':<12}{'peak RSS MiB':>14}{'x matrix':>10}{'time s':>9}")
    for who, (peak, dt, _) in rows.items():
        print(f"{who:<12}{peak / 2**20:>14.0f}{peak / nbytes:>10.2f}{dt:>9.2f}")
    g, p = rows["genexflow"], rows["pandas"]
    print(f"ratio genexflow/pandas: memory {g[0] / p[0]:.2f}x, time {g[1] / p[1]:.2f}x")


if __name__ == "__main__":
    time.sleep(0)
    main()
