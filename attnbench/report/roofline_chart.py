"""A board's roofline chart: achieved TFLOP/s against arithmetic intensity, under the hardware's roofs.

Log-log, one marker per record (implementations by the page's colours and
markers; hollow: incorrect or implausible), with the roofs of the run's
``ceilings``: for each dtype on the board, the compute roof (its peak TFLOP/s)
and the bandwidth slope (intensity x peak GB/s) up to where they meet. The
measured ceilings draw solid, the published table's dashed. A board whose
records carry no ``arithmetic_intensity`` gets no chart; one whose runs carry
no ceilings gets the points alone.

``ceilings`` is ``run.ceilings`` as attnbench.ceilings and hardware write it:
``measured`` rates are ``{"best", "median", "spread"}`` (the best is the
ceiling), ``published`` ones plain numbers; either form is read in either
place. It is read defensively: the results schema leaves it free, so any value
that is not a positive finite number is taken as unknown. Every string
reaching the SVG passes through ``markupsafe.escape``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from attnbench.report.charts import (
    BOTTOM,
    LEFT,
    LEGEND_ROW,
    LEGEND_W,
    PLOT_H,
    PLOT_W,
    TOP,
    LogAxis,
    Palette,
    Series,
    frame,
    legend,
    log_ticks,
    marker_svg,
    merge_marks,
    num,
    y_grid,
)
from attnbench.report.format import case_label
from attnbench.report.runs import Entry, Run

PLOTTED = ("ok", "incorrect", "implausible")
"""Statuses whose records were timed; those but ``ok`` are drawn hollow."""
KINDS = (("measured", ""), ("published", " published"))
"""The two sources of ceilings, and the CSS class each roof gets (published: dashed)."""
RIDGE_REACH = 100.0
"""A roof's ridge point widens the x axis only within this factor of the records' intensities."""
LABEL_GAP = 11
"""Pixels between two roof labels: measured ones go below their roof, published ones above, pushed apart."""


@dataclass
class Roof:
    """One source's ceilings for one dtype; either figure may be unknown."""

    kind: str
    dtype: str
    tflops: float | None
    gbps: float | None

    @property
    def ridge(self) -> float | None:
        """The intensity (FLOP/byte) where the bandwidth slope meets the compute roof."""
        return self.tflops * 1000 / self.gbps if self.tflops and self.gbps else None


def _positive(value: Any) -> float | None:
    """A positive finite number, or None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return float(value) if ok else None


def _rate(value: Any) -> float | None:
    """A ceiling: a number, or the best of a measured ``{"best": ...}``."""
    return _positive(value.get("best") if isinstance(value, dict) else value)


def ceilings_of(runs: list[Run]) -> dict[str, Any]:
    """The newest run's ``ceilings`` among those that have them; empty when none does."""
    for run in sorted(runs, key=lambda r: r.started, reverse=True):
        if isinstance(run.info.get("ceilings"), dict):
            return run.info["ceilings"]
    return {}


def roofs(ceilings: dict[str, Any], dtypes: list[str]) -> list[Roof]:
    """The roofs of ``dtypes`` that the ceilings know something of, measured first; dtypes with the same
    ceilings share one roof (``dtype`` names them all)."""
    out = []
    for kind, _ in KINDS:
        source = ceilings.get(kind)
        if not isinstance(source, dict):
            continue
        peaks = source.get("tflops") if isinstance(source.get("tflops"), dict) else {}
        gbps = _rate(source.get("gbps"))
        shared: dict[float | None, list[str]] = {}
        for dtype in dtypes:
            shared.setdefault(_rate(peaks.get(dtype)), []).append(dtype)
        out += [Roof(kind, ", ".join(names), peak, gbps) for peak, names in shared.items() if peak or gbps]
    return out


def corners(r: Roof, lo: float, hi: float) -> list[tuple[float, float]]:
    """The roof's polyline between intensities ``lo`` and ``hi``: the slope up to the ridge, then flat."""
    if not r.gbps:
        return [(lo, r.tflops), (hi, r.tflops)]
    ridge = r.ridge or math.inf
    if ridge <= lo:
        return [(lo, r.tflops), (hi, r.tflops)]
    if ridge >= hi:
        return [(lo, lo * r.gbps / 1000), (hi, hi * r.gbps / 1000)]
    return [(lo, lo * r.gbps / 1000), (ridge, r.tflops), (hi, r.tflops)]


def _figure(e: Entry, key: str) -> float | None:
    return _positive(e.record.metrics.get(key))


def _tip(e: Entry, intensity: float, tflops: float) -> str:
    r = e.record
    tip = f"{r.impl} · {case_label(r.case)}: {tflops:.3g} TFLOP/s at {intensity:.3g} FLOP/B"
    fraction = _figure(e, "roofline_fraction")
    if fraction is not None:
        tip += f", {fraction:.0%} of the roof"
    if r.metrics.get("bound") in ("compute", "memory"):
        tip += f", {r.metrics['bound']}-bound"
    return tip + ("" if r.status == "ok" else f" ✗ {r.status}: {r.reason}")


