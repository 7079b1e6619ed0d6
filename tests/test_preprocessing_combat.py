"""ComBat: parity with sva (golden fixture + a literal R port), frozen transform, and clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from _preprocessing_rport import r_combat
from sklearn.base import clone

from genexflow.errors import InputError, NotFittedError
from genexflow.preprocessing import ComBat


def _sim(n_per=(6, 7, 5), G=60, seed=0):
    rng = np.random.default_rng(seed)
    batch = np.repeat(np.arange(len(n_per)), n_per)
    group = np.array(["A", "B"] * (len(batch) // 2 + 1))[: len(batch)]
    rng.shuffle(group)
    base = rng.normal(8, 2, size=G)
    shift = rng.normal(0, 1, size=(len(n_per), G))
    scale = rng.uniform(0.5, 2.0, size=(len(n_per), G))
    bio = rng.normal(0, 1.5, size=G) * (group == "B")[:, None]
    X = base + bio + shift[batch] + rng.normal(size=(len(batch), G)) * scale[batch]
    cov = pd.DataFrame({"group": group})
    return X, batch, cov


def _mod(cov):
    return np.column_stack([np.ones(len(cov)), (cov["group"] == "B").to_numpy(float)])


# ----------------------------------------------------------------------------- parity
@pytest.mark.shared_data
def test_parametric_matches_sva_reference_on_bladderbatch(shared_data):
    d = shared_data / "bladderbatch"
    X = pd.read_parquet(d / "expression.parquet").set_index("sample_id")
    ref = pd.read_parquet(d / "reference_combat.parquet").set_index("sample_id").loc[X.index, X.columns]
    s = pd.read_csv(d / "samples.csv").set_index("sample_id").loc[X.index]
    out = ComBat().fit_transform(X.to_numpy(np.float64), batch=s["batch"], covariates=s[["cancer"]])
    err = np.abs(out - ref.to_numpy()).max()
    assert err <= 1e-6, err
    # the correction is not a no-op: the reference differs from the input by far more than the tolerance
    assert np.abs(ref.to_numpy() - X.to_numpy(np.float64)).max() > 0.1


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(mean_only=True),
        dict(parametric=False),
        dict(parametric=False, mean_only=True),
        dict(ref_batch=1),
        dict(ref_batch=2, parametric=False),
    ],
)
@pytest.mark.parametrize("with_cov", [False, True])
def test_matches_literal_r_port(kw, with_cov):
    X, batch, cov = _sim()
    est = ComBat(**kw)
    out = est.fit_transform(X, batch=batch, covariates=cov if with_cov else None)
    expected = r_combat(X.T, batch, mod=_mod(cov) if with_cov else None, par_prior=kw.get("parametric", True),
                        mean_only=kw.get("mean_only", False), ref_batch=kw.get("ref_batch")).T
    np.testing.assert_allclose(out, expected, atol=1e-10, rtol=0)
    if "ref_batch" in kw:
        rows = batch == kw["ref_batch"]
        np.testing.assert_array_equal(out[rows], X[rows])


# ----------------------------------------------------------------------------- frozen transform
def test_transform_new_samples_uses_frozen_parameters():
    X, batch, cov = _sim()
    est = ComBat().fit(X, batch=batch, covariates=cov)
    full = est.transform(X, batch=batch, covariates=cov)
    # any subset (one sample at a time) gets the same correction: no refit on test data
    for i in (0, 7, 15):
        one = est.transform(X[[i]], batch=batch[[i]], covariates=cov.iloc[[i]])
        np.testing.assert_allclose(one, full[[i]], atol=1e-12)
    # new data from a seen batch is corrected with the training shift, not re-estimated
    shifted = est.transform(X[batch == 0] + 1.0, batch=batch[batch == 0], covariates=cov[batch == 0])
    assert shifted.mean() - full[batch == 0].mean() > 0.5


def test_unseen_batch_error_and_estimate():
    X, batch, cov = _sim(n_per=(6, 7, 5, 6))
    train = batch < 3
    est = ComBat().fit(X[train], batch=batch[train], covariates=cov[train])
    with pytest.raises(InputError, match="not seen in fit"):
        est.transform(X[~train], batch=batch[~train], covariates=cov[~train])
    est.set_params(unseen_batch="estimate")
    out = est.transform(X[~train], batch=batch[~train], covariates=cov[~train])
    # the unseen batch's own location shift is removed: its standardized mean is pulled towards 0
    s, _ = est.standardize(X[~train], cov[~train])
    s_out, _ = est.standardize(out, cov[~train])
    assert np.abs(s_out.mean(0)).mean() < 0.5 * np.abs(s.mean(0)).mean()
    # seen samples in the same call keep their frozen correction
    mixed = est.transform(X, batch=batch, covariates=cov)
    np.testing.assert_allclose(mixed[train], est.transform(X[train], batch=batch[train], covariates=cov[train]))


# ----------------------------------------------------------------------------- contract
def test_clone_pickle_and_not_fitted():
    X, batch, cov = _sim()
    est = ComBat(parametric=False)
    with pytest.raises(NotFittedError):
        est.transform(X, batch=batch)
    est.fit(X, batch=batch, covariates=cov)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.transform(X, batch=batch, covariates=cov),
                                  est.transform(X, batch=batch, covariates=cov))
    c = clone(est)
    assert c.get_params() == est.get_params() and not hasattr(c, "gamma_star_")


def test_dataframe_input_checks_gene_order():
    X, batch, _ = _sim()
    df = pd.DataFrame(X, columns=[f"g{i}" for i in range(X.shape[1])])
    est = ComBat().fit(df, batch=batch)
    with pytest.raises(InputError, match="gene order differs"):
        est.transform(df[df.columns[::-1]], batch=batch)
    with pytest.raises(InputError, match="fitted on 60 genes"):
        est.transform(X[:, :10], batch=batch)


# ----------------------------------------------------------------------------- errors
def test_clear_errors():
    X, batch, cov = _sim()
    b1 = batch.copy()
    b1[0] = 9  # a batch with one sample
    with pytest.raises(InputError, match="only one sample.*mean_only"):
        ComBat().fit(X, batch=b1)
    ComBat(mean_only=True).fit(X, batch=b1)  # allowed, as in sva
    with pytest.raises(InputError, match="confounded with batch"):
        ComBat().fit(X, batch=batch, covariates=pd.DataFrame({"site": batch.astype(str)}))
    Xn = X.copy()
    Xn[2, 5] = np.inf
    with pytest.raises(InputError, match="infinite"):
        ComBat().fit(Xn, batch=batch)
    Xn[batch == 0, 5] = np.nan  # a gene never observed in a batch (NaN alone is sva's missing-value path)
    Xn[np.flatnonzero(batch == 0)[0], 5] = 1.0
    with pytest.raises(InputError, match="observed value.*batch 0.*mean_only"):
        ComBat().fit(Xn, batch=batch)
    Xc = X.copy()
    Xc[batch == 1, 3] = 4.0
    df = pd.DataFrame(Xc, columns=[f"g{i}" for i in range(X.shape[1])])
    with pytest.raises(InputError, match=r"constant within a batch \(g3\).*passthrough"):
        ComBat().fit(df, batch=batch)
    out = ComBat(constant_genes="passthrough").fit_transform(Xc, batch=batch)
    np.testing.assert_array_equal(out[:, 3], Xc[:, 3])
    expected = r_combat(np.delete(Xc, 3, axis=1).T, batch).T
    np.testing.assert_allclose(np.delete(out, 3, axis=1), expected, atol=1e-10)
    with pytest.raises(InputError, match="not one of the batches"):
        ComBat(ref_batch="zz").fit(X, batch=batch)
    with pytest.raises(InputError, match="labels but the matrix has"):
        ComBat().fit(X, batch=batch[:-1])
    est = ComBat().fit(X, batch=batch, covariates=cov)
    with pytest.raises(InputError, match="levels not seen"):
        est.transform(X[:2], batch=batch[:2], covariates=pd.DataFrame({"group": ["A", "C"]}))
