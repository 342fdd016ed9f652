"""The self-contained HTML page both the review report and the endpoint page are built on.

Pages open from disk and load nothing: plots are embedded as ``data:`` URIs,
and a Content-Security-Policy allows only the one inline script (by hash) and
inline styles. Every text from files or sample sheets goes through
:func:`escape`.
"""

from __future__ import annotations

import base64
import hashlib
import html
from typing import Any

import pandas as pd

__all__ = ["escape", "html_page", "img_tag"]

_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var asc = th.dataset.dir !== 'asc';
    th.dataset.dir = asc ? 'asc' : 'desc';
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
""".strip()
_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eee;cursor:pointer}
.flag{background:#fff3cd}.error{background:#f8d7da}.approved{color:#146c2e;font-weight:bold}
.rejected{color:#a00;font-weight:bold}.plots img{margin:4px;border:1px solid #ddd}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}.void{color:#888;text-decoration:line-through}
""".strip()


def escape(value: Any) -> str:
    """Escape anything for HTML text and attributes; NA and NaN become ''."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return html.escape(str(value), quote=True)


def html_page(title: str, body: str) -> str:
    """A whole self-contained HTML page: inline CSS and one script, a CSP that loads nothing else."""
    digest = base64.b64encode(hashlib.sha256(_SORT_JS.encode()).digest()).decode()
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n{body}\n"
            f"<script>{_SORT_JS}</script></body></html>\n")


def img_tag(png: bytes, alt: str, cls: str = "") -> str:
    """An ``<img>`` carrying ``png`` as a ``data:`` URI (the pages open from disk and fetch nothing)."""
    data = base64.b64encode(png).decode()
    return f'<img class="{cls}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'
