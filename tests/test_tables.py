"""Tables rendered by pandas (to_markdown / to_html): every value lands in its cell, missing ones stay blank."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from genexflow.components._steps import HeldoutEvaluation, gate_markdown
from genexflow.training.tracking import markdown_table


def _cells(markdown: str) -> list[list[str]]:
    rows = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in rows[:1] + rows[2:]]


def test_markdown_table_keeps_the_index_and_four_significant_digits():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.uniform(size=(3, 2)), columns=["auc", "bacc"],
                      index=pd.Index(["deep", "logreg", "svm"], name="model"))
    cells = _cells(markdown_table(df))
    assert cells[0] == ["model", "auc", "bacc"]
    for row, (name, vals) in zip(cells[1:], df.iterrows(), strict=True):
        assert row[0] == name
        np.testing.assert_allclose([float(c) for c in row[1:]], vals.to_numpy(), rtol=5e-4)


def test_gate_markdown_has_a_row_per_model_and_blank_missing_metrics(tmp_path):
    metrics = {"challenger": {"balanced_accuracy": 0.91, "roc_auc": 0.95},
               "champion": {"balanced_accuracy": 0.85, "roc_auc": 0.9}, "baselines": {"logreg": 0.88},
               "n_heldout": 20}
    d = SimpleNamespace(passed=False, challenger_version=3, champion_version=2, reason="worse than logreg",
                        policy={"metric": "balanced_accuracy"}, metrics=metrics)
    text = gate_markdown(d, tmp_path / "gate.md").read_text()
    assert "NOT PASSED (challenger v3)" in text and "worse than logreg" in text
    cells = {r[0]: r[1:] for r in _cells(text)}
    assert cells["model"] == ["balanced_accuracy", "roc_auc"]
    assert cells["challenger"] == ["0.9100", "0.9500"]
    assert cells["champion v2"] == ["0.8500", "0.9000"]
    assert cells["baseline logreg"] == ["0.8800", ""]


def test_heldout_html_escapes_names_and_holds_the_confusion_matrix(tmp_path):
    y = np.array([0, 0, 1, 1, 1])
    out = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    ev = HeldoutEvaluation("classification", ["<ctrl>", "case"], {"balanced_accuracy": 0.5833, "roc_auc": 0.8},
                           {"logreg": {"balanced_accuracy": 0.5}}, y, out, 10, 5)
    html = ev.write_html(tmp_path / "r.html").read_text()
    assert "&lt;ctrl&gt;" in html and "<ctrl>" not in html
    assert "0.5833" in html and "0.8000" in html and "baseline logreg" in html
    cm = ev.confusion()
    assert cm.sum() == 5 and f"<td>{cm[1, 1]}</td>" in html
