"""The report's charts, drawn in Python as inline SVG.

Why inline SVG from Python rather than a JavaScript charting library: the page
must open from the filesystem with no network, so a library would have to ship
inside attnbench (hundreds of KB, a licence and a version to track) and its
failures would only show in a browser. SVG written here costs no dependency,
needs no script to appear, is a few hundred bytes per chart, prints, and can be
asserted on as text in tests. Hover works natively: every point carries a
``<title>`` with its exact value, which browsers show as a tooltip.

Every string that reaches the SVG passes through ``markupsafe.escape`` here,
plugin-provided names and reasons included; only the assembled SVG is marked
safe for the template.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from markupsafe import Markup, escape

from attnbench.report.fastp import curve
from attnbench.report.format import batch_keys, case_label, format_bytes, format_time, is_packed, seq_text
from attnbench.report.rank import Standing
from attnbench.report.runs import Entry
from attnbench.report.speedup import noise
from attnbench.results import MEASURED

PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#7f7f7f", "#bcbd22", "#000000", "#9467bd")
"""Okabe-Ito's colour-blind-safe colours, then a few more; markers change when colours repeat."""
MARKERS = ("circle", "square", "triangle", "diamond")

PLOT_W, PLOT_H = 360, 200
LEFT, TOP, BOTTOM = 78, 28, 40
LEGEND_W = 170
POINT_R = 3.5
MAX_X_TICKS = 8
MAX_Y_TICKS = 7
LEGEND_ROW = 16
AXIS_PAD = 0.06
"""Fraction of the log range added at each end of an axis, so that points do not sit on the frame."""
STRIP_SLOT = 44
"""Horizontal room per implementation in the error chart."""
STRIP_SPREAD = (5, 2.5)
"""The error chart's points go in this many sub-columns, this many pixels apart, so that equal errors stay hoverable."""
STRIP_LABEL_ROOM = 80
"""Room under the error chart for slanted implementation names."""
DENSE = 150
"""A series with more points than this has those that fall on the same spot (MERGE_CELL pixels) drawn as one
marker whose tooltip counts them: a board of thousands of records draws what can be seen, not an element per
record, and the page stays small and quick to open. Sparser series keep one marker, and one tooltip, per point."""
MERGE_CELL = 2.0
TIPS_PER_MARK = 3
"""Tooltips a merged marker quotes before "and N more"."""


@dataclass
class Point:
    x: float
    y: float
    tip: str
    hollow: bool = False
    """Drawn as an outline: a measurement that failed the correctness rule."""


@dataclass
class Series:
    name: str
    points: list[Point] = field(default_factory=list)
    stops: list[Point] = field(default_factory=list)
    """Where the series ran out of memory or was skipped: marked along the top with a dashed frontier."""


