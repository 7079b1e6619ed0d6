"""The drift check's page: the decision and its reasons, per-gene top shifts, pathway-score and latent
drift, unseen batches, novelty, covariate shift, performance decay, the retraining it triggered, and a
link to the Evidently report. Rendered from the check's ``decision.json`` (a plain dict), so the core
report package needs nothing from ``monitoring/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from genexflow.errors import InputError
from genexflow.report import figures
from genexflow.report.links import gene_url, pathway_url
from genexflow.report.page import (
    Html,
    Page,
    Section,
    badge,
    clean_json,
    esc,
    figure_plotly,
    figure_png,
    kv,
    link,
    na,
    render_page,
    table,
    write_page,
)

#: Section ids in page order (the browser test checks each one is on the page).
DRIFT_SECTIONS = ("decision", "genes", "pathways", "latent", "batches", "covariates", "retraining", "evidently")
#: Feature groups of the Evidently report (genexflow.monitoring.profile.FEATURE_GROUPS) and what they are.
GROUPS = {"qc": "QC features", "pathway": "pathway scores", "pca": "PCA coordinates", "latent": "model latent space",
          "prediction": "model predictions"}


def render_drift_report(decision: dict[str, Any], *, evidently_html: str | None = None,
                        feature_table: pd.DataFrame | None = None, title: str | None = None) -> str:
    """The HTML page of one drift check.

    Parameters
    ----------
    decision : dict
        ``decision.json`` of the check (``drift``, ``reasons``, ``evidence`` per detector, ``trigger``).
    evidently_html : str, optional
        Relative link to the Evidently report written next to this page.
    feature_table : DataFrame, optional
        Per-feature drift rows (``feature_drift.csv``: indexed by column, with ``drifted`` and a score).
    """
    ev = decision.get("evidence") or {}
    check = ev.get("check") or {}
    page = Page(
        title=title or f"genexflow drift check: {check.get('cohort', 'new cohort')}",
        subtitle=f"checked {decision.get('checked_at_iso', '')} · reference {check.get('reference', '—')} · "
                 f"model {check.get('model_key', '—')}",
        data=clean_json({"kind": "drift-check", "decision": decision}),
        footer="Self-contained page: opens offline; the decision it was drawn from is embedded.")
    page.sections = [
        Section("decision", "Decision", decision_body(decision)),
        Section("genes", "Per-gene shifts", genes_body(ev.get("gene")),
                "Two-sample tests of every model gene against the reference sketch (KS statistic, BH q-value, PSI, "
                "mean shift in reference SDs)."),
        Section("pathways", "Pathways", pathways_body(ev.get("gene"), ev.get("feature"), feature_table)),
        Section("latent", "Latent space and novelty", latent_body(ev.get("feature"), ev.get("novelty"), feature_table)),
        Section("batches", "Unseen batches", batches_body(ev.get("batch"))),
        Section("covariates", "Covariates and performance", covariates_body(ev.get("covariate"), ev.get("performance"))),
        Section("retraining", "Retraining", retraining_body(decision)),
        Section("evidently", "Evidently report", evidently_body(evidently_html, ev.get("feature"))),
    ]
    return render_page(page)


def write_drift_report(path: str | Path, decision: dict[str, Any], **kwargs: Any) -> Path:
    """Render and write the drift page atomically (see :func:`render_drift_report`)."""
    return write_page(render_drift_report(decision, **kwargs), path)


def decision_body(d: dict[str, Any]) -> Html:
    ev = d.get("evidence") or {}
    check = ev.get("check") or {}
    head = (f"<div class='callout {'bad' if d.get('drift') else 'ok'}'><p>{badge('drift', 'bad') if d.get('drift') else badge('no drift', 'ok')} "
            f"{len(d.get('reasons') or [])} reason(s) on {d.get('n_samples', check.get('n_samples', '?'))} new samples.</p>")
    reasons = d.get("reasons") or []
    if reasons:
        head += "<ul class='facts'>" + "".join(
            f"<li><b>{esc(r.get('kind'))}</b>: {esc(r.get('message'))}</li>" for r in reasons) + "</ul>"
    head += "</div>"
    rows = [[r.get("kind"), r.get("value"), r.get("threshold")] for r in reasons]
    notes = "".join(f"<li>{esc(n)}</li>" for n in d.get("notes") or [])
    return Html(head + (table(["detector", "observed", "threshold"], rows, numeric=[False, True, True]) if rows else "")
                + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "")
                + kv([("cohort", check.get("cohort")), ("samples × genes", f"{check.get('n_samples')} × {check.get('n_genes')}"),
                      ("reference", check.get("reference")), ("check took (s)", check.get("seconds"))]))


def genes_body(g: dict[str, Any] | None) -> Html:
    if not g:
        return na("the gene-level detector did not run")
    parts = [kv([("genes tested", g.get("n_tested")), ("genes drifted", g.get("n_drifted")),
                 ("drift share", f"{(g.get('drift_share') or 0):.1%}"),
                 ("model genes missing from the new cohort", g.get("n_missing_genes")),
                 ("FDR / minimum KS", f"{g.get('fdr')} / {g.get('min_ks')}")])]
    top = g.get("top_genes") or []
    if top:
        parts.append(figure_png(figures.ranked_bars([t["gene"] for t in top], [t.get("ks_stat") or 0 for t in top],
                                                    "KS statistic (new vs reference)",
                                                    highlight=[(t.get("qvalue") or 1) < (g.get("fdr") or 0.05) for t in top]),
                                "Top shifted genes: orange bars pass the FDR; many shifted genes with the same sign of "
                                "mean shift point to a technical (platform/normalization) change rather than biology.",
                                "top shifted genes"))
        parts.append(table(["gene", "KS", "q-value", "PSI", "Wasserstein (ref SDs)", "mean shift (ref SDs)"],
                           [[link(gene_url(t["gene"]), t["gene"]), t.get("ks_stat"), t.get("qvalue"), t.get("psi"),
                             t.get("wasserstein_sd"), t.get("mean_shift_sd")] for t in top],
                           numeric=[False, True, True, True, True, True]))
    return Html("".join(parts))


def _group_table(feature_table: pd.DataFrame | None, group: str, n: int = 15) -> Html | None:
    """The most drifted columns of one feature group (``feature_drift.csv``: group, method, score, drifted);
    p-value scores sort ascending, distances descending."""
    if feature_table is None or "group" not in feature_table.columns:
        return None
    t = feature_table[feature_table["group"] == group]
    if not len(t) or "score" not in t.columns:
        return None
    pvals = t.get("method", pd.Series("", index=t.index)).astype(str).str.contains("p_value")
    t = t.assign(_key=np.where(pvals, t["score"], -t["score"])).sort_values("_key").head(n)
    return table(["column", "test", "score", "drifted"],
                 [[_pathway_col(str(i)) if group == "pathway" else i, r.get("method"), r.get("score"),
                   "yes" if bool(r.get("drifted")) else "no"] for i, r in t.iterrows()],
                 numeric=[False, False, True, False])


def pathways_body(g: dict[str, Any] | None, f: dict[str, Any] | None, feature_table: pd.DataFrame | None) -> Html:
    parts = ["<h3>Pathway-score drift</h3>"]
    shares = (f or {}).get("group_shares") or {}
    if "pathway" in shares:
        parts.append(f"<p>{shares['pathway']:.0%} of the pathway-score columns drifted (Evidently, per-column tests).</p>")
        parts.append(_group_table(feature_table, "pathway") or "")
    else:
        parts.append(na("pathway scores were not part of this check (no pathway scores in the reference profile)"))
    parts.append("<h3>Pathways enriched among the drifted genes</h3>")
    tp = (g or {}).get("top_pathways") or []
    if tp:
        keys = [k for k in ("overlap", "set_size", "pvalue", "p_value", "qvalue", "fdr") if any(k in r for r in tp)]
        parts.append(table(["pathway", *keys], [[link(pathway_url(r.get("pathway", "")), r.get("pathway")),
                                                  *[r.get(k) for k in keys]] for r in tp[:15]],
                           numeric=[False] + [True] * len(keys)))
    else:
        parts.append(na("no gene-set enrichment of drifted genes (no drifted genes or no gene sets)"))
    return Html("".join(parts))


def _pathway_col(col: str) -> Html:
    """A pathway-score column (``pw_<pathway id>``) linked to the pathway's page."""
    pid = str(col).split("_", 1)[-1] if str(col).startswith(("pw_", "pathway_")) else str(col)
    return Html(f"{link(pathway_url(pid), col)}")


