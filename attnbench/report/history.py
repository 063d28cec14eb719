"""History: each pair's time across the runs of one suite on one hardware, and its changes beyond noise.

Like asv's graphs, but along versions as well as dates: the runs of a suite on
a hardware line up by torch version, then attnbench version, then start time
(runs made today against old torch builds are history too). For every
implementation and case, each run's record is judged against the previous
run's record of the same pair with ``compare.judge``, the significance test of
``attnbench compare``: a ratio beyond the combined noise of the two timings is
a change, anything inside it is not. Changes are marked on the chart and
listed; a history needs at least two runs.

The charts are inline SVG written here; every string in them passes through
``markupsafe.escape``. Colours come from the caller (the page's palette), so
an implementation looks the same in every chart of the page.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from attnbench.compare import BROKE, FASTER, FIXED, LOST, SLOWER, Change, judge, median_time, version_key
from attnbench.report.format import distinct_labels, format_time
from attnbench.report.runs import Run, case_key
from attnbench.report.speedup import noise
from attnbench.results import MEASURED, Record

LISTED = (SLOWER, FASTER, BROKE, FIXED, LOST)
"""Verdicts between consecutive runs that the history lists; slower and faster are also marked on the chart."""
MARK_COLOR = {SLOWER: "#d55e00", FASTER: "#009e73"}

PLOT_H, MIN_PLOT_W, MAX_PLOT_W = 170, 300, 640
LEFT, TOP, BOTTOM, LEGEND_W = 70, 26, 44, 160
LABEL_W = 76
"""Room a tick label (a date) needs: runs closer than this share labels, the others keep their tooltips."""


@dataclass
class Shift:
    """A change between two consecutive runs' records of one pair: ``before`` and ``after`` index ``History.runs``."""

    before: int
    after: int
    change: Change


@dataclass
class History:
    """One suite on one hardware over two or more runs."""

    suite: str
    hardware: str
    runs: list[Run]
    """In axis order: torch version, attnbench version, start time."""
    cases: dict[tuple, dict[str, Any]] = field(default_factory=dict)
    """Cases measured by at least two of the runs, by ``case_key``, in the order first seen."""
    series: dict[tuple, dict[str, list[tuple[int, Record]]]] = field(default_factory=dict)
    """Per case, per implementation: (run index, record), in run order."""
    shifts: dict[tuple, list[Shift]] = field(default_factory=dict)
    """Per case: the listed changes between consecutive records of its implementations."""
    labels: dict[tuple, str] = field(default_factory=dict)
    """Per case: its label, told apart from any other case's that reads the same (``distinct_labels``)."""

    @property
    def title(self) -> str:
        return f"{self.suite} · {self.hardware}"


def attnbench_version(run: Run) -> str:
    return str(run.info.get("attnbench") or (run.info.get("environment") or {}).get("attnbench") or "?")


def axis_key(run: Run) -> tuple:
    """Where a run goes on the history's axis."""
    return version_key(run.torch), version_key(attnbench_version(run)), run.started


def run_label(run: Run) -> str:
    return f"torch {run.torch} · attnbench {attnbench_version(run)} · {run.started[:10] or '?'}"


def histories(runs: list[Run]) -> list[History]:
    """Per (suite, hardware) measured by two or more runs, in the order first seen; kernel records only are expected."""
    parts: dict[tuple[str, str], list[tuple[Run, list[Record]]]] = {}
    for run in runs:
        for hardware, records in run.by_hardware().items():
            parts.setdefault((run.suite, hardware), []).append((run, records))
    found = []
    for (suite, hardware), members in parts.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda m: axis_key(m[0]))
        history = History(suite, hardware, [run for run, _ in members])
        seen: dict[tuple, set[int]] = {}
        for index, (_, records) in enumerate(members):
            for record in records:
                key = case_key(record.case)
                history.cases.setdefault(key, record.case)
                seen.setdefault(key, set()).add(index)
                points = history.series.setdefault(key, {}).setdefault(record.impl, [])
                if points and points[-1][0] == index:
                    points.pop()  # one record per pair and run: the later one
                points.append((index, record))
        for key in [k for k, indices in seen.items() if len(indices) < 2]:
            del history.cases[key], history.series[key]
        for key, by_impl in history.series.items():
            shifts = [Shift(a, b, change) for points in by_impl.values() for (a, ra), (b, rb) in zip(points, points[1:])
                      if (change := judge(ra, rb)).verdict in LISTED]
            if shifts:
                history.shifts[key] = shifts
        if history.cases:
            history.labels = dict(zip(history.cases, distinct_labels(list(history.cases.values()))))
            found.append(history)
    return found


