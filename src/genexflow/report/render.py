"""Render a training run's report data (:func:`genexflow.report.collect.collect_run_data`) as one page."""

from __future__ import annotations

from typing import Any

import numpy as np

from genexflow.report import figures
from genexflow.report.links import gene_url, pathway_source, pathway_url
from genexflow.report.page import (
    Html,
    Page,
    Section,
    badge,
    esc,
    figure_plotly,
    figure_png,
    kv,
    link,
    na,
    render_page,
    table,
)

DEEP = "pathwaynet"
EFFECT_NAMES = {"cramers_v": "Cramér's V", "eta_squared": "eta²"}
#: Section ids in page order (the browser test checks each one is on the page).
RUN_SECTIONS = ("summary", "cohort", "batch", "cv", "curves", "confusion", "learning", "biology", "model-card")


def render_run_report(data: dict[str, Any]) -> str:
    """The HTML page of a training run."""
    meta = data["meta"]
    card = data.get("card") or {}
    run = (card.get("mlflow") or {}).get("run_id")
    page = Page(
        title=f"genexflow run report: {meta['cohort']} · {meta['label']}",
        subtitle=f"{meta['task']} · created {meta['created']} · genexflow {meta['version']}"
                 + (f" · MLflow run {run}" if run else ""),
        data=data,
        footer="Self-contained page: opens offline; the data it was drawn from is embedded (id genexflow-report-data).",
    )
    page.sections = [
        Section("summary", "Summary", summary_body(data)),
        Section("cohort", "Cohort and QC", cohort_body(data["cohort"]),
                "What went into training: samples, genes, the value type, what ingest quarantined and what "
                "preprocessing imputed."),
        Section("batch", "Batch effects", batch_body(data["batch"], meta),
                "Samples in the first two principal components of the preprocessed training data, before and "
                "after batch correction."),
        Section("cv", "Cross-validation vs baselines", cv_body(data.get("cv")),
                "Every model trained and scored on the same folds; intervals are 95% corrected resampled-t "
                "intervals (Nadeau & Bengio), which account for overlapping training sets."),
        Section("curves", "ROC, precision-recall and calibration" if meta["task"] == "classification"
                else "Predicted vs true", curves_body(data.get("oof"))),
        Section("confusion", "Confusion matrix", confusion_body(data.get("oof"))),
        Section("learning", "Learning curves", learning_body(data.get("learning") or {})),
        Section("biology", "Genes and pathways", biology_body(data.get("biology"))),
        Section("model-card", "Model card", card_body(card, meta)),
    ]
    return render_page(page)


# ------------------------------------------------------------------------------------------------ summary
def summary_body(data: dict[str, Any]) -> Html:
    c, cv, card, b = data["cohort"], data.get("cv"), data.get("card") or {}, data["batch"]
    facts = [f"<li>{c['n_samples']} samples × {c['n_genes']} genes ({esc(c['value_type'])}"
             f"{', ' + esc(c['value_type_source']) if c.get('value_type_source') else ''})"
             f"{'; ' + str(c['n_genes_model']) + ' genes after filtering' if c.get('n_genes_model') else ''}.</li>"]
    q = c.get("quarantine") or {}
    nq = sum((q.get("counts") or {}).values())
    imp = c.get("imputed") or {}
    facts.append(f"<li>Quarantined at ingest: {_quarantine_text(q) if nq else 'nothing'}. Imputed: "
                 f"{_imputed_text(imp)}.</li>")
    cls = "callout"
    if cv:
        deep = next((r for r in cv["rows"] if r["is_deep"]), None)
        if deep and deep.get("diff_low") is not None:
            cls = "callout ok" if deep["diff_low"] > 0 else "callout bad" if deep["diff_high"] < 0 else "callout"
        facts.append(f"<li>{esc(cv['verdict'])}</li>")
    else:
        facts.append("<li>Cross-validation was not run (CV folds = 0), so there is no comparison with the "
                     "baselines on the same folds.</li>")
    assoc = b.get("association") or {}
    if assoc.get("confounded"):
        facts.append(f"<li><b>Batch and label are confounded</b> ({esc(assoc.get('test'))} p = {assoc['p_value']:.2g}, "
                     f"{esc(EFFECT_NAMES.get(assoc.get('effect_name'), assoc.get('effect_name')))} "
                     f"{assoc.get('effect_size', float('nan')):.2f}): batch correction may remove real signal; see "
                     "Batch effects.</li>")
    facts.append(f"<li>{esc(gate_sentence(card))}</li>")
    return Html(f"<div class='{cls}'><ul class='facts'>{''.join(facts)}</ul></div>")