def latent_body(f: dict[str, Any] | None, nv: dict[str, Any] | None, feature_table: pd.DataFrame | None) -> Html:
    parts = []
    shares = (f or {}).get("group_shares") or {}
    if shares:
        parts.append(table(["feature group", "share of columns drifted"],
                           [[GROUPS.get(k, k), f"{v:.0%}"] for k, v in shares.items()], numeric=[False, True]))
        if any(k in shares for k in ("latent", "pca")):
            fig = go.Figure(go.Bar(x=[GROUPS.get(k, k) for k in shares], y=[shares[k] for k in shares],
                                   marker_color="#0072B2"))
            thr = (f or {}).get("drift_share_threshold")
            if thr is not None:
                fig.add_hline(y=thr, line_dash="dot", annotation_text="dataset-drift threshold")
            fig.update_yaxes(title_text="share of columns drifted", range=[0, 1])
            parts.append(figure_plotly(fig, "Drift by feature group: latent and PCA drift mean the new samples sit "
                                            "elsewhere in the model's space even when single genes look stable.",
                                       "drift-groups", height=320))
        lat = _group_table(feature_table, "latent", 10)
        if lat:
            parts.append("<h3>Most drifted latent dimensions</h3>" + lat)
    else:
        parts.append(na("the Evidently feature report did not run (--no-evidently)"))
    parts.append("<h3>Novelty</h3>")
    if nv and nv.get("checked"):
        parts.append(kv([("space", nv.get("space")), ("novel samples", f"{nv.get('n_novel')} ({(nv.get('novel_fraction') or 0):.1%}, "
                                                                        f"expected {(nv.get('expected_fraction') or 0):.1%})"),
                         ("p-value (more novel than expected)", nv.get("pvalue")),
                         ("most novel samples", ", ".join(map(str, (nv.get("most_novel_samples") or [])[:10])) or "—")]))
    else:
        parts.append(na("novelty was not checked"))
    return Html("".join(parts))