class Palette:
    """A colour and marker per implementation, the same in every chart of the page."""

    def __init__(self, names: Iterable[str]) -> None:
        self._index = {name: i for i, name in enumerate(sorted(set(names)))}

    def color(self, name: str) -> str:
        return PALETTE[self._index.get(name, 0) % len(PALETTE)]

    def marker(self, name: str) -> str:
        return MARKERS[self._index.get(name, 0) // len(PALETTE) % len(MARKERS)]


def num(v: float) -> str:
    return f"{v:.1f}"


def marker_svg(shape: str, x: float, y: float, color: str, hollow: bool, tip: str) -> str:
    paint = f'fill="#fff" stroke="{color}" stroke-width="1.5"' if hollow else f'fill="{color}"'
    title = f"<title>{escape(tip)}</title>"
    r = POINT_R
    if shape == "circle":
        return f'<circle cx="{num(x)}" cy="{num(y)}" r="{r}" {paint}>{title}</circle>'
    if shape == "square":
        return f'<rect x="{num(x - r)}" y="{num(y - r)}" width="{2 * r}" height="{2 * r}" {paint}>{title}</rect>'
    corners = ((0, -r - 1), (r + 1, r), (-r - 1, r)) if shape == "triangle" else ((0, -r - 1), (r + 1, 0), (0, r + 1), (-r - 1, 0))
    pts = " ".join(f"{num(x + dx)},{num(y + dy)}" for dx, dy in corners)
    return f'<polygon points="{pts}" {paint}>{title}</polygon>'


def merge_marks(marks: list[tuple[float, float, str, bool]]) -> list[tuple[float, float, str, bool]]:
    """(x px, y px, tooltip, hollow) with those of the same hollowness on the same spot merged, when there are
    more than DENSE of them; a merged marker sits at its first member and its tooltip counts them."""
    if len(marks) <= DENSE:
        return marks
    spots: dict[tuple[int, int, bool], list[tuple[float, float, str, bool]]] = {}
    for m in marks:
        spots.setdefault((round(m[0] / MERGE_CELL), round(m[1] / MERGE_CELL), m[3]), []).append(m)
    out = []
    for members in spots.values():
        x, y, tip, hollow = members[0]
        if len(members) > 1:
            more = len(members) - TIPS_PER_MARK
            tip = "\n".join([f"{len(members)} here:", *(m[2] for m in members[:TIPS_PER_MARK])]
                             + ([f"and {more} more"] if more > 0 else []))
        out.append((x, y, tip, hollow))
    return out


def log_ticks(lo: float, hi: float, binary: bool = False) -> list[float]:
    """Round ticks for a log axis: powers of two for bytes; else powers of ten, or 1-2-5 steps over a short range."""
    if binary:
        ticks = [2.0**k for k in range(math.ceil(math.log2(lo)), math.floor(math.log2(hi)) + 1)]
        return ticks[:: max(1, math.ceil(len(ticks) / MAX_Y_TICKS))] or [lo, hi]
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0**k for k in range(first, last + 1) for m in mantissas if lo <= m * 10.0**k <= hi]
        if len(ticks) >= 3:
            return ticks[:: max(1, math.ceil(len(ticks) / MAX_Y_TICKS))]
    return [lo, hi] if lo != hi else [lo]


class LogAxis:
    """Maps values to pixels on a log scale, padded so that points do not sit on the frame."""

    def __init__(self, values: list[float], pixels: float, flip: bool) -> None:
        lo, hi = min(values), max(values)
        if lo == hi:
            lo, hi = lo / 2, hi * 2
        pad = (math.log(hi) - math.log(lo)) * AXIS_PAD
        self.lo, self.hi = math.exp(math.log(lo) - pad), math.exp(math.log(hi) + pad)
        # v -> offset + scale * log(v), precomputed: charts place tens of thousands of points.
        scale = pixels / (math.log(self.hi) - math.log(self.lo))
        self._scale = -scale if flip else scale
        self._offset = pixels + scale * math.log(self.lo) if flip else -scale * math.log(self.lo)

    def __call__(self, v: float) -> float:
        return self._offset + self._scale * math.log(v)


def frame(width: int, height: int, title: str, body: list[str]) -> Markup:
    head = (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
            f'<text class="chart-title" x="{LEFT}" y="16">{escape(title)}</text>')
    return Markup(head + "".join(body) + "</svg>")


def y_grid(axis: LogAxis, fmt: Callable[[float], str], width: float, binary: bool) -> list[str]:
    out = []
    for t in log_ticks(axis.lo, axis.hi, binary):
        y = TOP + axis(t)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{num(LEFT + width)}" y1="{num(y)}" y2="{num(y)}"/>'
                   f'<text class="tick" x="{LEFT - 6}" y="{num(y + 4)}" text-anchor="end">{escape(fmt(t))}</text>')
    return out