def gate_estimate_sentence(g: dict[str, Any]) -> str:
    """The registry gate's stable estimate in one sentence (pooled out-of-fold, paired, bootstrap CI)."""
    return (f"The registry gate decides on the pooled out-of-fold estimate: deep model - {g.get('baseline')} = "
            f"{g.get('difference', float('nan')):+.3f} {g.get('metric')} (95% bootstrap CI "
            f"{g.get('ci_low', float('nan')):+.3f} to {g.get('ci_high', float('nan')):+.3f}; {g.get('n_rows')} rows, "
            f"{g.get('n_repeats')} repeat(s)).")


def gate_sentence(card: dict[str, Any]) -> str:
    """The gate's decision in one sentence (or why there was none)."""
    g = card.get("gate")
    reg = card.get("registry")
    if not g:
        if reg:
            return f"Registered as {reg.get('name')} version {reg.get('version')}; the gate has not decided yet."
        return "Not gated: this run was not registered (genexflow train trains and tracks; genexflow run also " \
               "registers, gates and deploys)."
    verdict = "passed" if g.get("decision") == "pass" else "did not pass"
    return f"The registry gate {verdict} for version {(reg or {}).get('version', '?')}: {g.get('reason') or 'no reason recorded'}."


def _quarantine_text(q: dict[str, Any]) -> str:
    return ", ".join(f"{v} {k}{'s' if v != 1 else ''}" for k, v in (q.get("counts") or {}).items())


def _imputed_text(imp: dict[str, Any]) -> str:
    n = int(imp.get("n_cells") or 0)
    if not n:
        return "nothing (no missing values)"
    return f"{n} missing value{'s' if n != 1 else ''} ({imp.get('fraction', 0):.2%} of cells) by {imp.get('method') or 'the preprocessing'}"


# ------------------------------------------------------------------------------------------------ cohort
def cohort_body(c: dict[str, Any]) -> Html:
    parts = [kv([
        ("cohort", c.get("name")), ("samples", c.get("n_samples")), ("genes (input)", c.get("n_genes")),
        ("genes (model, after filtering)", c.get("n_genes_model")),
        ("value type", f"{c.get('value_type')}" + (f" ({c['value_type_source']})" if c.get("value_type_source") else "")),
        ("labelled samples", c.get("n_labeled")), ("covariates", ", ".join(c.get("covariates") or []) or "none"),
        ("source", c.get("source")),
    ])]
    if c.get("classes"):
        parts.append("<h3>Classes</h3>" + table(["class", "samples"], [[k, v] for k, v in c["classes"].items()],
                                                numeric=[False, True]))
    if c.get("target"):
        t = c["target"]
        parts.append(f"<p>Target: mean {t['mean']:.3g}, SD {t['sd']:.3g}, range {t['min']:.3g} to {t['max']:.3g}.</p>")
    if c.get("batches"):
        parts.append("<h3>Batches</h3>" + table(["batch", "samples"], [[k, v] for k, v in c["batches"].items()],
                                                numeric=[False, True]))
    parts.append("<h3>Quarantine</h3>")
    q = c.get("quarantine")
    if q is None:
        parts.append(na("the cohort was not ingested through `genexflow ingest` / the pipeline's ingest step, "
                        "so nothing was screened or quarantined"))
    elif not sum((q.get("counts") or {}).values()):
        parts.append("<p>Ingest quarantined nothing: every sample and gene passed validation.</p>")
    else:
        parts.append(f"<p>Ingest quarantined {esc(_quarantine_text(q))} ({q.get('n_reasons')} reasons) in "
                     f"<code>{esc(q.get('dir'))}</code>.</p>")
        if q.get("reasons"):
            keys = list(q["reasons"][0])
            parts.append(table(keys, [[r.get(k) for k in keys] for r in q["reasons"]]))
    parts.append("<h3>Imputed values</h3>")
    imp = c.get("imputed") or {}
    parts.append(f"<p>{esc(_imputed_text(imp))}.</p>")
    if imp.get("samples"):
        parts.append(table(["sample with missing values", "cells"], list(imp["samples"].items()), numeric=[False, True]))
    if imp.get("genes"):
        parts.append(table(["gene with missing values", "cells"], list(imp["genes"].items()), numeric=[False, True]))
    return Html("".join(parts))


