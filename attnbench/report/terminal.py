"""Terminal output: one rich table per case, and the run's summary."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

from attnbench.report.format import error_text, format_bytes, format_time
from attnbench.report.quality import is_task, print_task_records
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
        style = "bold green" if r is fastest else ("red" if r.status == "incorrect" else None)
        table.add_row(*cells, status, style=style)
    return table


def print_run(console: Console, records: Iterable[Record], baseline_name: str | None) -> None:
    """Print a table per case (in the order cases first appear), the noise note, and the quality tasks' tables."""
    # Case imports torch, which the report modules load without (the report commands must start fast).
    from attnbench.case import Case

    records = list(records)
    groups: dict[str, list[Record]] = {}
    for r in records:
        if not is_task(r):
            groups.setdefault(Case.from_dict(r.case).label(), []).append(r)
    for label, recs in groups.items():
        console.print(case_table(label, recs, baseline_name))
    spreads = sorted(r.metrics["process_spread"] for rs in groups.values() for r in rs if "process_spread" in r.metrics)
    if spreads:
        median_spread = spreads[len(spreads) // 2]
        console.print(
            f"[dim]Worker processes differed by {100 * median_spread:.0f}% (median over pairs) on this machine; "
            "speedups inside the noise are shown as ≈ and are not differences.[/]"
        )
    print_task_records(console, records)
