"""Terminal output: one rich table per case, and the run's summary."""

from __future__ import annotations

import math
from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

from attnbench.report.format import (
    batch_shape,
    distinct_labels,
    error_text,
    format_bytes,
    format_time,
    is_packed,
    lengths_text,
    pair_notes,
    seq_text,
)
from attnbench.report.quality import is_task, print_task_records
from attnbench.report.runs import case_key
from attnbench.report.speedup import speedup
from attnbench.results import Record
from attnbench.textsafe import markup, plain

SHORT_REASON = 48


def _short(reason: str) -> str:
    """The reason on one line, cut to SHORT_REASON characters, as markup."""
    reason = plain(reason)
    return markup(reason if len(reason) <= SHORT_REASON else reason[: SHORT_REASON - 1] + "…")


def case_table(label: str, records: list[Record], baseline_name: str | None) -> Table:
    """A table for one case: time ± IQR, TFLOP/s, speedup, peak memory, error; the fastest correct one highlighted."""
    table = Table(title=markup(label), title_justify="left", expand=False)
    for col, justify in (("implementation", "left"), ("time (median ± IQR)", "right"), ("TFLOP/s", "right"),
                         (f"vs {baseline_name}" if baseline_name else "speedup", "right"), ("peak mem", "right"),
                         ("rel err", "right"), ("status", "left")):
        table.add_column(markup(col), justify=justify)
    baseline = next((r for r in records if r.impl == baseline_name), None)
    timed_ok = [r for r in records if r.status == "ok" and r.exact and r.ranked and r.metrics.get("time_ms_median")]
    fastest = min(timed_ok, key=lambda r: r.metrics["time_ms_median"], default=None)
    for r in sorted(records, key=lambda r: (r.metrics.get("time_ms_median") is None, r.metrics.get("time_ms_median") or 0, r.impl)):
        m = r.metrics
        cells = [markup(r.impl)]
        if m.get("time_ms_median"):
            cells.append(f"{format_time(m['time_ms_median'])} ± {100 * (m.get('time_ms_iqr') or 0) / m['time_ms_median']:.0f}%")
            cells.append("" if m.get("tflops") is None else f"{m['tflops']:.3g}")
            sp = speedup(r, baseline)
            cells.append("" if sp is None else (f"{sp[0]:.2f}x" if sp[1] else f"≈{sp[0]:.2f}x"))
        else:
            cells += ["", "", ""]
        cells.append(format_bytes(m.get("peak_bytes")))
        cells.append(error_text(m.get("rel_err")))
        if r.status == "ok":
            status = "[green]ok[/]" if r.exact else "[cyan]approx[/]"
        elif r.status == "incorrect":
            status = f"[bold red]✗ incorrect[/] {_short(r.reason)}"
        elif r.status in ("unsupported", "skipped"):
            status = f"[dim]{r.status}: {_short(r.reason)}[/]"
        else:
            status = f"[red]{r.status}[/]: {_short(r.reason)}"
        if pair_notes(r):
            status += " [yellow]⚑[/] " + _short("; ".join(pair_notes(r)))
        style = "bold green" if r is fastest else ("red" if r.status == "incorrect" else None)
        table.add_row(*cells, status, style=style)
    return table


def ruled_out_by_device(records: list[Record]) -> list[str]:
    """Implementations every one of whose records the device ruled out (declared devices): one line, not a row each."""
    by_impl: dict[str, bool] = {}
    for r in records:
        by_impl[r.impl] = by_impl.get(r.impl, True) and r.status == "unsupported" and r.reason.startswith("device ")
    return sorted(name for name, out in by_impl.items() if out)


SUMMARY_AXES = ("seq_q", "seq_kv", "batch", "head_dim", "heads_q", "heads_kv", "dtype", "mask", "pass", "window")
"""Candidate main axes of a suite, in order of preference when several vary as much."""
SHAPE_AXIS = "shape"
"""The axis that replaces seq_q, seq_kv and batch when a suite has packed batches: the batch's shape
(``Case.batch_shape``; a dense case's ``B2 N512``), since two packed batches of one longest sequence differ."""
SIZE_AXES = ("seq_q", "seq_kv", "batch")


def _axes(cases: list[dict]) -> tuple[str, ...]:
    if not any(is_packed(c) for c in cases if "task" not in c):
        return SUMMARY_AXES
    return (SHAPE_AXIS, *(a for a in SUMMARY_AXES if a not in SIZE_AXES))


