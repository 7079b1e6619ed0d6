"""The page shell every genexflow report shares: one self-contained HTML file (styles, images, plotly.js
and the report's own data inline; nothing fetched from the network), a table of contents, sections with
stable ids, figures with a one-line caption, and the data the page was rendered from embedded as JSON so
a later pipeline step can update a section and render the page again.
"""

from __future__ import annotations

import base64
import functools
import gzip
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import plotly.io as pio
from plotly.offline import get_plotlyjs

from genexflow.errors import InputError

#: Okabe & Ito (2008) colour-blind-safe palette (black moved last: it reads as "missing" next to colours).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
DATA_ID = "genexflow-report-data"
#: Reports above this size are refused (the issue's budget; plotly.js alone is ~3.6 MB).
MAX_BYTES = 5 * 1024 * 1024

CSS = """
:root{--fg:#1d2330;--muted:#5b6474;--line:#dde2ea;--bg:#f6f8fb;--ok:#0b7a3b;--bad:#b3261e;--warn:#8a5a00;
--accent:#0072B2}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header{background:#14213d;color:#fff;padding:1.2rem 2rem}header h1{margin:0;font-size:1.45rem;font-weight:600}
header .sub{color:#c9d3e6;font-size:.9rem;margin-top:.2rem}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:.45rem 2rem;
font-size:.85rem;white-space:nowrap;overflow-x:auto}nav a{color:var(--accent);text-decoration:none;margin-right:1.1rem}
main{max-width:1240px;margin:0 auto;padding:1rem 2rem 3rem}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:1rem 1.4rem;margin:1.1rem 0}
section h2{font-size:1.15rem;margin:.1rem 0 .6rem}h3{font-size:1rem;margin:1rem 0 .4rem}
p.lead{margin:.2rem 0 .8rem;color:var(--muted)}
table{border-collapse:collapse;font-size:.85rem;margin:.4rem 0 .8rem}
td,th{border-bottom:1px solid var(--line);padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f0f3f8;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.deep td{font-weight:600}
figure{margin:.6rem 0 1rem}figcaption{color:var(--muted);font-size:.85rem;margin-top:.25rem}
figcaption b{color:var(--fg)}
img.fig{max-width:100%;height:auto;border:0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:1rem}
.na{color:var(--muted);font-style:italic}
.badge{display:inline-block;padding:.1rem .55rem;border-radius:1rem;font-size:.8rem;font-weight:600;color:#fff}
.badge.ok{background:var(--ok)}.badge.bad{background:var(--bad)}.badge.warn{background:var(--warn)}
.badge.info{background:#5b6474}
.callout{border-left:4px solid var(--warn);background:#fff8e6;padding:.5rem .8rem;margin:.6rem 0}
.callout.ok{border-color:var(--ok);background:#eef8f1}.callout.bad{border-color:var(--bad);background:#fdeeee}
ul.facts{margin:.2rem 0 .6rem;padding-left:1.2rem}code{background:#f0f3f8;padding:0 .25rem;border-radius:3px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:.3rem 0 .8rem;font-size:.9rem}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;word-break:break-all}
footer{color:var(--muted);font-size:.8rem;text-align:center;padding:1rem}
"""


class Html(str):
    """Markup that is already escaped (kept as is by :func:`cell` and :func:`table`)."""


