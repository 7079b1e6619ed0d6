"""The drift decision: one :class:`DriftPolicy` holds every threshold, :meth:`DriftPolicy.decide` turns
detector reports into ``drift: yes/no`` with reasons and evidence, and a :class:`CooldownStore` keeps
repeated checks from starting a storm of retraining runs.

Each detector is tested at a strict level (gene FDR 1 %, covariates and novelty at p < 0.001, plus
effect-size floors) because the decision is the OR of several detectors: the false-alarm rate of the
whole check on an unchanged population stays well under 5 %.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import filelock
import yaml

from genexflow.errors import InputError
from genexflow.io import json_default

REASON_KINDS = ("schema", "gene", "feature", "batch", "covariate", "novelty", "performance")


@dataclass
class DriftPolicy:
    """Every drift threshold in one place (load from YAML/JSON with :meth:`from_file`).

    Parameters
    ----------
    gene_fdr : float
        Benjamini-Hochberg FDR of the per-gene KS tests.
    gene_min_ks : float
        Minimum KS statistic for a gene to count as drifted (effect-size floor).
    max_gene_drift_share : float
        Drift when more than this share of tested genes drift.
    max_feature_drift_share : float
        Evidently drift share on the compact features (QC, pathways, latent, predictions) at which the
        feature set counts as drifted.
    max_unseen_batch_fraction : float
        Drift when more than this fraction of new samples come from batches the model never saw
        (0: any unseen batch).
    covariate_alpha, covariate_min_effect : float
        A covariate shifts when ``p < covariate_alpha`` and KS statistic / total-variation distance
        ``>= covariate_min_effect``.
    novelty_quantile : float
        Conformal quantile of reference kNN distances above which a sample is novel.
    max_novel_fraction, novelty_alpha : float
        Drift when more than ``max_novel_fraction`` of samples are novel and the binomial excess over
        the expected ``1 - novelty_quantile`` has ``p < novelty_alpha``.
    max_performance_decay : float
        Drift when the reference metric minus the current one exceeds this (relative increase for RMSE).
    min_labelled : int
        Labelled samples needed before performance is judged.
    min_samples : int
        Fewer new samples than this: no statistical decision (reported as insufficient).
    max_missing_gene_fraction : float
        Schema drift: more than this fraction of the reference (model) genes absent from the new cohort. Judged
        however few samples there are (it is not a statistical test).
    triggers : tuple of str
        Reasons that count as drift (default all of schema, gene, feature, batch, covariate, novelty,
        performance).
    cooldown_hours : float
        Minimum time between two retraining runs triggered for the same model.
    """

    gene_fdr: float = 0.01
    gene_min_ks: float = 0.1
    max_gene_drift_share: float = 0.05
    max_feature_drift_share: float = 0.5
    max_unseen_batch_fraction: float = 0.0
    covariate_alpha: float = 1e-3
    covariate_min_effect: float = 0.1
    novelty_quantile: float = 0.95
    max_novel_fraction: float = 0.2
    novelty_alpha: float = 1e-3
    max_performance_decay: float = 0.05
    min_labelled: int = 20
    min_samples: int = 10
    max_missing_gene_fraction: float = 0.1
    triggers: tuple[str, ...] = REASON_KINDS
    cooldown_hours: float = 24.0

    def __post_init__(self) -> None:
        self.triggers = tuple(self.triggers)
        bad = set(self.triggers) - set(REASON_KINDS)
        if bad:
            raise InputError(f"unknown drift trigger(s) {sorted(bad)}; use {', '.join(REASON_KINDS)}")
        for name in ("gene_fdr", "covariate_alpha", "novelty_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise InputError(f"policy {name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.5 < self.novelty_quantile < 1:
            raise InputError(f"policy novelty_quantile must be in (0.5, 1), got {self.novelty_quantile}")
        if self.cooldown_hours < 0:
            raise InputError("policy cooldown_hours must be >= 0")
        if not 0 <= self.max_missing_gene_fraction < 1:
            raise InputError(f"policy max_missing_gene_fraction must be in [0, 1), got {self.max_missing_gene_fraction}")

    # ------------------------------------------------------------------ IO
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["triggers"] = list(self.triggers)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftPolicy:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown drift policy key(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(d))

    @classmethod
    def from_file(cls, path: str | Path) -> DriftPolicy:
        """Read a YAML or JSON policy file (a mapping of field -> value; ``policy:`` nesting allowed)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: policy file not found")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise InputError(f"{path}: a drift policy must be a mapping of thresholds")
        return cls.from_dict(data.get("policy", data))

    # ------------------------------------------------------------------ decision
    def decide(self, reports: Mapping[str, Any] | Iterable[Any], n_samples: int | None = None) -> DriftDecision:
        """Turn detector reports into a decision.

        Parameters
        ----------
        reports : mapping of kind -> report, or iterable of reports
            Reports from :mod:`genexflow.monitoring.detectors` (missing kinds are simply not judged).
        n_samples : int, optional
            New samples checked; below ``min_samples`` the decision is "no drift (insufficient data)".

        Returns
        -------
        DriftDecision
        """
        reps = dict(reports) if isinstance(reports, Mapping) else {r.kind: r for r in reports}
        evidence = {k: r.summary() for k, r in reps.items()}
        reasons: list[Reason] = []
        notes: list[str] = []
        g = reps.get("gene")
        if g is not None and g.n_missing_genes:
            n_ref = g.n_tested + g.n_missing_genes
            share = g.n_missing_genes / n_ref
            absent = g.table.index[~g.table["present"].astype(bool)]
            if share > self.max_missing_gene_fraction:
                reasons.append(Reason("schema", f"schema drift: {g.n_missing_genes} of {n_ref} model genes "
                                      f"({share:.0%} > {self.max_missing_gene_fraction:.0%}) are absent from the new "
                                      f"cohort, e.g. {', '.join(map(str, absent[:5]))}; the model would score "
                                      "imputed values: check the gene IDs / platform of the new data",
                                      share, self.max_missing_gene_fraction))
            else:
                notes.append(f"{g.n_missing_genes} of {n_ref} model genes absent from the new cohort "
                             f"({share:.0%} <= {self.max_missing_gene_fraction:.0%}), e.g. "
                             f"{', '.join(map(str, absent[:5]))}")
        if n_samples is not None and n_samples < self.min_samples:
            notes.append(f"only {n_samples} new samples (< min_samples={self.min_samples}): no statistical decision")
            acting = [r for r in reasons if r.kind in self.triggers]
            return DriftDecision(bool(acting), reasons, evidence, notes=notes, n_samples=n_samples,
                                 policy=self.to_dict())
        if g is not None and g.n_tested and g.drift_share > self.max_gene_drift_share:
            top = ", ".join(g.top_genes(5).index)
            reasons.append(Reason("gene", f"{g.n_drifted} of {g.n_tested} genes drifted "
                                  f"({g.drift_share:.1%} > {self.max_gene_drift_share:.1%}); top: {top}",
                                  g.drift_share, self.max_gene_drift_share))
        f = reps.get("feature")
        if f is not None:
            if f.drift_share >= self.max_feature_drift_share:
                worst = ", ".join(f.table.index[f.table["drifted"]][:5])
                reasons.append(Reason("feature", f"{f.drift_share:.0%} of compact features drifted "
                                      f"(>= {self.max_feature_drift_share:.0%}; Evidently): {worst}",
                                      f.drift_share, self.max_feature_drift_share))
            if f.skipped:
                notes.append(f"feature groups not compared (new data lacks them): {', '.join(f.skipped)}")
        b = reps.get("batch")
        if b is not None and b.checked and b.unseen_levels and b.unseen_fraction > self.max_unseen_batch_fraction:
            reasons.append(Reason("batch", f"unseen batch(es) {', '.join(b.unseen_levels)} in column "
                                  f"{b.batch_column!r}: {b.n_unseen_samples} samples ({b.unseen_fraction:.0%}); "
                                  "the model has no batch correction for them",
                                  b.unseen_fraction, self.max_unseen_batch_fraction))
        c = reps.get("covariate")
        if c is not None and len(c.table):
            for name, r in c.table[c.table["drifted"]].iterrows():
                what = "KS" if r["kind"] == "numeric" else "TVD"
                reasons.append(Reason("covariate", f"covariate {name!r} shifted ({what} {r['effect']:.2f}, "
                                      f"p={r['pvalue']:.1e})", float(r["effect"]), self.covariate_min_effect))
        nv = reps.get("novelty")
        if nv is not None and nv.checked and nv.novel_fraction > self.max_novel_fraction and nv.pvalue < self.novelty_alpha:
            reasons.append(Reason("novelty", f"{nv.novel_fraction:.0%} of samples lie outside the reference "
                                  f"{nv.space} space (expected {nv.expected_fraction:.0%}, p={nv.pvalue:.1e}): "
                                  "possible new subtype", nv.novel_fraction, self.max_novel_fraction))
        p = reps.get("performance")
        if p is not None and p.checked and p.decay is not None:
            if p.n_labelled < self.min_labelled:
                notes.append(f"{p.n_labelled} labelled samples (< min_labelled={self.min_labelled}): "
                             "performance not judged")
            elif p.decay > self.max_performance_decay:
                reasons.append(Reason("performance", f"{p.metric} fell from {p.reference:.3f} to {p.current:.3f} "
                                      f"on {p.n_labelled} labelled samples", p.decay, self.max_performance_decay))
        acting = [r for r in reasons if r.kind in self.triggers]
        return DriftDecision(bool(acting), reasons, evidence, notes=notes, n_samples=n_samples,
                             policy=self.to_dict())


