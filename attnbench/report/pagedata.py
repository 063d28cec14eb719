"""What the page's script reads: JSON that is safe inside a ``<script>`` element, the case table packed, and
chart markup carried gzipped to be drawn when its family of cases is opened.

Why: a 10,000-record page rendered as HTML is a quarter of a million elements
that the browser parses, styles and lays out before anything answers (4-7 s
to open, seconds to sort). The case table's rows travel instead as one JSON
blob of interned strings that the script sorts and filters as data, showing a
page of rows at a time; the server renders the first page, so the table has
content without the script. Families of charts beyond a byte budget per board
travel as one gzipped blob that the browser inflates (``DecompressionStream``)
when one of them is opened, so the charts on a page are bounded by what was
opened, not by the number of cases.

Nothing here is markup from a results file: every string goes into JSON, and
``<``, ``>`` and ``&`` are written as ``\\u`` escapes, so no text can close the
script element or open a comment; the script puts strings into the page as
text nodes. The chart markup is charts.py's, already escaped.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
from collections.abc import Iterable, Sequence

from markupsafe import Markup

PAGE_ROWS = 200
"""Rows of the case table shown at a time (and rendered by the server)."""
INLINE_CHART_BYTES = 250_000
"""Chart markup per board drawn into the page as it is; families beyond it are drawn when opened."""
_UNSAFE = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def script_json(value: object) -> Markup:
    """``value`` as compact JSON that may stand inside a ``<script type="application/json">`` element."""
    return Markup(json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).translate(_UNSAFE))


def pack(rows: Iterable[Sequence[str | float | None]]) -> dict[str, list]:
    """Rows of fields as ``{"strings": [...], "rows": [[...], ...]}``: each string field becomes the index of
    its one copy in ``strings``; numbers stay numbers, and a number that is not finite (or None) is null."""
    index: dict[str, int] = {}
    packed = []
    for row in rows:
        out: list[int | float | None] = []
        for v in row:
            if isinstance(v, str):
                out.append(index.setdefault(v, len(index)))
            else:
                out.append(v if v is not None and math.isfinite(v) else None)
        packed.append(out)
    return {"strings": list(index), "rows": packed}


class LazyCharts:
    """Chart markup kept out of the page's elements until its family is opened."""

    def __init__(self) -> None:
        self._families: list[list[str]] = []

    def add(self, charts: list[Markup]) -> int:
        """Keep one family's charts; return the number the page's ``data-lazy`` names them by."""
        self._families.append([str(c) for c in charts])
        return len(self._families) - 1

    def blob(self) -> Markup | None:
        """The families as gzipped JSON in base64, inside JSON; None when none was kept."""
        if not self._families:
            return None
        raw = json.dumps(self._families, ensure_ascii=False, separators=(",", ":")).encode()
        return script_json({"gzip": base64.b64encode(gzip.compress(raw, mtime=0)).decode("ascii")})
