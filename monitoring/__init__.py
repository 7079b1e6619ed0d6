"""genexflow.monitoring: drift monitoring that triggers retraining (installed from the top-level
``monitoring/`` folder).

======================  ===================================================================================
module                  what
======================  ===================================================================================
``detectors``           gene (KS/PSI/Wasserstein + BH), Evidently features, unseen batch, covariate shift,
                        latent novelty, performance decay: ``fit(reference)`` / ``score(new)`` -> report
``policy``              :class:`DriftPolicy` (every threshold), ``decide`` -> :class:`DriftDecision`,
                        :class:`CooldownStore`
``check``               :func:`drift_check`: reports (Evidently HTML/JSON, gene table), decision, MLflow
``metrics``             Prometheus textfile / scrape endpoint; ``alerts.yaml``, ``grafana_dashboard.json``
``scenarios``           drift scenarios on simulated cohorts (tests, demos, benchmarks)
======================  ===================================================================================

The reference profile the detectors compare against is built by the core (:mod:`genexflow.profile`, saved
in the bundle); the retrain trigger lives with the pipelines (:mod:`genexflow.pipelines.trigger`).

Names are imported lazily so ``import genexflow.monitoring`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GeneDriftDetector": "detectors", "FeatureDriftDetector": "detectors", "UnseenBatchDetector": "detectors",
    "CovariateShiftDetector": "detectors", "LatentNoveltyDetector": "detectors",
    "PerformanceDecayDetector": "detectors",
    "DriftPolicy": "policy", "DriftDecision": "policy", "CooldownStore": "policy", "decide": "policy",
    "drift_check": "check", "compute_reports": "check", "DriftResult": "check", "ModelOutputs": "check",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"genexflow.monitoring.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'genexflow.monitoring' has no attribute {name!r}")
