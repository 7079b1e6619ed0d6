"""The end-of-run summary that ``genexflow train`` and ``genexflow run`` print: read from the run report's
embedded data, so the terminal and the page can never disagree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def _num(v: Any, fmt: str = ".3f") -> str:
    return "—" if v is None else format(v, fmt)


def cv_table(cv: dict[str, Any]) -> Table:
    """Deep model and each baseline: mean ± SD of the primary metric over folds, 95% CI, paired Δ to the best
    baseline with its 95% CI."""
    m = cv["metric"]
    t = Table(title=f"{cv['split']} cross-validation, {cv['n_folds']} folds: {m} (bold: the deep model)",
              title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, just in (("model", "left"), ("folds", "right"), ("mean ± SD", "right"), ("95% CI", "right"),
                      ("Δ vs best [95% CI]", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    for r in cv["rows"]:
        diff = ("best baseline" if r["is_best_baseline"] else
                f"{r['diff']:+.3f} [{r['diff_low']:+.2f}, {r['diff_high']:+.2f}]" if r.get("diff") is not None else "—")
        name = f"[bold]{r['model']}[/]" if r["is_deep"] else r["model"]
        t.add_row(name, str(r["n_folds"]), f"{_num(r['mean'])} ± {_num(r['sd'])}",
                  f"{_num(r['ci_low'])}–{_num(r['ci_high'])}", diff)
    return t


def qc_lines(cohort: dict[str, Any]) -> list[str]:
    """Value type, what ingest quarantined and what preprocessing imputed, in plain sentences."""
    vt = cohort.get("value_type")
    src = cohort.get("value_type_source")
    lines = [f"value type: {vt}" + (f" ({src})" if src else "")]
    q = cohort.get("quarantine")
    if q is None:
        lines.append("quarantine: not screened (the cohort did not go through ingest)")
    elif sum((q.get("counts") or {}).values()):
        counts = ", ".join(f"{v} {k}(s)" for k, v in q["counts"].items())
        lines.append(f"quarantined: {counts} ({q.get('n_reasons')} reasons) in {q.get('dir')}")
    else:
        lines.append("quarantined: nothing")
    imp = cohort.get("imputed") or {}
    n = int(imp.get("n_cells") or 0)
    if n:
        where = ", ".join(f"{k} ({v})" for k, v in list((imp.get("samples") or {}).items())[:3])
        lines.append(f"imputed: {n} missing value(s) by {imp.get('method') or 'the preprocessing'}"
                     + (f"; samples: {where}" if where else ""))
    else:
        lines.append("imputed: nothing (no missing values)")
    return lines


def print_run_summary(console: Console, report: str | Path) -> None:
    """Print the CV table, QC facts, the confounding warning, the gate's decision and the report path."""
    # lazy: the library pulls torch/sklearn; `genexflow --help` imports every command module
    from genexflow.report import gate_sentence, read_page_data
    from genexflow.report.render import gate_estimate_sentence

    data = read_page_data(report)
    if data.get("cv"):
        console.print(cv_table(data["cv"]))
        console.print(data["cv"]["verdict"], markup=False, highlight=False)
        if data["cv"].get("gate_estimate"):
            console.print(gate_estimate_sentence(data["cv"]["gate_estimate"]), markup=False, highlight=False)
    else:
        console.print("cross-validation: skipped (0 folds), no comparison with the baselines on the same folds",
                      markup=False, highlight=False)
    for line in qc_lines(data["cohort"]):
        console.print(line, markup=False, highlight=False)
    assoc = (data.get("batch") or {}).get("association") or {}
    if assoc.get("confounded") and assoc.get("message"):
        console.print(f"[bold red]{assoc['message']}[/]", highlight=False)
    bio = data.get("biology") or {}
    if bio.get("pathways"):
        top = [f"{p['name']} ({p['id']})" if p.get("name") else p["id"] for p in bio["pathways"][:5]]
        console.print("top pathways: " + "; ".join(top), markup=False, highlight=False)
    console.print("gate: " + gate_sentence(data.get("card") or {}), markup=False, highlight=False)
    console.print(f"[bold]run report[/] {Path(report).resolve()}", highlight=False, soft_wrap=True)
