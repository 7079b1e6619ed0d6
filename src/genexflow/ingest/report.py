"""A self-contained HTML rendering of the ingestion report (no scripts, no network, one file).

Great Expectations data docs are written too (``datadocs/index.html``) but load their styles from CDNs;
this page is what to open on an offline machine or attach to a ticket.
"""

from __future__ import annotations

from html import escape
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f4f4f4}.ok{color:#11772d;font-weight:600}
.fail{color:#b00020;font-weight:600}.warn{color:#a05a00;font-weight:600}.info{color:#555}
code{background:#f4f4f4;padding:0 .2rem}.badge{display:inline-block;padding:.2rem .6rem;border-radius:.3rem;
color:#fff}.badge.ok{background:#11772d}.badge.fail{background:#b00020}li{margin:.2rem 0}
"""
_ROW_CAP = 200


def _e(v: Any) -> str:
    if isinstance(v, float):
        return escape(f"{v:.4g}")
    return escape("" if v is None else str(v))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _e(c)}</td>" for c in r) + "</tr>"
                   for r in rows[:_ROW_CAP])
    more = f"<p class='info'>{len(rows) - _ROW_CAP} more rows in the JSON / reasons.csv</p>" if len(rows) > _ROW_CAP else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


class _Raw(str):
    """Already-escaped HTML."""


def _status(check: dict) -> _Raw:
    if check["success"]:
        return _Raw("<span class='ok'>pass</span>")
    cls = {"critical": "fail", "warning": "warn"}.get(check["severity"], "info")
    return _Raw(f"<span class='{cls}'>{escape(check['severity'])}</span>")


def render_html(report: dict) -> str:
    """Render the report dict written by :func:`genexflow.ingest.ingest` as one HTML page."""
    ok = report.get("success", False)
    mapping = report.get("mapping", {})
    validated = report.get("validated", {})
    quarantine = report.get("quarantine", {})
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>genexflow ingest {_e(report.get('name'))}</title><style>{_CSS}</style></head><body>",
        f"<h1>Ingestion report: {_e(report.get('name'))} "
        f"<span class='badge {'ok' if ok else 'fail'}'>{'PASSED' if ok else 'FAILED'}</span></h1>",
        _table(["", ""], [
            ["run id", report.get("run_id")],
            ["value type", report.get("value_type")],
            ["input shape (samples x features)", " x ".join(map(str, report.get("shape_in", [])))],
            ["validated shape", f"{validated.get('n_samples', '-')} x {validated.get('n_genes', '-')}"],
            ["gene ID type", mapping.get("id_type")],
            ["mapping rate", "n/a (probes kept)" if mapping.get("mapping_rate") is None
             else f"{mapping['mapping_rate']:.1%}"],
            ["duplicate policy", report.get("duplicate_policy")],
            ["quarantined", ", ".join(f"{k}: {v}" for k, v in quarantine.get("counts", {}).items()) or "nothing"],
            ["quarantine folder", quarantine.get("dir") or "-"],
            ["validated cohort", validated.get("path", "-")],
            ["DVC md5", validated.get("dvc_md5", "-")],
            ["GX data docs", report.get("data_docs") or "-"],
            ["time (s)", report.get("timing_s")],
        ]),
    ]
    if report.get("critical"):
        parts.append("<h2 class='fail'>Critical failures</h2><ul>"
                     + "".join(f"<li>{_e(m)}</li>" for m in report["critical"]) + "</ul>")
    if report.get("warnings"):
        parts.append("<h2 class='warn'>Warnings</h2><ul>"
                     + "".join(f"<li>{_e(m)}</li>" for m in report["warnings"]) + "</ul>")
    checks = report.get("checks", [])
    parts.append(f"<h2>Expectations ({sum(c['success'] for c in checks)} of {len(checks)} passed)</h2>")
    parts.append(_table(
        ["suite", "expectation", "what it checks", "result", "failing", "examples"],
        [[c["suite"], c["name"], c["description"], _status(c),
          f"{c['unexpected_count']}" + (f" / {c['element_count']}" if c.get("element_count") else ""),
          ", ".join(f"{i}={v}" for i, v in c.get("unexpected", [])[:5])
          or ("" if c.get("observed_value") is None else f"observed {c['observed_value']}")]
         for c in checks]))
    methods = mapping.get("methods", {})
    if methods:
        parts.append("<h2>Gene IDs</h2>")
        parts.append(_table(["how mapped", "features"], [[k, v] for k, v in methods.items()]))
        if mapping.get("type_counts"):
            parts.append(_table(["detected type", "features"], [[k, v] for k, v in mapping["type_counts"].items()]))
        if mapping.get("excel_repaired"):
            parts.append("<p>Excel-mangled symbols repaired:</p>"
                         + _table(["input", "symbol"], [[k, v] for k, v in mapping["excel_repaired"].items()]))
    parts.append("</body></html>")
    return "\n".join(parts)