def _num(v: float) -> str:
    return f"{v:.1f}"


def _ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 steps inside [lo, hi] on a log axis, thinned to at most six."""
    ticks = [m * 10.0**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)
             if lo <= m * 10.0**k <= hi]
    return ticks[:: max(1, math.ceil(len(ticks) / 6))] or [math.sqrt(lo * hi)]


def _tip(run: Run, record: Record) -> str:
    t = median_time(record)
    timing = f"{format_time(t)} ± {100 * noise(record):.0f}%" if t else "no time"
    return f"{record.impl}: {timing}, {record.status}\n{run_label(run)}\nrun {run.id}"


def history_chart(history: History, key: tuple, color: Callable[[str], str]) -> Markup:
    """Time per call of every implementation of one case across the history's runs (log scale), changes ringed."""
    n = len(history.runs)
    width = min(MAX_PLOT_W, max(MIN_PLOT_W, LABEL_W * (n - 1)))
    x_of = [LEFT + width * i / (n - 1) for i in range(n)]
    by_impl = history.series[key]
    times = [t for points in by_impl.values() for _, r in points if r.status in MEASURED and (t := median_time(r))]
    lo, hi = (min(times), max(times)) if times else (1.0, 1.0)
    lo, hi = (lo / 2, hi * 2) if lo == hi else (lo / 1.15, hi * 1.15)
    scale = PLOT_H / (math.log(hi) - math.log(lo))

    def y_of(ms: float) -> float:
        return TOP + PLOT_H - scale * (math.log(ms) - math.log(lo))

    title = f"{history.labels[key]}: time per call"
    body = [f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{width}" height="{PLOT_H}" fill="#fff" stroke="#ccd"/>']
    for t in _ticks(lo, hi):
        y = _num(y_of(t))
        body.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + width}" y1="{y}" y2="{y}" stroke="#eceff2"/>'
                    f'<text class="tick" x="{LEFT - 6}" y="{y}" dy="4" text-anchor="end">{escape(format_time(t))}</text>')
    every = max(1, math.ceil(LABEL_W * (n - 1) / width))
    for i, run in enumerate(history.runs):
        if i % every == 0:
            x = _num(x_of[i])
            body.append(f'<text class="tick" x="{x}" y="{TOP + PLOT_H + 15}" text-anchor="middle">'
                        f'<title>{escape(run_label(run))}</title>{escape(run.torch)}'
                        f'<tspan x="{x}" dy="13">{escape(run.started[:10])}</tspan></text>')
    marks = {(s.change.impl, s.after): s for s in history.shifts.get(key, []) if s.change.verdict in MARK_COLOR}
    for row, (impl, points) in enumerate(by_impl.items()):
        paint = color(impl)
        timed = [(i, r, t) for i, r in points if r.status in MEASURED and (t := median_time(r))]
        recorded = {i for i, _ in points}
        # A line joins two timed runs unless a run between them has a record of the pair without a time
        # (it failed there); a run that did not measure the pair at all does not break it.
        for (i, _, t), (j, _, u) in zip(timed, timed[1:]):
            if not recorded.intersection(range(i + 1, j)):
                body.append(f'<line class="line" x1="{_num(x_of[i])}" y1="{_num(y_of(t))}" x2="{_num(x_of[j])}" '
                            f'y2="{_num(y_of(u))}" stroke="{paint}" stroke-width="1.5" fill="none"/>')
        for i, record, t in timed:
            x, y = _num(x_of[i]), _num(y_of(t))
            fill = "#fff" if record.status != "ok" else paint
            body.append(f'<circle cx="{x}" cy="{y}" r="3.5" fill="{fill}" stroke="{paint}" stroke-width="1.5">'
                        f'<title>{escape(_tip(history.runs[i], record))}</title></circle>')
            if (shift := marks.get((impl, i))) is not None:
                c = shift.change
                tip = (f"{impl}: {c.verdict} {100 * (c.ratio - 1):+.1f}% (noise ±{100 * c.noise:.0f}%)\n"
                       f"{run_label(history.runs[shift.before])} → {run_label(history.runs[i])}")
                body.append(f'<circle class="change {c.verdict}" cx="{x}" cy="{y}" r="8" fill="none" '
                            f'stroke="{MARK_COLOR[c.verdict]}" stroke-width="2"><title>{escape(tip)}</title></circle>')
        ly = TOP + 10 + 16 * row
        body.append(f'<circle cx="{LEFT + width + 16}" cy="{ly - 4}" r="4" fill="{paint}"/>'
                    f'<text class="legend" x="{LEFT + width + 26}" y="{ly}">{escape(impl)}</text>')
    total_w = LEFT + width + LEGEND_W
    total_h = max(TOP + PLOT_H + BOTTOM, TOP + 16 * len(by_impl) + 10)
    head = (f'<svg class="chart history" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {total_w} {total_h}" '
            f'width="{total_w}" height="{total_h}" role="img" aria-label="{escape(title)}">'
            f'<text class="chart-title" x="{LEFT}" y="16">{escape(title)}</text>')
    return Markup(head + "".join(body) + "</svg>")