@dataclass
class Reason:
    """One reason for drift: the detector kind, a sentence, the observed value and its threshold."""

    kind: str
    message: str
    value: float
    threshold: float


@dataclass
class DriftDecision:
    """``drift`` yes/no, the reasons and the evidence (each detector's summary)."""

    drift: bool
    reasons: list[Reason]
    evidence: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    n_samples: int | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    checked_at: float = field(default_factory=time.time)

    @property
    def reason_kinds(self) -> list[str]:
        return sorted({r.kind for r in self.reasons})

    def to_dict(self) -> dict[str, Any]:
        return {"drift": self.drift, "reasons": [asdict(r) for r in self.reasons], "notes": self.notes,
                "n_samples": self.n_samples, "checked_at": self.checked_at,
                "checked_at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.checked_at)),
                "policy": self.policy, "evidence": self.evidence}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=json_default)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftDecision:
        return cls(drift=bool(d["drift"]), reasons=[Reason(**r) for r in d.get("reasons", [])],
                   evidence=dict(d.get("evidence", {})), notes=list(d.get("notes", [])),
                   n_samples=d.get("n_samples"), policy=dict(d.get("policy", {})),
                   checked_at=float(d.get("checked_at", time.time())))

    def __str__(self) -> str:
        head = "drift: yes" if self.drift else "drift: no"
        return "\n".join([head] + [f"  - [{r.kind}] {r.message}" for r in self.reasons]
                         + [f"  note: {n}" for n in self.notes])


