"""fast_p and win rate: how often an implementation is right *and* faster than the baseline.

fast_p (KernelBench's): the fraction of a board's cases an implementation got
right (status ``ok``) with a speedup over the baseline greater than p. fast_0
is its correct fraction, fast_1 how often it is right and faster at all. The
denominator is every case of the board, so a case it cannot run, got wrong or
has no correct baseline for counts as not fast.

Win rate: the fraction of the board's cases where it is right and faster
than the baseline beyond the timing noise of the two (report.speedup): a win
inside the noise is no win.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from attnbench.report.runs import Entry
from attnbench.report.speedup import speedup


def wins(entry: Entry) -> bool:
    """Whether the record is correct and faster than its baseline beyond the noise."""
    if entry.record.status != "ok":
        return False
    judged = speedup(entry.record, entry.baseline)
    return judged is not None and judged[1] and judged[0] > 1


def fast_p(speedups: Sequence[float], cases: int, p: float) -> float:
    """Fraction of ``cases`` with a speedup greater than ``p``; ``speedups`` are those of the correct cases, sorted."""
    return (len(speedups) - bisect.bisect_right(speedups, p)) / cases if cases else 0.0


def curve(speedups: Sequence[float], cases: int) -> list[tuple[float, float]]:
    """The corners of the fast_p staircase from p = 0 (``speedups`` sorted): at each distinct speedup it steps down."""
    if not cases:
        return []
    corners = [(0.0, len(speedups) / cases)]
    for i, s in enumerate(speedups):
        if i + 1 < len(speedups) and speedups[i + 1] == s:
            continue
        corners += [(s, corners[-1][1]), (s, (len(speedups) - i - 1) / cases)]
    return corners