def esc(value: Any) -> Html:
    """Escape a value for HTML; floats with 4 significant digits, None/NaN as an em dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return Html("—")
    if isinstance(value, Html):
        return value
    if isinstance(value, float):
        return Html(escape(f"{value:.4g}"))
    return Html(escape(str(value)))


def na(message: str) -> Html:
    """The standard 'not available for this run' line (and why)."""
    return Html(f"<p class='na'>Not available for this run: {escape(message)}</p>")


def badge(text: str, kind: str = "info") -> Html:
    return Html(f"<span class='badge {kind}'>{escape(text)}</span>")


def link(url: str | None, text: Any) -> Html:
    if not url:
        return esc(text)
    return Html(f"<a href='{escape(url, quote=True)}' target='_blank' rel='noopener'>{esc(text)}</a>")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[bool] | None = None,
          row_classes: Sequence[str] | None = None) -> Html:
    """A plain HTML table; cells are escaped unless they are :class:`Html`."""
    rows = [list(r) for r in rows]
    numeric = list(numeric) if numeric is not None else [False] * len(headers)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        cls = f" class='{row_classes[i]}'" if row_classes and row_classes[i] else ""
        cells = "".join(f"<td class='num'>{esc(c)}</td>" if j < len(numeric) and numeric[j] else f"<td>{esc(c)}</td>"
                        for j, c in enumerate(r))
        body.append(f"<tr{cls}>{cells}</tr>")
    return Html(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def kv(pairs: Iterable[tuple[str, Any]], skip_none: bool = False) -> Html:
    """A definition list of label/value pairs (``skip_none``: leave out the pairs without a value)."""
    return Html("<dl class='kv'>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs
                                            if not (skip_none and v is None)) + "</dl>")


# ------------------------------------------------------------------------------------------------ figures
def figure_png(fig: Any, caption: str, alt: str, dpi: int = 96) -> Html:
    """A matplotlib figure as an inline PNG with its caption (the figure is closed)."""
    # lazy: matplotlib is only needed for plots
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return Html(f"<figure><img class='fig' alt='{escape(alt, quote=True)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{_caption(caption)}</figcaption></figure>")


def figure_plotly(fig: Any, caption: str, div_id: str, height: int | None = None) -> Html:
    """A plotly figure as an empty div plus its JSON spec; the page's loader draws it once plotly.js is ready
    (plotly.js itself is inlined once per page by :func:`render_page`)."""
    fig.update_layout(template="plotly_white", margin={"l": 55, "r": 20, "t": 45, "b": 45},
                      font={"family": "system-ui, sans-serif", "size": 12}, colorway=list(OKABE_ITO),
                      **({"height": height} if height else {}))
    h = int(fig.layout.height or 420)
    spec = pio.to_json(fig, validate=False, pretty=False).replace("</", "<\\/")
    return Html(f"<figure class='plotly'><div class='gx-plot' id='{escape(div_id, quote=True)}' style='min-height:{h}px'>"
                f"</div><script type='application/json' data-gx-plot='{escape(div_id, quote=True)}'>{spec}</script>"
                f"<figcaption>{_caption(caption)}</figcaption></figure>")


def _caption(text: str) -> str:
    head, _, rest = text.partition(":")
    return f"<b>{escape(head)}:</b>{escape(rest)}" if rest else escape(text)


def palette(levels: Sequence[Any]) -> dict[str, str]:
    """Okabe-Ito colours for up to 8 levels, viridis beyond (both colour-blind safe)."""
    names = [str(v) for v in levels]
    if len(names) <= len(OKABE_ITO):
        return dict(zip(names, OKABE_ITO, strict=False))
    # lazy: matplotlib is only needed for plots
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps["viridis"]
    return {n: to_hex(cmap(i / max(len(names) - 1, 1))) for i, n in enumerate(names)}


# ------------------------------------------------------------------------------------------------ page
@dataclass
class Section:
    """One section of a report: ``id`` is its anchor (and what the browser test looks for)."""

    id: str
    title: str
    body: str
    lead: str = ""


@dataclass
class Page:
    title: str
    subtitle: str
    sections: list[Section] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    footer: str = ""


def render_page(page: Page) -> str:
    """The whole HTML document; plotly.js is inlined once when a section holds a plotly figure."""
    body = "".join(
        f"<section id='{escape(s.id, quote=True)}'><h2>{escape(s.title)}</h2>"
        + (f"<p class='lead'>{escape(s.lead)}</p>" if s.lead else "") + s.body + "</section>"
        for s in page.sections)
    plotly_js = _plotly_loader() if "class='plotly'" in body else ""
    nav = "".join(f"<a href='#{escape(s.id, quote=True)}'>{escape(s.title)}</a>" for s in page.sections)
    data = json.dumps(clean_json(page.data), separators=(",", ":"), allow_nan=False)
    data = data.replace("</", "<\\/")  # keep "</script>" inside strings from closing the tag
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(page.title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{escape(page.title)}</h1><div class='sub'>{escape(page.subtitle)}</div></header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        f"<footer>{escape(page.footer)}</footer>"
        f"<script type='application/json' id='{DATA_ID}'>{data}</script>{plotly_js}</body></html>"
    )


#: Draws every figure once the inlined, gzipped plotly.js is unpacked (DecompressionStream: every browser
#: since 2023); sets ``body[data-plots]`` to ``ready`` or ``failed`` so tests and people can tell.
_LOADER = """
(async function () {
  const specs = Array.from(document.querySelectorAll('script[data-gx-plot]'));
  try {
    const b64 = document.getElementById('gx-plotly-gz').textContent.trim();
    const bin = atob(b64); const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    (0, eval)(await new Response(stream).text());
    const config = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ['lasso2d', 'select2d']};
    for (const s of specs) {
      const fig = JSON.parse(s.textContent);
      await Plotly.newPlot(s.dataset.gxPlot, fig.data, fig.layout, config);
    }
    document.body.dataset.plots = 'ready';
  } catch (err) {
    document.body.dataset.plots = 'failed';
    for (const s of specs) {
      document.getElementById(s.dataset.gxPlot).textContent =
        'Interactive figure unavailable in this browser (' + err + '); the data is embedded in the page.';
    }
  }
})();
"""


@functools.lru_cache(maxsize=1)
def _plotly_gz_b64() -> str:
    # plotly.js is 4.6 MB; gzipped and base64-encoded it is 1.8 MB, which keeps a report under 5 MB
    return base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), 9, mtime=0)).decode("ascii")


def _plotly_loader() -> str:
    return (f"<script type='application/octet-stream' id='gx-plotly-gz'>{_plotly_gz_b64()}</script>"
            f"<script>{_LOADER}</script>")


def clean_json(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, non-finite floats to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def read_page_data(path: str | Path) -> dict[str, Any]:
    """The data a report was rendered from (the embedded JSON), for re-rendering it."""
    text = Path(path).read_text(encoding="utf-8")
    m = re.search(rf"<script type='application/json' id='{DATA_ID}'>(.*?)</script>", text, re.S)
    if m is None:
        raise InputError(f"{path}: not a genexflow report (no embedded report data)")
    return json.loads(m.group(1).replace("<\\/", "</"))


def write_page(html: str, path: str | Path) -> Path:
    """Write atomically (temporary file in the same folder, then rename); refuse pages over the budget."""
    path = Path(path)
    raw = html.encode("utf-8")
    if len(raw) > MAX_BYTES:
        raise InputError(f"{path}: the report would be {len(raw) / 1e6:.1f} MB, over the {MAX_BYTES / 1e6:.0f} MB "
                         "budget; this is a bug in the report (please report it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a report is for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