# ---------------------------------------------------------------------------------------------- cooldown
class CooldownStore:
    """A JSON file remembering when retraining was last triggered per model key.

    Writes are atomic (temp file + rename) under a file lock (``filelock``), so concurrent checks on one host see
    one consistent state; :meth:`acquire` checks and records in one locked step, so two checks racing
    cannot both start a run.

    Parameters
    ----------
    path : str or Path
        The JSON file (created on first record).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _locked(self) -> filelock.FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(self.path.with_suffix(self.path.suffix + ".lock"))

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text() or "{}")
        except json.JSONDecodeError as exc:
            raise InputError(f"{self.path}: corrupt cooldown file ({exc}); delete it to reset") from exc

    def _write(self, state: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".cooldown-")
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh, indent=1, default=str)
        os.replace(tmp, self.path)

    def last(self, key: str) -> dict[str, Any] | None:
        """The last recorded trigger for ``key`` (``{"time": epoch seconds, ...}``) or None."""
        with self._locked():
            return self._read().get(key)

    def remaining(self, key: str, cooldown_hours: float, now: float | None = None) -> float:
        """Seconds until ``key`` may trigger again (0 when allowed)."""
        last = self.last(key)
        if not last:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, float(last["time"]) + cooldown_hours * 3600.0 - now)

    def acquire(self, key: str, cooldown_hours: float, info: Mapping[str, Any] | None = None,
                now: float | None = None) -> tuple[bool, float]:
        """Atomically: if ``key`` is out of cooldown, record a trigger now and return ``(True, 0)``;
        otherwise ``(False, seconds remaining)``."""
        now = time.time() if now is None else now
        with self._locked():
            state = self._read()
            last = state.get(key)
            if last:
                left = float(last["time"]) + cooldown_hours * 3600.0 - now
                if left > 0:
                    return False, left
            state[key] = {"time": now, **dict(info or {})}
            self._write(state)
            return True, 0.0

    def update(self, key: str, **info: Any) -> None:
        """Add details (e.g. the started run's id) to the last record of ``key``."""
        with self._locked():
            state = self._read()
            if key in state:
                state[key].update(info)
                self._write(state)

    def release(self, key: str) -> None:
        """Forget ``key`` (e.g. the triggered run failed to start, so the cooldown must not hold)."""
        with self._locked():
            state = self._read()
            if state.pop(key, None) is not None:
                self._write(state)


def decide(reports: Mapping[str, Any] | Iterable[Any], policy: DriftPolicy | None = None,
           n_samples: int | None = None) -> DriftDecision:
    """Module-level shortcut for ``(policy or DriftPolicy()).decide(reports, n_samples)``."""
    return (policy or DriftPolicy()).decide(reports, n_samples=n_samples)
