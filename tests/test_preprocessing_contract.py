"""One contract for every preprocessing estimator: clone, pickle, not-fitted error, fitted state names,
fit on training rows and transform new rows."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from genexflow.errors import NotFittedError
from genexflow.preprocessing import (
    ComBat,
    ComBatSeq,
    CPMNormalizer,
    FilterByExpr,
    Harmony,
    KNNImputer,
    LengthNormalizer,
    Log2p1,
    LowCountFilter,
    VarianceFilter,
)

RNG = np.random.default_rng(0)
N, G = 18, 40
BATCH = np.repeat(["a", "b", "c"], 6)
COUNTS = RNG.negative_binomial(5, 5 / (5 + RNG.gamma(1, 60, G) * RNG.uniform(0.5, 2, (N, 1)))).astype(float)
LOG = np.log2(COUNTS + 1) + RNG.normal(0, 0.3, (N, G))
HOLES = LOG.copy()
HOLES[RNG.random(HOLES.shape) < 0.05] = np.nan
COV = pd.DataFrame({"sex": np.tile(["F", "M"], N // 2)})

CASES = [
    (CPMNormalizer(), COUNTS, {}),
    (CPMNormalizer(tmm=False, log=False), COUNTS, {}),
    (LengthNormalizer(np.linspace(500, 5000, G)), COUNTS, {}),
    (Log2p1(), COUNTS, {}),
    (LowCountFilter(), COUNTS, {}),
    (FilterByExpr(), COUNTS, {}),
    (VarianceFilter(), LOG, {}),
    (KNNImputer(k=5), HOLES, {}),
    (ComBat(), LOG, {"batch": BATCH, "covariates": COV}),
    (ComBat(parametric=False, mean_only=True), LOG, {"batch": BATCH}),
    (ComBatSeq(), COUNTS, {"batch": BATCH}),
    (Harmony(n_components=5), LOG, {"batch": BATCH, "covariates": COV}),
]


@pytest.mark.parametrize("est,X,kw", CASES, ids=[type(c[0]).__name__ + str(i) for i, c in enumerate(CASES)])
def test_estimator_contract(est, X, kw):
    fresh = clone(est)
    assert set(fresh.get_params()) == set(est.get_params())
    for k, v in est.get_params().items():
        np.testing.assert_array_equal(fresh.get_params()[k], v)
    with pytest.raises(NotFittedError):
        fresh.transform(X, **kw) if kw else fresh.transform(X)
    train = np.arange(N) % 3 != 0  # rows 1, 2, 4, 5, ... ; every batch keeps 4 training samples
    kw_train = {k: (v[train] if isinstance(v, np.ndarray) else v[train].reset_index(drop=True)) for k, v in kw.items()}
    kw_new = {k: (v[~train] if isinstance(v, np.ndarray) else v[~train].reset_index(drop=True)) for k, v in kw.items()}
    fitted = clone(est).fit(X[train], **kw_train)
    learned = [a for a in vars(fitted) if a.endswith("_") and not a.startswith("_")]
    assert learned, "fitted state must end in '_'"
    assert all(a in vars(fitted) for a in learned) and not any(a.endswith("_") for a in vars(fresh))
    out = fitted.transform(X[~train], **kw_new)
    assert out.shape[0] == (~train).sum() and np.isfinite(out).all()
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.transform(X[~train], **kw_new), out)
    # new rows are transformed one by one exactly as together (nothing is re-estimated from test data)
    one = fitted.transform(X[~train][:1], **{k: v[:1] for k, v in kw_new.items()})
    np.testing.assert_allclose(one, out[:1], rtol=1e-12, atol=1e-12)