# ------------------------------------------------------------------------------------------------ batch
def batch_body(b: dict[str, Any], meta: dict[str, Any]) -> Html:
    parts: list[str] = []
    col = b.get("batch_column")
    views = b.get("views") or {}
    if not col:
        parts.append(na("no batch column was given, so there is no batch correction; the PCA below shows the "
                        "preprocessed data by label"))
    elif b.get("method") is None:
        why = (" because batch and label are confounded (see the association test below)"
               if (b.get("association") or {}).get("confounded") else "")
        parts.append(f"<p>Batch column <code>{esc(col)}</code> kept for grouping, but no batch correction ran"
                     f"{why} (batch method: {esc(b.get('requested') or 'none')}).</p>")
    else:
        parts.append(f"<p>Correction: <b>{esc(b['method'])}</b> on batch column <code>{esc(col)}</code>, fitted on "
                     "the training rows. <i>Before</i> is the same fitted pipeline with the correction step left out.</p>")
    if views:
        rows = [[n, v.get("batch_silhouette"), v.get("label_silhouette"),
                 ", ".join(f"{e:.0%}" for e in v.get("explained", []))] for n, v in views.items()]
        parts.append(table(["view", "batch silhouette", "label silhouette", "variance PC1, PC2"], rows,
                           numeric=[False, True, True, False]))
        if b.get("batches") is not None:
            parts.append(figure_plotly(
                figures.pca_panels(views, b["batches"], "batch", b["sample_ids"]),
                "Coloured by batch: after a good correction the batches overlap (batch silhouette near 0 or below).",
                "pca-batch"))
        if b.get("labels") is not None and meta.get("task") == "classification":
            parts.append(figure_plotly(
                figures.pca_panels(views, b["labels"], meta.get("label") or "label", b["sample_ids"]),
                "Coloured by label: the classes should stay apart after correction (label silhouette should not drop).",
                "pca-label"))
    elif b.get("missing"):
        parts.append(na(b["missing"]))
    parts.append("<h3>Batch-label association</h3>")
    a = b.get("association")
    if not a:
        parts.append(na("needs a batch column and a label"))
    elif a.get("p_value") is None:
        parts.append(na(a.get("note") or "the test could not be computed"))
    else:
        strong = bool(a.get("confounded"))
        parts.append(
            f"<p>{badge('confounded: ' + str(a.get('level')), 'warn') if strong else badge(str(a.get('level')) + ' association', 'ok')} "
            f"{esc(a.get('test'))}: statistic {a.get('statistic', float('nan')):.3g}, p = {a['p_value']:.3g}, "
            f"{esc(EFFECT_NAMES.get(a.get('effect_name'), a.get('effect_name')))} = {a.get('effect_size', float('nan')):.3f}.</p>")
        if strong:
            alts = "".join(f"<li>{esc(x)}</li>" for x in a.get("alternatives") or [])
            parts.append("<div class='callout'>Batch and label are associated: a correction that does not know the "
                         "label removes part of the label signal (Nygaard et al. 2016). Alternatives, best first "
                         f"as measured (docs/preprocessing.md):<ul>{alts}</ul></div>")
        t = a.get("table") or {}
        cols = sorted({c for row in t.values() for c in row})
        if t and cols:
            parts.append(table(["batch", *cols], [[bn, *[row.get(c) for c in cols]] for bn, row in t.items()],
                               numeric=[False] + [True] * len(cols)))
    return Html("".join(parts))