def legend(series: list[Series], palette: Palette, x: float, labels: list[str] | None = None) -> list[str]:
    """A marker and a name per series, down the right of the plot; ``labels`` replace the names shown."""
    out = []
    for i, s in enumerate(series):
        y = TOP + LEGEND_ROW // 2 + LEGEND_ROW * i
        label = labels[i] if labels else s.name
        out.append(marker_svg(palette.marker(s.name), x, y, palette.color(s.name), False, label))
        out.append(f'<text class="legend" x="{num(x + 10)}" y="{num(y + 4)}">{escape(label)}</text>')
    return out


def line_chart(title: str, x_label: str, y_label: str, series: list[Series], palette: Palette,
               y_format: Callable[[float], str], binary: bool = False) -> Markup | None:
    """Log-log lines, one per series; hollow points for incorrect results; stops marked along the top."""
    series = [s for s in series if s.points or s.stops]
    ys = [p.y for s in series for p in s.points if p.y > 0]
    xs = sorted({p.x for s in series for p in s.points + s.stops if p.x > 0})
    if not xs or not (ys or any(s.stops for s in series)):
        return None
    x_axis = LogAxis(xs, PLOT_W, flip=False)
    y_axis = LogAxis(ys or [1.0], PLOT_H, flip=True)
    height = max(TOP + PLOT_H + BOTTOM, TOP + LEGEND_ROW * (len(series) + 1))
    body = [f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}"/>']
    body += y_grid(y_axis, y_format, PLOT_W, binary)
    step = max(1, math.ceil(len(xs) / MAX_X_TICKS))
    for x in xs[::step]:
        px = LEFT + x_axis(x)
        body.append(f'<text class="tick" x="{num(px)}" y="{TOP + PLOT_H + 16}" text-anchor="middle">{x:g}</text>')
    body.append(f'<text class="axis" x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H + BOTTOM - 6}" text-anchor="middle">{escape(x_label)}</text>')
    body.append(f'<text class="axis" transform="rotate(-90)" x="{-(TOP + PLOT_H / 2)}" y="14" text-anchor="middle">{escape(y_label)}</text>')
    for s in series:
        color, shape = palette.color(s.name), palette.marker(s.name)
        pts = sorted((p for p in s.points if p.y > 0), key=lambda p: p.x)
        if len(pts) > 1:
            path = " ".join(f"{num(LEFT + x_axis(p.x))},{num(TOP + y_axis(p.y))}" for p in pts)
            body.append(f'<polyline class="line" points="{path}" stroke="{color}"/>')
        body += [marker_svg(shape, LEFT + x_axis(p.x), TOP + y_axis(p.y), color, p.hollow, p.tip) for p in pts]
        if s.stops:
            frontier = LEFT + x_axis(min(p.x for p in s.stops))
            body.append(f'<line class="frontier" x1="{num(frontier)}" x2="{num(frontier)}" y1="{TOP}" '
                        f'y2="{TOP + PLOT_H}" stroke="{color}"/>')
            body += [f'<text class="stop" x="{num(LEFT + x_axis(p.x))}" y="{TOP + 10}" text-anchor="middle" '
                     f'fill="{color}">✕<title>{escape(p.tip)}</title></text>' for p in s.stops]
    body += legend(series, palette, LEFT + PLOT_W + 16)
    return frame(LEFT + PLOT_W + LEGEND_W, height, title, body)


