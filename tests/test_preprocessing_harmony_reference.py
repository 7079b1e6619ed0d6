"""genexflow's Harmony against the reference, harmonypy 2.x (the R harmony2 algorithm in C++), on the
same embedding and seed.

The random parts differ (harmonypy draws from ``mt19937``, genexflow from numpy), so the agreement is
stated statistically, with tolerances: correlation of the corrected embeddings >= 0.995, batch and label
silhouettes within 0.02 and mean LISI (harmonypy's own ``compute_lisi``) within 0.05 of harmonypy's.
Measured at the time of writing: correlation 0.9998, silhouette and LISI differences <= 0.004.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import silhouette_score

from genexflow.preprocessing.harmony import run_harmony

harmonypy = pytest.importorskip("harmonypy", reason="harmonypy (the reference) is not installed; "
                                "pip install -c constraints.txt -e '.[dev]'")


def embedding(seed: int, n=1500, d=20, n_batch=3, n_type=4, batch_sd=2.0):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, n_type, n)
    b = rng.integers(0, n_batch, n)
    Z = rng.normal(0, 3, (n_type, d))[t] + rng.normal(0, batch_sd, (n_batch, d))[b] + rng.normal(0, 1, (n, d))
    return Z, b, t


@pytest.mark.parametrize("seed,covariate", [(0, False), (1, False), (2, True)])
def test_agrees_with_harmonypy(seed, covariate):
    Z, b, t = embedding(seed)
    rng = np.random.default_rng(100 + seed)
    meta = pd.DataFrame({"batch": b.astype(str), "type": t.astype(str), "site": rng.integers(0, 2, len(b)).astype(str)})
    vars_use = ["batch", "site"] if covariate else ["batch"]
    ref = np.asarray(harmonypy.run_harmony(Z, meta, vars_use, verbose=False, random_state=0).Z_corr)
    codes = np.stack([np.unique(meta[v], return_inverse=True)[1] for v in vars_use], axis=1)
    ours = run_harmony(Z, codes, [meta[v].nunique() for v in vars_use], random_state=0).Z_corr
    assert ours.shape == ref.shape
    # nothing to agree on unless Harmony changed the embedding
    assert silhouette_score(Z, b) - silhouette_score(ref, b) > 0.1
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] >= 0.995
    for labels in (b, t):
        assert abs(silhouette_score(ours, labels) - silhouette_score(ref, labels)) <= 0.02
    lisi_ours = harmonypy.compute_lisi(ours, meta, ["batch", "type"]).mean(axis=0)
    lisi_ref = harmonypy.compute_lisi(ref, meta, ["batch", "type"]).mean(axis=0)
    np.testing.assert_allclose(lisi_ours, lisi_ref, atol=0.05)
