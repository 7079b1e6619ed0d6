"""BH q-values (scipy.stats.false_discovery_control) against the definition and R's p.adjust."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from genexflow.drift_kernels import bh_qvalues


def bh_by_definition(p: np.ndarray) -> np.ndarray:
    """q_i = min over p_j >= p_i of p_j * m / rank_j (O(m^2), NaNs dropped), capped at 1."""
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    pv = p[ok]
    m = len(pv)
    rank = np.array([(pv <= x).sum() for x in pv])  # ties share the highest rank
    for k, i in enumerate(ok):
        ge = pv >= pv[k]
        out[i] = min(1.0, (pv[ge] * m / rank[ge]).min())
    return out


@pytest.mark.parametrize("seed", range(5))
def test_bh_matches_the_definition_with_ties_and_nans(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=300) ** rng.uniform(0.3, 4)
    p[rng.choice(300, 20, replace=False)] = np.nan
    p[:5] = p[5]  # ties
    q = bh_qvalues(p)
    np.testing.assert_array_equal(np.isnan(q), np.isnan(p))
    np.testing.assert_allclose(q, bh_by_definition(p), rtol=1e-12, atol=0)


def test_all_nan_stays_nan():
    assert np.isnan(bh_qvalues(np.full(4, np.nan))).all()


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")
def test_bh_matches_r_p_adjust(tmp_path):
    p = np.random.default_rng(7).uniform(size=200) ** 3
    np.savetxt(tmp_path / "p.txt", p, fmt="%.17g")
    r = subprocess.run(["Rscript", "-e", f"p <- scan('{tmp_path / 'p.txt'}', quiet=TRUE); "
                        "cat(sprintf('%.17g', p.adjust(p, 'BH')), sep='\\n')"],
                       capture_output=True, text=True, timeout=60, check=True)
    np.testing.assert_allclose(bh_qvalues(p), np.array(r.stdout.split(), float), rtol=1e-12)