@dataclass
class ShiftRow:
    """One listed change, as the page's table shows it."""

    case: str
    impl: str
    runs: str
    """``#2 torch 2.6.0 → #3 torch 2.7.1``: positions in the run table."""
    times: str
    change: str
    noise: str
    verdict: str


@dataclass
class HistoryView:
    """What the page's history section shows of one History."""

    anchor: str
    history: History
    runs: list[tuple[int, Run, str]]
    """Axis position (from 1), run and its attnbench version."""
    shifts: list[ShiftRow]
    charts: list[tuple[str, Markup, int]]
    """Case label, chart, number of changes marked on it."""


def _shift_row(history: History, key: tuple, shift: Shift) -> ShiftRow:
    c = shift.change
    def state(record: Record) -> str:
        t = median_time(record)
        timed = format_time(t) if t and record.status in MEASURED else ""
        return timed if record.status == "ok" else f"{timed} {record.status}".strip()

    return ShiftRow(
        case=history.labels[key], impl=c.impl,
        runs=" → ".join(f"#{i + 1} torch {history.runs[i].torch}" for i in (shift.before, shift.after)),
        times=" → ".join(state(r) for r in (c.base, c.new)),
        change="" if c.ratio is None else f"{100 * (c.ratio - 1):+.1f}%",
        noise="" if c.noise is None else f"±{100 * c.noise:.0f}%",
        verdict=c.verdict,
    )


def history_views(runs: list[Run], color: Callable[[str], str]) -> list[HistoryView]:
    """The page's history section: one view per suite and hardware with two or more runs (none: no section)."""
    views = []
    for index, history in enumerate(histories(runs), 1):
        order = {SLOWER: 0, BROKE: 1, LOST: 2, FASTER: 3, FIXED: 4}
        shifts = sorted(((key, s) for key, members in history.shifts.items() for s in members),
                        key=lambda ks: (order[ks[1].change.verdict], -abs(math.log(ks[1].change.ratio or 1.0))))
        charts = [(history.labels[key], history_chart(history, key, color),
                   sum(s.change.verdict in MARK_COLOR for s in history.shifts.get(key, [])))
                  for key in history.cases]
        views.append(HistoryView(
            anchor=f"history-{index}", history=history,
            runs=[(i, run, attnbench_version(run)) for i, run in enumerate(history.runs, 1)],
            shifts=[_shift_row(history, key, s) for key, s in shifts], charts=charts))
    return views
