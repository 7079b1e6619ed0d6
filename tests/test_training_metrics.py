"""Metrics, bootstrap intervals, splits and the training config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from genexflow.errors import InputError
from genexflow.metrics import (
    bootstrap_ci,
    classification_metrics,
    confusion,
    expected_calibration_error,
    regression_metrics,
    summarize,
)
from genexflow.training.config import TrainConfig
from genexflow.training.splits import leave_one_batch_out, make_splits, stratified_kfold, train_val_split


def _proba(n=120, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def test_classification_metrics_match_sklearn():
    y, p = _proba()
    m = classification_metrics(y, p)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-6)
    onehot = np.eye(3)[y]
    assert m["pr_auc"] == pytest.approx(np.mean([skm.average_precision_score(onehot[:, c], p[:, c]) for c in range(3)]))


def test_binary_auc_and_single_class_rows():
    y, p = _proba(k=2)
    assert classification_metrics(y, p)["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    one = classification_metrics(np.zeros(5, int), p[:5])
    assert np.isnan(one["roc_auc"]) and one["balanced_accuracy"] == pytest.approx((p[:5].argmax(1) == 0).mean())


def test_ece_perfect_and_overconfident():
    y = np.array([0, 1, 0, 1])
    perfect = np.eye(2)[y]
    assert expected_calibration_error(y, perfect) == 0.0
    wrong = np.eye(2)[1 - y] * 0.99 + 0.005
    assert expected_calibration_error(y, wrong) > 0.9


def test_regression_metrics():
    rng = np.random.default_rng(1)
    y = rng.normal(size=50)
    p = y + rng.normal(scale=0.3, size=50)
    m = regression_metrics(y, p)
    assert m["r2"] == pytest.approx(skm.r2_score(y, p))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(y, p))
    assert m["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, p)))


def test_bootstrap_ci_brackets_the_point_estimate():
    y, p = _proba(n=200)
    ci = bootstrap_ci(classification_metrics, y, p, n_boot=200, seed=0)
    point = classification_metrics(y, p)
    for k in ("accuracy", "balanced_accuracy", "roc_auc"):
        lo, hi = ci[k]
        assert lo < point[k] < hi
        assert hi - lo < 0.25


def test_confusion_and_summary():
    cm = confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    s = summarize([{"a": 1.0}, {"a": 3.0}, {"a": np.nan}])
    assert s["a"] == (2.0, pytest.approx(np.sqrt(2)))


def test_stratified_kfold_is_stratified_disjoint_and_repeated():
    y = np.repeat([0, 1, 2], [30, 20, 10])
    sp = stratified_kfold(y, 5, n_repeats=2, seed=3)
    assert len(sp) == 10
    for rep in (0, 1):
        tests = np.concatenate([s.test for s in sp if s.repeat == rep])
        assert sorted(tests) == list(range(60))  # each row tested exactly once per repeat
    for s in sp:
        assert not set(s.train) & set(s.test)
        assert np.bincount(y[s.test], minlength=3).tolist() == [6, 4, 2]
    assert not np.array_equal(sp[0].test, sp[5].test)  # repeats reshuffle
    with pytest.raises(InputError, match="smallest class"):
        stratified_kfold(np.repeat([0, 1], [30, 3]), 5)


def test_leave_one_batch_out():
    b = np.array(["2", "10", "1", "2", "10", "1", "2"])
    y = np.array([0, 1, 0, 1, 0, 1, 1])
    sp = leave_one_batch_out(b, y)
    assert [s.group for s in sp] == ["1", "2", "10"]  # natural order
    for s in sp:
        assert set(b[s.test]) == {s.group} and s.group not in set(b[s.train])
    with pytest.raises(InputError, match="no training sample of class"):
        leave_one_batch_out(np.array(["a", "a", "b", "b"]), np.array([0, 0, 1, 1]))
    with pytest.raises(InputError, match="batch column"):
        make_splits("lobo", y)


def test_train_val_split_stratified():
    y = np.repeat([0, 1], [40, 20])
    tr, va = train_val_split(y, 0.25, seed=0)
    assert len(va) == 15 and not set(tr) & set(va)
    assert np.bincount(y[va]).tolist() == [10, 5]


def test_config_refuses_label_as_covariate_and_bad_values():
    with pytest.raises(InputError, match="unknown at inference"):
        TrainConfig(label="label", covariates=["age", "label"])
    with pytest.raises(InputError, match="patience"):
        TrainConfig(patience=0)
    cfg = TrainConfig(model={"d_model": 16})
    assert cfg.with_(model={"n_heads": 2}).model == {"d_model": 16, "n_heads": 2}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.flat_params()["model.d_model"] == 16


@pytest.mark.parametrize("k", [2, 3])
def test_fast_metrics_equal_reference(k):
    from genexflow.metrics import fast_classification_metrics

    y, p = _proba(n=90, k=k, seed=k)
    p[:5] = p[5]  # ties in the scores
    ref = classification_metrics(y, p)
    fast = fast_classification_metrics(y, p)
    for key, v in fast.items():
        assert v == pytest.approx(ref[key], abs=1e-12), key


def test_one_metrics_module_for_cv_gate_and_monitoring():
    """CV (class indices), the gate (label strings through evaluate_labels) and monitoring's
    performance-decay check (a prediction frame) give the same numbers for the same predictions,
    and they match scikit-learn."""
    from genexflow.metrics import evaluate, evaluate_labels
    from genexflow.profile import prediction_frame, reference_performance

    rng = np.random.default_rng(4)
    names = ["ALL", "AML", "MLL"]
    y = rng.integers(0, 3, 60)
    proba = rng.dirichlet(np.ones(3), 60)
    proba[np.arange(60), y] += 0.6 * (rng.random(60) < 0.6)  # better than chance, not perfect
    proba /= proba.sum(1, keepdims=True)
    labels = np.asarray(names)[y]
    cv = evaluate("classification", y, proba)
    gate = evaluate_labels("classification", labels, proba, names)
    perf = reference_performance(labels, prediction_frame(proba, np.arange(60), names), "classification")
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss"):
        assert gate[k] == pytest.approx(cv[k]) and perf[k] == pytest.approx(cv[k]), k
    assert cv["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, proba.argmax(1)))
    assert cv["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    # hard labels only (no probabilities): the label-based metrics, still the same values
    hard = reference_performance(labels, prediction_frame(np.asarray(names)[proba.argmax(1)], np.arange(60)),
                                 "classification")
    assert hard["balanced_accuracy"] == pytest.approx(cv["balanced_accuracy"]) and "roc_auc" not in hard
    t = rng.normal(size=30)
    pred = t + rng.normal(0, 0.3, 30)
    reg = reference_performance(t, pd.DataFrame({"pred_value": pred}), "regression")
    assert reg["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(t, pred)))
    assert reg["r2"] == pytest.approx(evaluate("regression", t, pred)["r2"]) == pytest.approx(skm.r2_score(t, pred))


def test_paired_bootstrap_difference_and_the_pooled_oof_comparison():
    """The paired difference is metric(a) - metric(b) on the same rows with an interval around it; the CV
    comparison pools every repeat's out-of-fold rows and pairs the deep model with the best baseline."""
    from genexflow.metrics import evaluate, paired_bootstrap_difference
    from genexflow.training.cv import DEEP, CVResult

    rng = np.random.default_rng(7)
    n = 80
    y = rng.integers(0, 2, n)
    good = np.clip(np.eye(2)[y] * 0.7 + rng.uniform(0, 0.5, (n, 2)), 1e-3, None)
    good /= good.sum(1, keepdims=True)
    noise = rng.dirichlet([1, 1], n)
    d = paired_bootstrap_difference("classification", y, good, noise, "balanced_accuracy", n_boot=300)
    want = (evaluate("classification", y, good)["balanced_accuracy"]
            - evaluate("classification", y, noise)["balanced_accuracy"])
    assert d["difference"] == pytest.approx(want) and d["ci_low"] < d["difference"] < d["ci_high"]
    assert d["ci_low"] > 0  # clearly better than noise
    same = paired_bootstrap_difference("classification", y, good, good, "balanced_accuracy", n_boot=50)
    assert same["ci_low"] == same["ci_high"] == 0.0
    # two repeats of out-of-fold rows for the deep model and two baselines
    rows = []
    for rep in (0, 1):
        for m, out in ((DEEP, good), ("logreg_l2", noise), ("hist_gb", 1 - good)):
            rows.append(pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "model": m, "split": f"r{rep}f0",
                                      "repeat": rep, "group": "", "y_true": y,
                                      "proba_a": out[:, 0], "proba_b": out[:, 1]}))
    folds = pd.DataFrame({"model": [DEEP, "logreg_l2", "hist_gb"], "split": "r0f0", "balanced_accuracy": 0.5})
    cv = CVResult("classification", ["a", "b"], folds, pd.concat(rows, ignore_index=True))
    cmp = cv.oof_comparison(n_boot=200)
    assert cmp["n_repeats"] == 2 and cmp["n_rows"] == 2 * n
    assert cmp[DEEP]["balanced_accuracy"] == pytest.approx(evaluate("classification", y, good)["balanced_accuracy"])
    assert cmp["vs_best_baseline"]["baseline"] == "logreg_l2"  # noise beats the inverted model
    assert cmp["vs_best_baseline"]["difference"] == pytest.approx(want)