def batches_body(b: dict[str, Any] | None) -> Html:
    if not b or not b.get("checked", True) or not b.get("batch_column"):
        return na("the model has no batch column, so unseen batches cannot be detected")
    unseen = b.get("unseen_levels") or []
    msg = (f"{badge('unseen batches', 'warn')} {len(unseen)} batch(es) the model never saw: "
           f"{esc(', '.join(map(str, unseen)))} ({b.get('n_unseen_samples')} samples, {(b.get('unseen_fraction') or 0):.0%}). "
           "Their batch effect was not estimated at training; see the served model's unseen-batch handling.") if unseen \
        else f"{badge('all batches known', 'ok')} every sample comes from a batch seen at training."
    counts = b.get("counts") or {}
    return Html(f"<p>{msg}</p>" + table(["batch", "samples", "known to the model"],
                                        [[k, v, "no" if k in unseen else "yes"] for k, v in counts.items()],
                                        numeric=[False, True, False]))


def covariates_body(c: dict[str, Any] | None, p: dict[str, Any] | None) -> Html:
    parts = ["<h3>Covariate shift</h3>"]
    cols = (c or {}).get("columns") or {}
    if cols:
        keys = [k for k in ("kind", "test", "statistic", "pvalue", "effect", "drifted") if any(k in v for v in cols.values())]
        parts.append(table(["covariate", *keys], [[k, *[v.get(x) for x in keys]] for k, v in cols.items()]))
    else:
        parts.append(na("the model has no covariates"))
    parts.append("<h3>Performance decay</h3>")
    if p and p.get("checked") and p.get("current") is not None:
        parts.append(kv([("metric", p.get("metric")), ("reference (out-of-fold)", p.get("reference")),
                         ("now", p.get("current")), ("decay", p.get("decay")), ("labelled new samples", p.get("n_labelled"))]))
    else:
        parts.append(na("the new cohort has no labels, so performance could not be measured"))
    return Html("".join(parts))


def retraining_body(d: dict[str, Any]) -> Html:
    t = d.get("trigger")
    if not t:
        return na("no retraining was requested (run `genexflow drift ... --trigger` to start the training pipeline on drift)")
    ok = t.get("triggered")
    return Html(f"<p>{badge('retraining started', 'warn') if ok else badge('not retrained', 'info')} {esc(t.get('reason'))}</p>"
                + kv([("mode", t.get("mode")), ("run", t.get("run_id")), ("URL", t.get("url")),
                      ("triggered at", t.get("triggered_at")), ("cooldown left (s)", t.get("cooldown_remaining_s"))]))


def evidently_body(href: str | None, f: dict[str, Any] | None) -> Html:
    if not href:
        return na("the Evidently report was not written (--no-evidently)")
    extra = ""
    if f:
        extra = (f"<p>Evidently tested {f.get('n_columns')} compact feature columns: {f.get('n_drifted')} drifted "
                 f"(share {(f.get('drift_share') or 0):.0%}, dataset drift: {'yes' if f.get('dataset_drift') else 'no'}).</p>")
    return Html(extra + f"<p>{link(href, 'Open the Evidently report')} (a separate file next to this page; Evidently "
                        "loads its scripts from the web).</p>")


def write_drift_page(out_dir: str | Path, *, mlflow_run_id: str | None = None, tracking_uri: str | None = None,
                     name: str = "drift_report.html") -> Path:
    """The page of the drift check whose outputs are in ``out_dir`` (``decision.json``, and when present
    ``feature_drift.csv`` and ``evidently_report.html``, linked relatively); logged to the check's MLflow run
    under ``drift/`` when ``mlflow_run_id`` is given."""
    out = Path(out_dir)
    decision_file = out / "decision.json"
    if not decision_file.is_file():
        raise InputError(f"{out}: no decision.json; run the drift check first")
    decision = json.loads(decision_file.read_text())
    evidently = "evidently_report.html" if (out / "evidently_report.html").is_file() else None
    features = out / "feature_drift.csv"
    table_ = pd.read_csv(features, index_col=0) if features.is_file() else None
    page = write_drift_report(out / name, decision, evidently_html=evidently, feature_table=table_)
    if mlflow_run_id:
        # lazy: mlflow takes seconds to import
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=tracking_uri or None).log_artifact(mlflow_run_id, str(page), "drift")
    return page


__all__ = ["DRIFT_SECTIONS", "render_drift_report", "write_drift_page", "write_drift_report"]
