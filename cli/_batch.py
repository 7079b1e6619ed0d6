"""``--batch-method`` and the batch-label confounding warning, shared by ``genexflow train`` and ``run``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from genexflow.cli._common import console
from genexflow.errors import InputError

if TYPE_CHECKING:
    from genexflow.preprocessing.confounding import ConfoundingResult


def batch_method_overrides(batch_method: str | None, no_combat: bool, overrides: dict[str, Any],
                           confounding: ConfoundingResult | None = None) -> bool | None:
    """Fold ``--batch-method`` / ``--no-combat`` into the config overrides.

    ``none`` (and its alias ``--no-combat``) keeps the batch column for grouping but corrects nothing
    (``combat=False``); the others set ``preprocessing.batch_method``; ``auto`` (the default) is ComBat
    unless ``confounding`` says the batch is confounded with the label, then ``none``. Returns the
    ``combat`` field (None = keep the config's).
    """
    # lazy: the library pulls torch/sklearn; `genexflow --help` imports every command module
    from genexflow.preprocessing.confounding import choose_batch_method
    from genexflow.preprocessing.pipeline import BATCH_METHODS

    if batch_method is None or batch_method == "auto":
        if no_combat:
            return False
        if batch_method is None and "batch_method" in overrides.get("preprocessing", {}):
            return None  # --set preprocessing.batch_method=... or a config file decides
        chosen = choose_batch_method(confounding)
        if chosen == "combat":
            return None
        console.print(f"[bold]--batch-method auto: {chosen}[/] (the batch is confounded with the label)")
        batch_method = chosen
    if batch_method not in BATCH_METHODS:
        raise InputError(f"unknown --batch-method {batch_method!r}; use auto, {', '.join(BATCH_METHODS)}")
    if no_combat and batch_method != "none":
        raise InputError(f"--no-combat means --batch-method none; it contradicts --batch-method {batch_method}")
    if batch_method == "none":
        return False
    overrides["preprocessing"] = {**overrides.get("preprocessing", {}), "batch_method": batch_method}
    return True


def print_confounding(samples: pd.DataFrame, label: str, batch_column: str, task: str) -> ConfoundingResult | None:
    """Test the batch-label association and print it (a loud warning when confounded)."""
    # lazy: the library pulls torch/sklearn; `genexflow --help` imports every command module
    from genexflow.preprocessing.confounding import batch_label_association

    if label not in samples.columns or batch_column not in samples.columns:
        return None
    labeled = samples[label].notna() & samples[batch_column].notna()
    if samples.loc[labeled, batch_column].nunique() < 2 or samples.loc[labeled, label].nunique() < 2:
        return None
    res = batch_label_association(samples.loc[labeled, batch_column], samples.loc[labeled, label], task=task)
    if res.confounded:
        console.print(f"[bold red]{res.message()}[/]", highlight=False)
    else:
        console.print(res.message(), markup=False, highlight=False)
    return res
