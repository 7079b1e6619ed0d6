"""The "modular" reading: how well each pathway predicts the label on its own, on held-out rows.

With ``model.pathway_heads > 0`` PathwayNet carries one small auxiliary head per pathway that sees only
that pathway's member genes and is trained jointly with the main output (see
:class:`~genexflow.models.PathwayNet`). Scoring every head on rows it was not trained on ranks the
programs by their own predictive value: a pathway whose head scores high carries label signal by itself,
whatever the main model does with it. Cross-validation pools these scores over the outer test folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from genexflow.metrics import evaluate

#: The score each head is ranked by (threshold-free, so heads that are right but badly calibrated count).
RANK_METRIC = {"classification": "roc_auc", "regression": "r2"}


def modular_scores(y_true: np.ndarray, pathway_output: np.ndarray, pathways: Sequence[str],
                   task: str = "classification") -> pd.DataFrame:
    """Score every pathway head on the same rows.

    Parameters
    ----------
    y_true : ndarray of shape (n,)
        Class indices or targets of held-out rows.
    pathway_output : ndarray of shape (n, P, K) (probabilities) or (n, P) (regression)
        ``predict_module(...)["pathway_output"]`` on those rows.
    pathways : sequence of str
        The P pathway names (the priors' order).
    task : {"classification", "regression"}

    Returns
    -------
    DataFrame
        One row per pathway, indexed by name, best first: the task's metrics (``roc_auc``,
        ``balanced_accuracy``... or ``r2``, ``rmse``...) and ``rank`` (1 = best by :data:`RANK_METRIC`).
    """
    out = np.asarray(pathway_output)
    rows = {str(p): evaluate(task, np.asarray(y_true), out[:, j]) for j, p in enumerate(pathways)}
    df = pd.DataFrame.from_dict(rows, orient="index")
    key = RANK_METRIC[task]
    df = df.sort_values(key, ascending=False, kind="stable")
    df["rank"] = np.arange(1, len(df) + 1)
    df.index.name = "pathway"
    return df