def strip_chart(title: str, y_label: str, series: list[Series], palette: Palette,
                y_format: Callable[[float], str]) -> Markup | None:
    """One column of points per series (the x of each point is ignored): a distribution per implementation."""
    series = [s for s in series if any(p.y > 0 for p in s.points)]
    if not series:
        return None
    y_axis = LogAxis([p.y for s in series for p in s.points if p.y > 0], PLOT_H, flip=True)
    width = max(PLOT_W, STRIP_SLOT * len(series))
    height = TOP + PLOT_H + STRIP_LABEL_ROOM
    body = [f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{width}" height="{PLOT_H}"/>']
    body += y_grid(y_axis, y_format, width, binary=False)
    body.append(f'<text class="axis" transform="rotate(-90)" x="{-(TOP + PLOT_H / 2)}" y="14" text-anchor="middle">{escape(y_label)}</text>')
    slot = width / len(series)
    for i, s in enumerate(series):
        center = LEFT + slot * (i + 0.5)
        color, shape = palette.color(s.name), palette.marker(s.name)
        columns, gap = STRIP_SPREAD
        marks = merge_marks([(center, TOP + y_axis(p.y), p.tip, p.hollow) for p in s.points if p.y > 0])
        body += [marker_svg(shape, x + (j % columns - columns // 2) * gap, y, color, hollow, tip)
                 for j, (x, y, tip, hollow) in enumerate(marks)]
        label_y = TOP + PLOT_H + 14
        body.append(f'<text class="tick" x="{num(center)}" y="{label_y}" text-anchor="end" '
                    f'transform="rotate(-35 {num(center)} {label_y})">{escape(s.name)}</text>')
    return frame(LEFT + width + 16, height, title, body)


# --- the report's charts -------------------------------------------------------

def _by_impl(entries: list[Entry]) -> dict[str, Series]:
    series: dict[str, Series] = {}
    for e in sorted(entries, key=lambda e: e.record.impl):
        series.setdefault(e.record.impl, Series(e.record.impl))
    return series


def _x_label(entries: list[Entry]) -> str:
    """A family chart's x axis: each case's keys, or (a family of packed batches) each batch's keys in all."""
    packed = any(is_packed(e.record.case) for e in entries)
    return "keys in the batch (all sequences)" if packed else "sequence length (keys)"


def _tip(e: Entry, value: str, whole_case: bool = False) -> str:
    """A point's tooltip; charts of one family need only the sequence length (or the batch's shape) to name the case."""
    r, case = e.record, e.record.case
    where = case_label(case) if whole_case else (seq_text(case) if is_packed(case) else f"N {seq_text(case)}")
    verdict = "" if r.status == "ok" else f" ✗ {r.status}: {r.reason}"
    return f"{r.impl} · {where}: {value}{verdict}"


def _measured(e: Entry, metric: str) -> bool:
    return e.record.status in MEASURED and (e.record.metrics.get(metric) or 0) > 0


def time_chart(entries: list[Entry], palette: Palette) -> Markup | None:
    """Median time per call vs sequence length, one line per implementation."""
    series = _by_impl(entries)
    for e in entries:
        if _measured(e, "time_ms_median"):
            m = e.record.metrics
            tip = _tip(e, f"{format_time(m['time_ms_median'])} ± {100 * noise(e.record):.0f}% noise")
            series[e.record.impl].points.append(Point(batch_keys(e.record.case), m["time_ms_median"], tip, e.record.status != "ok"))
    return line_chart("Time per call", _x_label(entries), "median time", list(series.values()), palette, format_time)


def tflops_chart(entries: list[Entry], palette: Palette) -> Markup | None:
    """Useful TFLOP/s vs sequence length."""
    series = _by_impl(entries)
    for e in entries:
        if _measured(e, "tflops"):
            value = e.record.metrics["tflops"]
            tip = _tip(e, f"{value:.3g} TFLOP/s")
            series[e.record.impl].points.append(Point(batch_keys(e.record.case), value, tip, e.record.status != "ok"))
    return line_chart("Throughput", _x_label(entries), "TFLOP/s", list(series.values()), palette, lambda v: f"{v:g}")


def memory_chart(entries: list[Entry], palette: Palette) -> Markup | None:
    """Peak memory above the inputs vs sequence length; out-of-memory and skipped cases marked at the top."""
    series = _by_impl(entries)
    for e in entries:
        r = e.record
        if (r.metrics.get("peak_bytes") or 0) > 0:
            tip = _tip(e, format_bytes(r.metrics["peak_bytes"]))
            series[r.impl].points.append(Point(batch_keys(r.case), r.metrics["peak_bytes"], tip, r.status != "ok"))
        elif r.status in ("oom", "skipped"):
            series[r.impl].stops.append(Point(batch_keys(r.case), 0, _tip(e, "no measurement")))
    return line_chart("Peak memory (✕ out of memory or skipped)", _x_label(entries), "peak above inputs",
                      list(series.values()), palette, lambda v: format_bytes(v).replace(".0 ", " "), binary=True)


def error_chart(entries: list[Entry], palette: Palette) -> Markup | None:
    """Relative error against float64 per implementation, one point per case."""
    series = _by_impl(entries)
    for e in entries:
        err = e.record.metrics.get("rel_err")
        if e.record.status in MEASURED and err:
            series[e.record.impl].points.append(Point(0, err, _tip(e, f"rel err {err:.2e}", whole_case=True), e.record.status != "ok"))
    return strip_chart("Relative error vs float64", "relative L2 error",
                       list(series.values()), palette, lambda v: f"{v:.0e}")


def linear_steps(hi: float, most: int = MAX_X_TICKS) -> list[float]:
    """Ticks 0, step, 2 step, ... up to ``hi``, the step a 1-2-5 multiple of a power of ten, at most ``most`` + 1."""
    if hi <= 0:
        return [0.0]
    power = 10.0 ** math.floor(math.log10(hi / most))
    step = next(m * power for m in (1, 2, 5, 10) if hi / (m * power) <= most)
    return [k * step for k in range(int(hi / step + 1e-9) + 1)]


def _staircase(corners: list[tuple[float, float]], x_axis: _LinearAxis, y_axis: _LinearAxis) -> str:
    """Polyline points of a staircase to the right edge, in whole pixels, without the corners a straight run hides."""
    pts: list[tuple[int, int]] = []
    for x, y in [*corners, (x_axis.hi, corners[-1][1])]:
        pt = (round(LEFT + x_axis(x)), round(TOP + y_axis(y)))
        if pts and pt == pts[-1]:
            continue
        if len(pts) > 1 and (pts[-2][0] == pts[-1][0] == pt[0] or pts[-2][1] == pts[-1][1] == pt[1]):
            pts[-1] = pt
        else:
            pts.append(pt)
    return " ".join(f"{x},{y}" for x, y in pts)


def fastp_chart(standings: list[Standing], palette: Palette) -> Markup | None:
    """fast_p against p, one staircase per implementation (dashed: approximate), a marker at fast_1."""
    drawn = [s for s in standings if s.cases_total and s.speedups]
    if not drawn:
        return None
    x_axis = _LinearAxis(0.0, max(s.speedups[-1] for s in drawn) * (1 + AXIS_PAD), PLOT_W, flip=False)
    y_axis = _LinearAxis(0.0, 1.0, PLOT_H, flip=True)
    height = max(TOP + PLOT_H + BOTTOM, TOP + LEGEND_ROW * (len(drawn) + 1))
    body = [f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}"/>']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = TOP + y_axis(t)
        body.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{num(y)}" y2="{num(y)}"/>'
                    f'<text class="tick" x="{LEFT - 6}" y="{num(y + 4)}" text-anchor="end">{t:.0%}</text>')
    for t in linear_steps(x_axis.hi):
        body.append(f'<text class="tick" x="{num(LEFT + x_axis(t))}" y="{TOP + PLOT_H + 16}" '
                    f'text-anchor="middle">{t:g}</text>')
    body.append(f'<text class="axis" x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H + BOTTOM - 6}" text-anchor="middle">'
                'p: speedup over the baseline greater than</text>')
    body.append(f'<text class="axis" transform="rotate(-90)" x="{-(TOP + PLOT_H / 2)}" y="14" text-anchor="middle">'
                'fast_p: share of cases</text>')
    if x_axis.hi > 1:
        x = num(LEFT + x_axis(1.0))
        body.append(f'<line class="chance" x1="{x}" x2="{x}" y1="{TOP}" y2="{TOP + PLOT_H}">'
                    '<title>p = 1: faster than the baseline at all</title></line>')
    for s in drawn:
        color = palette.color(s.impl)
        dashed = "" if s.exact else " approx"
        path = _staircase(curve(s.speedups, s.cases_total), x_axis, y_axis)
        body.append(f'<polyline class="line step{dashed}" points="{path}" stroke="{color}">'
                    f'<title>{escape(s.impl)}: fast_p</title></polyline>')
        right = len(s.speedups) - sum(v <= 1.0 for v in s.speedups)
        tip = (f"{s.impl}: fast_1 {s.fast_1:.0%}, right and faster than the baseline on {right} of {s.cases_total} "
               f"cases; fast_0 {len(s.speedups) / s.cases_total:.0%} (right, with a correct baseline); "
               f"win rate {s.win_rate:.0%} (faster beyond the noise)")
        if x_axis.hi > 1:
            body.append(marker_svg(palette.marker(s.impl), LEFT + x_axis(1.0), TOP + y_axis(s.fast_1), color, False, tip))
    body += legend([Series(s.impl) for s in drawn], palette, LEFT + PLOT_W + 16,
                   [s.impl if s.exact else f"{s.impl} (approx)" for s in drawn])
    return frame(LEFT + PLOT_W + LEGEND_W, height, "fast_p: right and more than p× faster", body)


# --- the quality section's chart -----------------------------------------------

QUALITY_SHAPES = {True: "circle", False: "diamond"}
"""Marker of exact and of approximate implementations on the accuracy chart."""
FRONT_RING = 3.5
"""Extra radius of the ring around a point on the Pareto front."""
ACCURACY_STEPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5)


@dataclass
class QualityPoint:
    """One implementation on a task: mean accuracy, its range over seeds, and time per training step."""

    name: str
    exact: bool
    time_ms: float
    accuracy: float
    low: float
    high: float
    tip: str
    hollow: bool = False
    """Drawn as an outline: an exact implementation that disagrees with eager."""
    front: bool = False


class _LinearAxis:
    """Maps values in [lo, hi] to pixels, flipped for a y axis."""

    def __init__(self, lo: float, hi: float, pixels: float, flip: bool) -> None:
        self.lo, self.hi, self.pixels, self.flip = lo, hi, pixels, flip

    def __call__(self, v: float) -> float:
        offset = (v - self.lo) / (self.hi - self.lo) * self.pixels
        return self.pixels - offset if self.flip else offset


def linear_ticks(lo: float, hi: float) -> list[float]:
    """Round ticks (multiples of 0.01, 0.02, 0.05, ...) within [lo, hi], at most MAX_Y_TICKS of them."""
    for step in ACCURACY_STEPS:
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        if last - first + 1 <= MAX_Y_TICKS:
            return [round(k * step, 6) for k in range(first, last + 1)]
    return [lo, hi]


def accuracy_range(points: list[QualityPoint], chance: float | None) -> tuple[float, float]:
    """The y range: every point's seed range and the chance line, padded so that none sits on the frame."""
    lows = [p.low for p in points] + ([chance] if chance is not None else [])
    lo, hi = min(lows), max(p.high for p in points)
    pad = max(0.02, AXIS_PAD * (hi - lo))
    return lo - pad, hi + pad


def quality_chart(title: str, points: list[QualityPoint], palette: Palette, chance: float | None = None) -> Markup | None:
    """Accuracy (mean, bar: min to max over seeds) against time per training step, log scale.

    Circles are exact implementations, diamonds approximate ones; the Pareto
    front is ringed and joined by a dashed staircase; a dotted line marks chance.
    """
    if not points:
        return None
    x_axis = LogAxis([p.time_ms for p in points], PLOT_W, flip=False)
    y_axis = _LinearAxis(*accuracy_range(points, chance), PLOT_H, flip=True)
    names = sorted({p.name: p.exact for p in points}.items())
    height = max(TOP + PLOT_H + BOTTOM, TOP + LEGEND_ROW * (len(names) + 3))
    body = [f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}"/>']
    for t in (t for t in linear_ticks(y_axis.lo, y_axis.hi) if 0 <= t <= 1):
        y = TOP + y_axis(t)
        body.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{num(y)}" y2="{num(y)}"/>'
                    f'<text class="tick" x="{LEFT - 6}" y="{num(y + 4)}" text-anchor="end">{t:g}</text>')
    for t in log_ticks(x_axis.lo, x_axis.hi):
        x = LEFT + x_axis(t)
        body.append(f'<text class="tick" x="{num(x)}" y="{TOP + PLOT_H + 16}" text-anchor="middle">'
                    f'{escape(format_time(t))}</text>')
    body.append(f'<text class="axis" x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H + BOTTOM - 6}" text-anchor="middle">'
                'time per training step (median)</text>')
    body.append(f'<text class="axis" transform="rotate(-90)" x="{-(TOP + PLOT_H / 2)}" y="14" text-anchor="middle">'
                'held-out accuracy</text>')
    if chance is not None:
        y = TOP + y_axis(chance)
        body.append(f'<line class="chance" x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{num(y)}" y2="{num(y)}">'
                    f'<title>chance: always the most common label, {chance:.3f}</title></line>')
    front = sorted((p for p in points if p.front), key=lambda p: p.time_ms)
    if len(front) > 1:
        corners = [(front[0].time_ms, front[0].accuracy)]
        for p in front[1:]:
            corners += [(p.time_ms, corners[-1][1]), (p.time_ms, p.accuracy)]
        path = " ".join(f"{num(LEFT + x_axis(x))},{num(TOP + y_axis(y))}" for x, y in corners)
        body.append(f'<polyline class="front" points="{path}"/>')
    for p in points:
        color = palette.color(p.name)
        x, y = LEFT + x_axis(p.time_ms), TOP + y_axis(p.accuracy)
        body.append(f'<line class="spread" x1="{num(x)}" x2="{num(x)}" y1="{num(TOP + y_axis(p.low))}" '
                    f'y2="{num(TOP + y_axis(p.high))}" stroke="{color}"/>')
        if p.front:
            body.append(f'<circle class="ring" cx="{num(x)}" cy="{num(y)}" r="{POINT_R + FRONT_RING}"/>')
        body.append(marker_svg(QUALITY_SHAPES[p.exact], x, y, color, p.hollow, p.tip))
    legend_x = LEFT + PLOT_W + 16
    for i, (name, exact) in enumerate(names):
        y = TOP + LEGEND_ROW // 2 + LEGEND_ROW * i
        body.append(marker_svg(QUALITY_SHAPES[exact], legend_x, y, palette.color(name), False, name))
        body.append(f'<text class="legend" x="{num(legend_x + 10)}" y="{num(y + 4)}">'
                    f'{escape(name)}{"" if exact else " (approx)"}</text>')
    y = TOP + LEGEND_ROW // 2 + LEGEND_ROW * len(names)
    body.append(f'<circle class="ring" cx="{num(legend_x)}" cy="{num(y)}" r="{POINT_R + FRONT_RING}"/>'
                f'<text class="legend" x="{num(legend_x + 10)}" y="{num(y + 4)}">Pareto front</text>')
    if chance is not None:
        y += LEGEND_ROW
        body.append(f'<line class="chance" x1="{num(legend_x - 6)}" x2="{num(legend_x + 6)}" y1="{num(y)}" '
                    f'y2="{num(y)}"/><text class="legend" x="{num(legend_x + 10)}" y="{num(y + 4)}">chance</text>')
    return frame(LEFT + PLOT_W + LEGEND_W, height, title, body)