def _shapes(cases: list[dict]) -> dict[tuple, str]:
    """Each case's shape on the summary's axis, told apart where two packed batches read the same."""
    unique = {_key(c): c for c in cases}
    dense = {k: f"B{c['batch']} N{seq_text(c, 'x')}" for k, c in unique.items() if not is_packed(c)}
    packed = [k for k, c in unique.items() if is_packed(c)]
    shapes = [batch_shape(unique[k]) for k in packed]
    repeated = {s for s in shapes if shapes.count(s) > 1}
    return dense | {k: f"{s} [{lengths_text(unique[k])}]" if s in repeated else s for k, s in zip(packed, shapes)}


def axis_values(cases: list[dict], axis: str) -> list:
    """Each case's value on ``axis``: a field, or its batch shape on SHAPE_AXIS."""
    if axis != SHAPE_AXIS:
        return [c.get(axis) for c in cases]
    shapes = _shapes(cases)
    return [shapes[_key(c)] for c in cases]


def main_axis(cases: list[dict]) -> str | None:
    """The case field with the most distinct values: the suite's main axis (None when nothing varies)."""
    axes = _axes(cases)
    counts = {axis: len({str(v) for v in axis_values(cases, axis)}) for axis in axes}
    axis = max(axes, key=lambda a: counts[a])
    return axis if counts[axis] > 1 else None


def summary_table(records: list[Record], baseline_name: str | None) -> Table | None:
    """Implementation x the main axis: the geometric-mean speedup over the baseline of its correct timed cases there,
    ``≈`` when none of those speedups is beyond the noise; ``✗`` where it was incorrect on a case."""
    if not baseline_name:
        return None
    axis = main_axis([r.case for r in records]) or "seq_q"
    baselines = {_key(r.case): r for r in records if r.impl == baseline_name}
    values = axis_values([r.case for r in records], axis)
    columns = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    cells: dict[str, dict[object, list]] = {}
    for r, value in zip(records, values):
        if r.impl == baseline_name or not r.ranked:
            continue
        row = cells.setdefault(r.impl, {})
        if r.status in ("incorrect", "implausible"):
            row.setdefault(value, []).append(None)
        elif r.status == "ok":
            sp = speedup(r, baselines.get(_key(r.case)))
            if sp is not None:
                row.setdefault(value, []).append(sp)
    cells = {impl: row for impl, row in cells.items() if row}
    if not cells:
        return None
    table = Table(title=markup(f"speedup vs {baseline_name} by {axis} (geometric mean; ≈ inside the noise)"),
                  title_justify="left")
    table.add_column("implementation")
    for value in columns:
        table.add_column(markup(f"{axis}={value}"), justify="right")
    for impl in sorted(cells):
        table.add_row(markup(impl), *(_summary_cell(cells[impl].get(v, [])) for v in columns))
    return table


def _key(case: dict) -> tuple:
    return case_key(case)


def _summary_cell(speedups: list) -> str:
    if not speedups:
        return ""
    if any(s is None for s in speedups):
        return "[red]✗[/]"
    geomean = math.exp(sum(math.log(ratio) for ratio, _ in speedups) / len(speedups))
    return f"{geomean:.2f}x" if any(significant for _, significant in speedups) else f"≈{geomean:.2f}x"


def print_run(console: Console, records: Iterable[Record], baseline_name: str | None) -> None:
    """Print a table per case (in the order cases first appear) without the implementations the device rules out
    (named once), the noise note, the summary table, and the quality tasks' tables."""
    records = list(records)
    kernel = [r for r in records if not is_task(r)]
    absent = set(ruled_out_by_device(kernel))
    # By the whole case, not its label: packed batches of different lengths can read the same.
    groups: dict[tuple, list[Record]] = {}
    for r in kernel:
        if r.impl not in absent:
            groups.setdefault(_key(r.case), []).append(r)
    labels = distinct_labels([recs[0].case for recs in groups.values()])
    for label, recs in zip(labels, groups.values()):
        console.print(case_table(label, recs, baseline_name))
    if absent:
        device = kernel[0].case.get("device", "this device")
        console.print(f"[dim]Not run on {markup(str(device))} (their declared devices rule it out): "
                      f"{markup(', '.join(sorted(absent)))}[/]")
    spreads = sorted(r.metrics["process_spread"] for rs in groups.values() for r in rs if "process_spread" in r.metrics)
    if spreads:
        median_spread = spreads[len(spreads) // 2]
        console.print(
            f"[dim]Worker processes differed by {100 * median_spread:.0f}% (median over pairs) on this machine; "
            "speedups inside the noise are shown as ≈ and are not differences.[/]"
        )
    summary = summary_table([r for r in kernel if r.impl not in absent], baseline_name)
    if summary is not None and len(groups) > 1:
        console.print(summary)
    print_task_records(console, records)