# ------------------------------------------------------------------------------------------------ CV
def cv_body(cv: dict[str, Any] | None) -> Html:
    if not cv:
        return na("cross-validation was skipped (CV folds = 0); run with --cv 5 (genexflow train) or "
                  "--cv-folds 5 (genexflow run) to compare the deep model with the baselines on the same folds")
    m = cv["metric"]
    rows, classes = [], []
    for r in cv["rows"]:
        diff = "reference (best baseline)" if r["is_best_baseline"] else (
            Html(f"{r['diff']:+.3f} [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]") if r.get("diff") is not None else "—")
        rows.append([r["model"] + (" (deep model)" if r["is_deep"] else ""), r["n_folds"],
                     Html(f"{r['mean']:.3f} ± {r['sd']:.3f}"), Html(f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"), diff])
        classes.append("deep" if r["is_deep"] else "")
    parts = [f"<p><b>{esc(cv['verdict'])}</b></p>"]
    if cv.get("gate_estimate"):
        parts.append(f"<p>{esc(gate_estimate_sentence(cv['gate_estimate']))}</p>")
    parts += [
             f"<p>{esc(cv['split'])} CV, {cv['n_folds']} folds ({cv['n_repeats']} repeat"
             f"{'s' if cv['n_repeats'] != 1 else ''}); primary metric <code>{esc(m)}</code>.</p>",
             table(["model", "folds", f"{m} mean ± SD", "95% CI", "paired Δ vs best baseline [95% CI]"], rows,
                   numeric=[False, True, True, True, True], row_classes=classes),
             figure_plotly(figures.cv_points(cv, DEEP),
                           "Per-fold scores: each dot is one fold, the diamond the mean with its 95% CI; a model is "
                           "only better if its interval clears the others, fold for fold.", "cv-points")]
    other = cv.get("other_metrics") or {}
    if other:
        models = list(next(iter(other.values())))
        parts.append("<h3>Other metrics (mean ± SD over folds)</h3>" + table(
            ["model", *other], [[mod, *[Html(f"{other[k][mod][0]:.3f} ± {other[k][mod][1]:.3f}")
                                        if other[k][mod][0] is not None else "—" for k in other]] for mod in models],
            numeric=[False] + [True] * len(other)))
    return Html("".join(parts))


# ------------------------------------------------------------------------------------------------ curves
def curves_body(oof: dict[str, Any] | None) -> Html:
    if not oof:
        return na("needs out-of-fold predictions from cross-validation")
    if oof["task"] != "classification":
        return figure_plotly(figures.predicted_vs_true(oof, DEEP),
                             "Predicted vs true: points should hug the dotted diagonal; a flattened cloud means the "
                             "model shrinks towards the mean.", "pred-true")
    pos = oof["class_names"][1] if len(oof["class_names"]) == 2 else None
    what = f"positive class {pos}" if pos else "micro-average over one-vs-rest classes"
    return Html(
        figure_plotly(figures.roc_pr(oof, DEEP),
                      f"ROC and precision-recall ({what}), pooled out-of-fold predictions: curves towards the top-left "
                      "(ROC) and top-right (PR) are better; compare the deep model (thick) with the baselines.",
                      "roc-pr")
        + figure_plotly(figures.calibration(oof, DEEP),
                        "Calibration: points on the dotted diagonal mean a predicted 80% is right 80% of the time; "
                        "below it the model is over-confident.", "calibration"))


def confusion_body(oof: dict[str, Any] | None) -> Html:
    if not oof:
        return na("needs out-of-fold predictions from cross-validation")
    if oof["task"] != "classification":
        return na("regression task (no classes)")
    y = np.asarray(oof["y_true"]).astype(int)
    p = np.asarray(oof["outputs"][DEEP] if DEEP in oof["outputs"] else next(iter(oof["outputs"].values())),
                   dtype=np.float64)
    ok = np.isfinite(p).all(1)
    k = len(oof["class_names"])
    cm = np.bincount(y[ok] * k + p[ok].argmax(1), minlength=k * k).reshape(k, k)
    return figure_png(figures.confusion_matrix(cm, oof["class_names"]),
                      "Confusion matrix of the deep model, out-of-fold: the diagonal holds the correct calls; "
                      "look for the class that is most often mistaken for another.", "confusion matrix")


def learning_body(lc: dict[str, Any]) -> Html:
    h = {k: v for k, v in (lc.get("histories") or {}).items() if v}
    if not h:
        return na("no training history was recorded")
    best = lc.get("final_best_epoch")
    note = f" The final model kept epoch {best}." if best is not None and best >= 0 else (
        " No epoch beat the GLM start of the wide path, so the final model is that GLM." if best == -1 else "")
    return figure_plotly(figures.learning_curves(h),
                         "Learning curves: validation loss should fall and flatten; a validation loss that climbs "
                         "while training loss keeps falling is over-fitting (early stopping keeps the best epoch)."
                         + note, "learning-curves")


# ------------------------------------------------------------------------------------------------ biology
def _pathway_label(pid: str, name: str | None) -> str:
    return f"{name} ({pid})" if name else pid


def _pathway_cell(pid: str, name: str | None) -> Html:
    return Html(f"{link(pathway_url(pid), name or pid)}" + (f" <code>{esc(pid)}</code>" if name else ""))


def biology_body(bio: dict[str, Any] | None) -> Html:
    if not bio:
        return na("interpretability was skipped (--explain-samples 0)")
    parts = [f"<p>Attributions of the final model on {bio['n_explained']} training samples; genes ranked by mean "
             f"|{esc(bio['primary'])}|, pathways by {esc(bio.get('ranked_by'))}.</p>", "<div class='grid'><div>"]
    genes = bio.get("genes") or []
    if genes:
        parts.append(figure_png(figures.ranked_bars([g["gene"] for g in genes], [g["score"] or 0 for g in genes],
                                                    f"mean |{bio['primary']}|"),
                                "Top genes: the genes whose values move the prediction most; long bars at the top "
                                "are the model's strongest markers.", "top genes"))
    parts.append("</div><div>")
    pws = bio.get("pathways") or []
    if pws:
        parts.append(figure_png(figures.ranked_bars(
            [_pathway_label(p["id"], p.get("name")) for p in pws], [p["score"] or 0 for p in pws],
            f"pathway score ({bio.get('ranked_by')})", highlight=[(p.get("fdr") or 1) < 0.05 for p in pws]),
            "Top pathways: orange bars are also enriched among the top genes (FDR < 0.05); a pathway that is "
            "both high and orange is the model's best-supported biology.", "top pathways"))
    parts.append("</div></div>")
    if genes:
        parts.append("<h3>Top genes</h3>" + table(
            ["rank", "gene", f"mean |{bio['primary']}|", *sorted({m for g in genes for m in g["methods"]} - {bio["primary"]})],
            [[i + 1, link(gene_url(g["gene"]), g["gene"]), g["score"],
              *[g["methods"].get(m) for m in sorted({m for g2 in genes for m in g2["methods"]} - {bio["primary"]})]]
             for i, g in enumerate(genes)], numeric=[True, False, True, True, True, True]))
    if pws:
        bare_kegg = any(pathway_source(p["id"]) == "KEGG" and not p.get("name") for p in pws)
        parts.append("<h3>Top pathways</h3>" + ("<p class='na'>KEGG pathway names are not shipped (there is no offline "
                                                "source of them); each KEGG ID links to its page on kegg.jp.</p>"
                                                if bare_kegg else "") + table(
            ["pathway", "source", "genes", "score", "attention", "top genes in set", "enrichment FDR"],
            [[_pathway_cell(p["id"], p.get("name")), pathway_source(p["id"]), p["n_genes"], p["score"],
              p.get("attention"), p.get("overlap"), p.get("fdr")] for p in pws],
            numeric=[False, False, True, True, True, True, True]))
    enr = bio.get("enrichment") or []
    if enr:
        parts.append("<h3>Enrichment of the top genes (hypergeometric, Benjamini-Hochberg FDR)</h3>" + table(
            ["pathway", "overlap", "set size", "fold enrichment", "p", "FDR"],
            [[_pathway_cell(e["id"], e.get("name")), e["overlap"], e["set_size"], e["fold_enrichment"], e["p_value"],
              e["fdr"]] for e in enr[:10]], numeric=[False, True, True, True, True, True]))
    pairs = bio.get("crosstalk") or []
    parts.append("<h3>Strongest pathway-crosstalk pairs</h3>")
    if pairs:
        parts.append(table(["pathway A", "pathway B", "interaction strength"],
                           [[_pathway_cell(p["a"], p.get("a_name")), _pathway_cell(p["b"], p.get("b_name")),
                             p["strength"]] for p in pairs], numeric=[False, False, True]))
    else:
        parts.append(na("the model has no pathway-crosstalk term"))
    return Html("".join(parts))


# ------------------------------------------------------------------------------------------------ card
def card_body(card: dict[str, Any], meta: dict[str, Any]) -> Html:
    d = card.get("data") or {}
    ml = card.get("mlflow") or {}
    reg = card.get("registry")
    gate = card.get("gate")
    infra = card.get("infra")
    out = card.get("outcome")
    parts = ["<div class='grid'><div><h3>Data</h3>", kv([
        ("dataset", d.get("name")), ("shape (samples × genes)", " × ".join(map(str, d.get("shape") or []))),
        ("checksum (md5)", d.get("md5")), ("checksum source", {"dvc": "DVC (dvc add of the cohort folder)"}.get(
            d.get("md5_source"), d.get("md5_source"))), ("path", d.get("path")),
        ("ingested cohort (DVC md5)", d.get("ingested_md5")), ("ingested cohort folder", d.get("ingested_path")),
        ("ingest run", d.get("ingest_run"))], skip_none=True),
        "<h3>MLflow</h3>", kv([("run", ml.get("run_id") or "not tracked (--no-tracking)"),
                               ("experiment", ml.get("experiment")), ("tracking URI", ml.get("tracking_uri")),
                               ("report artifact", ml.get("report_uri"))]),
        "</div><div><h3>Registry</h3>"]
    if reg:
        aliases = ", ".join(reg.get("aliases") or []) or "none"
        parts.append(kv([("registered model", reg.get("name")), ("version", reg.get("version")),
                         ("aliases", aliases), ("serving artifact sha256", reg.get("sha256"))]))
    else:
        parts.append(na("not registered by this run (genexflow run registers; genexflow train does not)"))
    parts.append("<h3>Gate</h3>")
    if gate:
        ok = gate.get("decision") == "pass"
        pol = gate.get("policy") or {}
        parts.append(f"<p>{badge('passed' if ok else 'not passed', 'ok' if ok else 'bad')} {esc(gate.get('reason'))}</p>")
        parts.append(kv([("metric", pol.get("metric")), ("required margin over champion", pol.get("margin")),
                         ("required margin over best baseline", pol.get("baseline_margin")),
                         ("measured margin", gate.get("margin")), ("decided at", gate.get("time"))]))
    else:
        parts.append(na("no gate decision recorded for this run"))
    parts.append("<h3>Infra-validation (Triton)</h3>")
    if infra:
        ok = infra.get("decision") == "pass"
        parts.append(f"<p>{badge('passed' if ok else 'failed', 'ok' if ok else 'bad')} {esc(infra.get('reason'))}</p>")
        det = infra.get("details") or {}
        if isinstance(det, dict) and det:
            parts.append(kv([(k, v) for k, v in det.items() if not isinstance(v, dict | list)][:10]))
    else:
        parts.append(na("the model was not infra-validated (only genexflow run does, after a passed gate)"))
    if out:
        parts.append("<h3>Pipeline outcome</h3>" + kv([("state", out.get("state")), ("error", out.get("error")),
                                                       ("pipeline job", out.get("pipeline_job"))]))
    parts.append("</div></div>")
    params = card.get("parameters") or {}
    if params:
        parts.append("<details><summary>Training parameters (" + str(len(params)) + ")</summary>"
                     + table(["parameter", "value"], sorted(params.items())) + "</details>")
    m = card.get("model") or {}
    parts.append(kv([("task", meta.get("task")), ("label column", meta.get("label")),
                     ("classes", ", ".join(m.get("classes") or []) or "—"), ("input genes", m.get("n_input_genes")),
                     ("batch levels known to the model", ", ".join(m.get("batch_levels") or []) or "—")]))
    return Html("".join(parts))
