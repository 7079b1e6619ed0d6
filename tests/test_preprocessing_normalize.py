"""CPM / log-CPM / TMM / TPM / FPKM and the gene filters against edgeR semantics.

Expected values come from (a) hand computation on a tiny matrix, derived from edgeR's R/C source
(see the module docstring of ``genexflow.preprocessing.normalize``) and (b) a literal loop port of
that source in ``_preprocessing_rport.py``.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from _preprocessing_rport import r_calc_factor_tmm, r_calc_norm_factors, r_cpm, r_filter_by_expr

from genexflow.errors import InputError
from genexflow.preprocessing.filtering import FilterByExpr, LowCountFilter, VarianceFilter
from genexflow.preprocessing.normalize import (
    CPMNormalizer,
    LengthNormalizer,
    Log2p1,
    calc_norm_factors,
    cpm,
    read_gene_lengths,
    tmm_reference_column,
)

# samples as rows; library sizes 60, 125, 36
TINY = np.array([[10, 20, 30, 0], [20, 40, 60, 5], [5, 10, 20, 1]], dtype=float)


def _counts(n=8, G=400, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.gamma(0.5, 60, size=G)
    depth = rng.uniform(0.3, 3, size=(n, 1))
    comp = np.ones((n, G))
    comp[: n // 2, :20] = 8.0  # a few genes strongly up in half the libraries: TMM must trim them
    return rng.negative_binomial(4, 4 / (4 + mu * depth * comp)).astype(float)


# ----------------------------------------------------------------------------- TMM
def test_tmm_tiny_by_hand():
    # upper quartiles (R type 7): 22.5/60 = .375, 45/125 = .36, 12.5/36 = .3472 -> mean .3607 -> ref = sample 2
    assert tmm_reference_column(TINY, TINY.sum(1)) == 1
    # sample 1 vs ref: all shared genes have ratio (x/60)/(r/125) = 125/120, so its raw factor is 125/120.
    # sample 3: log-ratios of genes 1..4 are log2(.868), log2(.868), log2(1.157), log2(.694); n = 4 keeps
    # ranks 2..3 (floor(4 * .3) + 1 = 2), i.e. the two tied genes at average rank 2.5 -> raw 625/720.
    raw = np.array([125 / 120, 1.0, 625 / 720])
    expected = raw / np.exp(np.log(raw).mean())
    np.testing.assert_allclose(calc_norm_factors(TINY), expected, rtol=1e-12)


def test_tmm_ties_use_average_ranks():
    # 10 genes with log-ratios whose ranks 3 and 4 are tied: loL = floor(10 * .3) + 1 = 4, so R's average
    # rank 3.5 drops both tied genes, where ordinal ranks would keep one of them.
    ref = np.full(10, 100.0)
    ratios = np.array([0.5, 0.6, 0.8, 0.8, 1.0, 1.05, 1.1, 1.2, 1.5, 2.0])
    obs = ref * ratios
    lib = np.array([obs.sum(), ref.sum()])
    f_r = r_calc_factor_tmm(obs, ref, lib[0], lib[1], sum_trim=0.0)
    from genexflow.preprocessing.normalize import tmm_factors_vs_reference

    f = tmm_factors_vs_reference(obs[None], lib[:1], ref, lib[1], sum_trim=0.0)[0]
    assert f == pytest.approx(f_r, rel=1e-12)
    # ranks: 0.5->1, 0.6->2, 0.8,0.8->3.5, 1.0->5, 1.05->6, 1.1->7, ...; hiL = 10 + 1 - 4 = 7, so the kept
    # genes are ratios 1.0, 1.05, 1.1 (the tied 0.8s at 3.5 < 4 are out): check by hand (weights 1/v)
    o, r = obs[4:7], ref[4:7]
    logR = np.log2((o / lib[0]) / (r / lib[1]))
    v = (lib[0] - o) / lib[0] / o + (lib[1] - r) / lib[1] / r
    assert f == pytest.approx(2 ** ((logR / v).sum() / (1 / v).sum()), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_tmm_matches_literal_port(seed):
    X = _counts(seed=seed)
    np.testing.assert_allclose(calc_norm_factors(X), r_calc_norm_factors(X.T), rtol=1e-12)
    np.testing.assert_allclose(calc_norm_factors(X, do_weighting=False),
                               r_calc_norm_factors(X.T, do_weighting=False), rtol=1e-12)
    # the composition-biased libraries get factors clearly different from 1
    assert np.ptp(calc_norm_factors(X)) > 0.1


def test_tmm_degenerate_cases():
    assert calc_norm_factors(TINY[:1]).tolist() == [1.0]
    same = np.vstack([TINY[0], TINY[0] * 2])
    np.testing.assert_allclose(calc_norm_factors(same), [1.0, 1.0])
    with pytest.raises(InputError, match="negative"):
        calc_norm_factors(-TINY)


# ----------------------------------------------------------------------------- CPM
def test_cpm_and_logcpm_by_hand():
    raw = cpm(TINY)
    assert raw[0, 0] == pytest.approx(10 / 60 * 1e6)
    lc = cpm(TINY, log=True, prior_count=2)
    # prior scaled by library size: p = 2 * 60 / mean(60, 125, 36) = 2 * 60 / 73.667
    p = 2 * 60 / (221 / 3)
    assert lc[0, 3] == pytest.approx(np.log2(p / (60 + 2 * p) * 1e6), rel=1e-13)
    assert lc[0, 0] == pytest.approx(np.log2((10 + p) / (60 + 2 * p) * 1e6), rel=1e-13)
    np.testing.assert_allclose(lc, r_cpm(TINY.T, log=True).T, rtol=1e-13)


@pytest.mark.parametrize("tmm", [True, False])
def test_cpm_normalizer_matches_edger_on_training_and_freezes(tmm):
    X = _counts()
    est = CPMNormalizer(tmm=tmm).fit(X)
    nf = r_calc_norm_factors(X.T) if tmm else np.ones(len(X))
    expected = r_cpm(X.T, lib_size=X.sum(1) * nf, log=True, prior_count=2).T
    np.testing.assert_allclose(est.transform(X), expected, rtol=1e-12)
    # a new sample alone gets the same values as within the training batch (frozen reference & scale)
    np.testing.assert_allclose(est.transform(X[[3]]), expected[[3]], rtol=1e-12)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.transform(X[:2]), est.transform(X[:2]))


def test_length_normalizers_and_log2p1():
    lengths = np.array([1000.0, 2000.0, 500.0, 4000.0])
    tpm = LengthNormalizer(lengths, "tpm").fit_transform(TINY)
    rate = TINY[0] / lengths
    np.testing.assert_allclose(tpm[0], rate / rate.sum() * 1e6)
    np.testing.assert_allclose(tpm.sum(1), 1e6)
    fpkm = LengthNormalizer(lengths, "fpkm").fit_transform(TINY)
    assert fpkm[1, 2] == pytest.approx(60 * 1e9 / (500 * 125))
    df = pd.DataFrame(TINY, columns=list("abcd"))
    by_id = LengthNormalizer(pd.Series(lengths[::-1], index=list("dcba")), "tpm").fit_transform(df)
    np.testing.assert_allclose(by_id, LengthNormalizer(lengths[::-1][::-1] * 1, "tpm").fit_transform(TINY))
    with pytest.raises(InputError, match="no gene length for 1 genes"):
        LengthNormalizer(pd.Series([1.0, 2, 3], index=list("abc"))).fit(df)
    np.testing.assert_allclose(Log2p1().fit_transform(TINY), np.log2(TINY + 1))


def test_read_gene_lengths(tmp_path):
    p = tmp_path / "len.csv"
    pd.DataFrame({"gene": ["A", "B"], "median_length": [100.0, 250.5]}).to_csv(p, index=False)
    s = read_gene_lengths(p)
    assert s.to_dict() == {"A": 100.0, "B": 250.5}
    with pytest.raises(InputError, match="no length column"):
        read_gene_lengths(p, column="nope")


@pytest.mark.shared_data
def test_shipped_hg19_lengths_cover_geuvadis_sex_counts(shared_data):
    s = read_gene_lengths(shared_data / "gene_lengths" / "hg19_geneSymbol_genes.parquet")
    assert len(s) > 20000 and (s > 0).all()


# ----------------------------------------------------------------------------- filters
def test_low_count_filter_rule():
    X = np.array([[0, 10, 6, 4], [1, 12, 4, 4], [0, 9, 7, 4], [2, 11, 5, 4], [0, 8, 9, 5]], float)
    # fractions below 5: 1.0, 0.0, 0.2, 0.8 -> keep <= 0.8
    f = LowCountFilter().fit(X)
    assert f.get_support().tolist() == [False, True, True, True]
    assert LowCountFilter(max_fraction_below=0.5).fit(X).get_support().tolist() == [False, True, True, False]
    np.testing.assert_array_equal(f.transform(X), X[:, 1:])
    with pytest.raises(InputError, match="removes every gene"):
        LowCountFilter(min_count=1000).fit(X)


@pytest.mark.parametrize("with_group", [False, True])
def test_filter_by_expr_matches_literal_port(with_group):
    X = _counts(n=24, G=500, seed=3)
    group = np.repeat(["a", "b", "c"], [14, 6, 4]) if with_group else None
    est = FilterByExpr().fit(X, group=group)
    expected = r_filter_by_expr(X.T, group=group)
    np.testing.assert_array_equal(est.get_support(), expected)
    assert 0 < expected.sum() < len(expected)


def test_filter_by_expr_large_n_rule():
    # 30 samples, one group: MinSampleSize = 10 + (30 - 10) * 0.7 = 24
    X = np.zeros((30, 3))
    X[:, 0] = 100  # expressed everywhere
    X[:24, 1] = 100  # expressed in exactly 24 samples: kept
    X[:23, 2] = 100  # 23 samples: dropped
    X[:, 2] += 0  # keep lib sizes comparable
    est = FilterByExpr().fit(X)
    assert est.min_sample_size_ == pytest.approx(24)
    assert est.get_support().tolist() == [True, True, False]


def test_variance_filter_within_batch():
    X = np.array([[1.0, 2, 3], [1.0, 3, 3], [2.0, 4, 3], [3.0, 5, 4]])
    assert VarianceFilter().fit(X).get_support().tolist() == [True, True, True]
    assert VarianceFilter().fit(X, batch=[0, 0, 1, 1]).get_support().tolist() == [False, True, False]


def test_shipped_hg19_lengths_and_tpm():
    s = read_gene_lengths("hg19")
    assert len(s) > 80000 and (s > 0).all()
    assert s["TP53"] > 1000 and s["ENSG00000141510"] > 1000 and s["7157"] > 1000  # TP53 in three ID types
    counts = pd.DataFrame([[10.0, 20.0], [5.0, 40.0]], columns=["TP53", "GAPDH"])
    tpm = LengthNormalizer(s, "tpm").fit_transform(counts)
    rate = counts.to_numpy() / s[["TP53", "GAPDH"]].to_numpy()
    np.testing.assert_allclose(tpm, rate / rate.sum(1, keepdims=True) * 1e6)


@pytest.mark.shared_data
@pytest.mark.parametrize("dataset", ["marioni", "geuvadis"])
def test_tmm_logcpm_on_shared_count_data_matches_literal_port(shared_data, dataset):
    from genexflow.io import read_matrix

    if dataset == "marioni":
        X = read_matrix(shared_data / "marioni_noiseq" / "counts.parquet").to_numpy(np.float64)
    else:  # tximport counts rounded to integers, genes as rows in the file
        X = read_matrix(shared_data / "geuvadis_tximport" / "gene_counts_rounded.parquet").to_numpy(np.float64)
    nf = calc_norm_factors(X)
    np.testing.assert_allclose(nf, r_calc_norm_factors(X.T), rtol=1e-12)
    assert np.ptp(nf) > 0.01  # real libraries need non-trivial factors
    lc = CPMNormalizer().fit_transform(X)
    np.testing.assert_allclose(lc, r_cpm(X.T, lib_size=X.sum(1) * nf, log=True).T, rtol=1e-12)
    keep = FilterByExpr().fit(X).get_support()
    np.testing.assert_array_equal(keep, r_filter_by_expr(X.T))