def roofline_chart(entries: list[Entry], ceilings: dict[str, Any], palette: Palette) -> Markup | None:
    """The chart of the records that carry an arithmetic intensity and TFLOP/s; None when none does."""
    points: dict[str, list[tuple[float, float, Entry]]] = {}
    for e in sorted(entries, key=lambda e: e.record.impl):
        intensity, tflops = _figure(e, "arithmetic_intensity"), _figure(e, "tflops")
        if e.record.status in PLOTTED and intensity and tflops:
            points.setdefault(e.record.impl, []).append((intensity, tflops, e))
    if not points:
        return None
    drawn = [p for series in points.values() for p in series]
    dtypes = sorted({str(e.record.case.get("dtype")) for _, _, e in drawn})
    shown = roofs(ceilings, dtypes)
    xs = [x for x, _, _ in drawn]
    reach = (min(xs) / RIDGE_REACH, max(xs) * RIDGE_REACH)
    xs += [r.ridge for r in shown if r.ridge and reach[0] <= r.ridge <= reach[1]]
    x_axis = LogAxis(xs, PLOT_W, flip=False)
    ys = [y for _, y, _ in drawn] + [y for r in shown for _, y in corners(r, x_axis.lo, x_axis.hi)]
    y_axis = LogAxis(ys, PLOT_H, flip=True)
    kinds = [(kind, css) for kind, css in KINDS if any(r.kind == kind for r in shown)]
    height = max(TOP + PLOT_H + BOTTOM, TOP + LEGEND_ROW * (len(points) + len(kinds) + 1))
    body = [f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}"/>']
    body += y_grid(y_axis, lambda v: f"{v:g}", PLOT_W, binary=False)
    for t in log_ticks(x_axis.lo, x_axis.hi):
        body.append(f'<text class="tick" x="{num(LEFT + x_axis(t))}" y="{TOP + PLOT_H + 16}" '
                    f'text-anchor="middle">{t:g}</text>')
    body.append(f'<text class="axis" x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H + BOTTOM - 6}" text-anchor="middle">'
                'arithmetic intensity (FLOP/byte)</text>')
    body.append(f'<text class="axis" transform="rotate(-90)" x="{-(TOP + PLOT_H / 2)}" y="14" text-anchor="middle">'
                'achieved TFLOP/s</text>')
    body += _roofs(shown, x_axis, y_axis)
    for impl, series in points.items():
        color, shape = palette.color(impl), palette.marker(impl)
        marks = merge_marks([(LEFT + x_axis(x), TOP + y_axis(y), _tip(e, x, y), e.record.status != "ok")
                             for x, y, e in series])
        body += [marker_svg(shape, x, y, color, hollow, tip) for x, y, tip, hollow in marks]
    legend_x = LEFT + PLOT_W + 16
    body += legend([Series(impl) for impl in points], palette, legend_x)
    for i, (kind, css) in enumerate(kinds):
        y = TOP + LEGEND_ROW // 2 + LEGEND_ROW * (len(points) + i)
        body.append(f'<line class="roof{css}" x1="{num(legend_x - 6)}" x2="{num(legend_x + 6)}" y1="{num(y)}" '
                    f'y2="{num(y)}"/><text class="legend" x="{num(legend_x + 10)}" y="{num(y + 4)}">{kind} roof</text>')
    return frame(LEFT + PLOT_W + LEGEND_W, height, "Roofline", body)


def _roofs(shown: list[Roof], x_axis: LogAxis, y_axis: LogAxis) -> list[str]:
    """Each roof as one polyline: the bandwidth slope from the left edge up to the ridge, then flat to the right."""
    out = []
    for r in shown:
        css = dict(KINDS)[r.kind]
        path = " ".join(f"{num(LEFT + x_axis(x))},{num(TOP + y_axis(y))}" for x, y in corners(r, x_axis.lo, x_axis.hi))
        said = ", ".join(([f"{r.tflops:g} TFLOP/s"] if r.tflops else []) + ([f"{r.gbps:g} GB/s"] if r.gbps else []))
        out.append(f'<polyline class="roof{css}" points="{path}"><title>{escape(r.kind)} roof, '
                   f'{escape(r.dtype)}: {escape(said)}</title></polyline>')
    for kind, css in KINDS:
        below = not css
        labels = sorted(((TOP + y_axis(r.tflops), f"{r.dtype}{css} {r.tflops:g}") for r in shown
                         if r.kind == kind and r.tflops), reverse=not below)
        last = None
        for y, text in labels:
            y = y + LABEL_GAP if below else y - 4
            if last is not None:
                y = max(y, last + LABEL_GAP) if below else min(y, last - LABEL_GAP)
            last = y
            out.append(f'<text class="roof-label" x="{num(LEFT + PLOT_W - 4)}" y="{num(y)}" text-anchor="end">'
                       f'{escape(text)}</text>')
    return out
