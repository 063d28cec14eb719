"""Leaderboards as text: the cells of a standing, shared by the HTML page and the rich tables of ``attnbench report``."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from attnbench.report.rank import CONFIDENCE, Leaderboard, Standing
from attnbench.textsafe import markup

INTERVAL_HEADING = f"{CONFIDENCE:.0%} interval"
TIED_NAMES_SHOWN = 3
"""Names in a "tied with" cell before "+N more"; the full list goes in the cell's tooltip."""


@dataclass
class Line:
    """A standing's cells, formatted once."""

    rank: str
    impl: str
    tied: str
    tied_all: str
    plugin: str
    version: str
    score: str
    interval: str
    scored: str
    coverage: str
    pass_rate: str
    win_rate: str
    fast_1: str
    memory: str
    error: str
    implausible: str
    """``3 implausible`` when some of its records were faster than the roofline floor allows, else empty."""


def sig3(x: float) -> str:
    """Three significant digits, trailing zeros kept (1.00, 0.120, 123)."""
    return f"{x:#.3g}".rstrip(".")


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{sig3(x)}×"


def _unscored_reason(s: Standing) -> str:
    if s.attempted == 0:
        return "no case attempted"
    if s.passed == 0:
        return "no case ran correctly"
    return "no correct case with a correct baseline in the same run"


def _tied(names: list[str]) -> str:
    more = len(names) - TIED_NAMES_SHOWN
    return ", ".join(names[:TIED_NAMES_SHOWN]) + (f" +{more} more" if more > 0 else "")


def line(s: Standing) -> Line:
    pass_rate = "" if s.pass_rate is None else f"{s.pass_rate:.0%} ({s.passed}/{s.attempted})"
    error = "" if s.rel_err_median is None else f"{s.rel_err_median:.1e} / {s.rel_err_max:.1e}"
    return Line(
        rank="—" if s.rank is None else f"{s.rank}{' ≈' if s.tied_with else ''}",
        impl=s.impl,
        tied=_tied(s.tied_with),
        tied_all=", ".join(s.tied_with),
        plugin=s.plugin,
        version=s.version,
        score=_ratio(s.score) if s.score is not None else _unscored_reason(s),
        interval="" if s.low is None else f"{sig3(s.low)}–{sig3(s.high)}×",
        scored=str(s.cases_scored),
        coverage=f"{s.cases_supported}/{s.cases_total} ({s.coverage:.0%})",
        pass_rate=pass_rate,
        win_rate=f"{s.win_rate:.0%} ({s.wins}/{s.cases_total})",
        fast_1=f"{s.fast_1:.0%}",
        memory=_ratio(s.memory_ratio),
        error=error,
        implausible=f"{s.implausible} implausible" if s.implausible else "",
    )


def off_device_text(board: Leaderboard) -> str:
    """The implementations that cannot run on the board's device, with the first one's reason: one line."""
    names = ", ".join(impl for impl, _ in board.off_device)
    return f"{names} ({board.off_device[0][1]})" if len(board.off_device) == 1 else names


def _table(title: str, standings: list[Standing], with_error: bool) -> Table:
    table = Table(title=markup(title), title_justify="left")
    columns = [("rank", "right"), ("implementation", "left"), ("score", "right"), (INTERVAL_HEADING, "right"),
               ("cases scored", "right"), ("coverage", "right"), ("pass rate", "right"), ("win rate", "right"),
               ("fast_1", "right"), ("memory", "right")]
    columns += [("rel err median / worst", "right")] if with_error else []
    columns += [("plugin", "left"), ("version", "left"), ("tied with", "left")]
    for name, justify in columns:
        # The name is what a reader looks for: never cut, other columns wrap first on a narrow terminal.
        table.add_column(name, justify=justify, no_wrap=name == "implementation",
                         min_width=max((len(s.impl) for s in standings), default=0) if name == "implementation" else None)
    for s in standings:
        c = line(s)
        scored = f"{c.scored} ({c.implausible})" if c.implausible else c.scored
        cells = [c.rank, c.impl, c.score, c.interval, scored, c.coverage, c.pass_rate, c.win_rate, c.fast_1, c.memory]
        cells += [c.error] if with_error else []
        cells += [c.plugin, c.version, c.tied]
        table.add_row(*(markup(x) for x in cells), style="bold" if s.rank == 1 else None)
    return table


def print_leaderboards(console: Console, boards: list[Leaderboard]) -> None:
    """One table per suite and hardware (exact implementations), then the approximate ones and the unranked."""
    for board in boards:
        g = board.group
        runs = ", ".join(f"{r.id} (torch {r.torch})" for r in g.runs)
        heading = f"{g.title} — speedup over {g.baseline or 'no baseline'}, {len(g.cases)} cases; runs: {runs}"
        console.print(_table(heading, board.exact, with_error=False))
        if board.approximate:
            console.print(_table(f"{g.title} — approximate implementations", board.approximate, with_error=True))
        if board.unranked:
            console.print(f"[dim]not ranked: {markup(', '.join(s.impl for s in board.unranked))}[/]")
        if board.off_device:
            console.print(f"[dim]cannot run on this device: {markup(off_device_text(board))}[/]")
        if g.superseded:
            console.print(f"[dim]{g.superseded} records superseded by newer runs of the same pairs[/]")
    console.print(f"[dim]Score: geometric-mean speedup over the baseline across the cases run correctly (no credit for a "
                  f"wrong case); {INTERVAL_HEADING}s overlap = tied; rank = 1 + the number of implementations "
                  f"entirely above. Win rate: cases right and faster beyond noise / all cases; fast_1: right and "
                  f"faster at all. Implausible records (faster than the roofline floor) are not scored.[/]")
