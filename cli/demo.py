"""``genexflow demo``: a quick end-to-end look at a shipped cohort without any server.

Reads a shipped cohort, standardizes it inside each training fold and cross-validates a regularized
logistic regression, printing the metrics. ``genexflow run`` runs the full Kubeflow training pipeline.
"""

from __future__ import annotations

import numpy as np
import typer

from genexflow import datasets
from genexflow.cli._common import console, progress, step


def demo(
    dataset: str = typer.Option("golub", help="Shipped cohort: golub, geuvadis_sex or bladderbatch."),
    folds: int = typer.Option(5, help="Stratified cross-validation folds."),
) -> None:
    """Cross-validate a baseline classifier on a shipped cohort and print its metrics."""
    # lazy: the library pulls torch/sklearn, and `genexflow --help` imports every command module
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    label = {"golub": "label", "geuvadis_sex": "sex", "bladderbatch": "cancer"}.get(dataset, "label")
    with step(f"load {dataset}"):
        cohort = datasets.load(dataset)
    X = cohort.X.astype(np.float64)
    if cohort.value_type.value == "counts":
        X = np.log2(X / X.sum(1, keepdims=True) * 1e6 + 1)
    y = cohort.samples[label].astype(str).to_numpy()
    pred = np.empty_like(y)
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)

    with progress() as bar:
        task = bar.add_task("cross-validation", total=folds)
        for train, test in cv.split(X, y):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
            model.fit(X[train], y[train])
            pred[test] = model.predict(X[test])
            bar.advance(task)
    console.print(f"{dataset}: {cohort.n_samples} samples x {cohort.n_genes} genes, label {label!r}", markup=False)
    console.print(f"balanced accuracy {balanced_accuracy_score(y, pred):.3f}  "
                  f"macro-F1 {f1_score(y, pred, average='macro'):.3f}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
