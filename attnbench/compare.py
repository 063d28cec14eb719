"""``attnbench compare BASE NEW``: per pair, how NEW's time compares with BASE's, and whether that is more than noise.

Records pair up by implementation and case; the hardware may differ (comparing
two machines is one use). The ratio is NEW's median time / BASE's: above 1 is
slower. It is significant only when ``|ratio - 1|`` exceeds the combined noise
``hypot(noise(base), noise(new))``, with ``noise`` the larger of IQR/median and
the spread between worker processes (report.speedup): the root-sum-square of
two independent relative noises. Anything smaller is reported as within noise.

Status changes count too: a pair that was ``ok`` in BASE and has any other
status in NEW (incorrect, error, oom, but also unsupported, skipped or lost by
the fleet) *broke*; the reverse is *fixed*. A pair ok and timed in BASE that is
ok but has no time in NEW *lost its time*.

``--fail-on-regression PCT`` exits with EXIT_REGRESSION (4) when a pair ok in
BASE broke, lost its time or is missing from NEW, or got significantly slower
by more than PCT percent; each such pair is listed by name. CI cannot vouch for
what NEW did not measure, so every way of not measuring it fails.

``--by torch`` takes any number of results (files or directory trees): per
suite and hardware, the latest run of each torch version (by start time), in
version order, and compares each with the next: consecutive pairs, so each
change is charged to the upgrade that made it (oldest-as-base would charge
2.5's regression to every later version as well). The exit codes are the same:
4 when any of those comparisons has a regression.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from attnbench.errors import UserError
from attnbench.report.format import case_label, distinct_labels, format_time
from attnbench.report.runs import Run
from attnbench.report.speedup import noise
from attnbench.results import MEASURED, Record, pair_key
from attnbench.textsafe import markup

EXIT_REGRESSION = 4

SLOWER, FASTER, NOISE = "slower", "faster", "within noise"
BROKE, FIXED, CHANGED, LOST = "broke", "fixed", "status changed", "lost its time"
ONLY_BASE, ONLY_NEW, UNTIMED = "only in base", "only in new", "not timed"


@dataclass
class Change:
    """One pair in BASE and NEW."""

    impl: str
    case: dict[str, Any]
    base: Record | None
    new: Record | None
    verdict: str
    ratio: float | None = None
    """NEW time / BASE time."""
    noise: float | None = None
    """The combined relative noise the ratio is judged against."""

    @property
    def label(self) -> str:
        return case_label(self.case)

    def regresses(self, threshold_pct: float) -> bool:
        """True when this pair, ok in BASE, broke, lost its time or is missing from NEW, or when it is
        significantly slower by more than ``threshold_pct`` percent."""
        if self.verdict in (BROKE, LOST):
            return True
        if self.verdict == ONLY_BASE:
            return self.base.status == "ok"
        return self.verdict == SLOWER and self.ratio is not None and (self.ratio - 1) * 100 > threshold_pct


def median_time(record: Record) -> float | None:
    """The median time when it is a usable one: a positive finite number."""
    t = record.metrics.get("time_ms_median")
    ok = isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
    return t if ok else None


def judge(base: Record | None, new: Record | None) -> Change:
    """The verdict on one pair."""
    some = new or base
    change = Change(some.impl, some.case, base, new, UNTIMED)
    if base is None or new is None:
        change.verdict = ONLY_NEW if base is None else ONLY_BASE
        return change
    if base.status == "ok" and new.status != "ok":
        change.verdict = BROKE
        return change
    if base.status != "ok" and new.status == "ok":
        change.verdict = FIXED
        return change
    t_base, t_new = median_time(base), median_time(new)
    if base.status in MEASURED and new.status in MEASURED and t_base and t_new:
        change.ratio = t_new / t_base
        change.noise = math.hypot(noise(base), noise(new))
        change.verdict = NOISE if abs(change.ratio - 1) <= change.noise else (SLOWER if change.ratio > 1 else FASTER)
    elif base.status == "ok" and t_base and not t_new:
        change.verdict = LOST
    elif base.status != new.status:
        change.verdict = CHANGED
    return change


def compare_runs(base: Run, new: Run) -> list[Change]:
    """Every pair of either run, BASE's order first."""
    base_by_key = {pair_key(r.impl, r.case): r for r in base.records}
    new_by_key = {pair_key(r.impl, r.case): r for r in new.records}
    keys = list(base_by_key) + [k for k in new_by_key if k not in base_by_key]
    return [judge(base_by_key.get(k), new_by_key.get(k)) for k in keys]


def version_key(version: str) -> tuple:
    """Natural order of version strings: numbers compare as numbers, so 2.10.0 comes after 2.9.1."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", version) if p)


BY: dict[str, Callable[[Run], str]] = {"torch": lambda run: run.torch}
"""What ``--by`` can step along: a run's version of it ("?" when the run does not say)."""


@dataclass
class Step:
    """One comparison of a ``--by`` series: BASE the latest run of one version, NEW the latest of the next."""

    base: Run
    new: Run
    changes: list[Change]


def compare_by(runs: list[Run], by: str = "torch") -> tuple[list[Step], list[str]]:
    """Consecutive versions' latest runs compared, per suite and hardware; and a note on each set of runs
    that gave no comparison (a single version, or runs that do not say theirs)."""
    version_of = BY[by]
    series: dict[tuple[str, str], dict[str, Run]] = {}
    notes = []
    for run in runs:
        version = version_of(run)
        if version == "?":
            notes.append(f"{run.source}: the run does not say its {by} version; left out")
            continue
        latest = series.setdefault((run.suite, run.hardware), {})
        if version not in latest or run.started >= latest[version].started:
            latest[version] = run
    steps = []
    for (suite, hardware), latest in series.items():
        versions = sorted(latest, key=version_key)
        if len(versions) < 2:
            notes.append(f"{suite} on {hardware}: only {by} {versions[0]}; nothing to compare")
        for older, newer in zip(versions, versions[1:]):
            base, new = latest[older], latest[newer]
            steps.append(Step(base, new, compare_runs(base, new)))
    if not steps:
        raise UserError(f"--by {by}: no suite and hardware has runs of two {by} versions to compare"
                        + "".join(f"; {n}" for n in notes))
    return steps, notes


def _pct(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.1f}%"


def _change_table(title: str, changes: list[Change]) -> Table:
    table = Table(title=markup(title), title_justify="left")
    for name, justify in (("implementation", "left"), ("case", "left"), ("base", "right"), ("new", "right"),
                          ("change", "right"), ("noise", "right"), ("verdict", "left"), ("status", "left")):
        table.add_column(name, justify=justify)
    # Packed batches of different lengths can share a label: a table tells its rows apart.
    for c, label in zip(changes, distinct_labels([c.case for c in changes])):
        times = [format_time(median_time(r)) if r and median_time(r) else "" for r in (c.base, c.new)]
        status = " → ".join(markup(r.status if r else "—") for r in (c.base, c.new))
        if c.new is not None and c.new.status != "ok" and c.new.reason:
            status += f" [dim]{markup(c.new.reason.splitlines()[0])}[/]"
        table.add_row(markup(c.impl), markup(label), *times, "" if c.ratio is None else _pct(c.ratio),
                      "" if c.noise is None else f"±{100 * c.noise:.0f}%", c.verdict, status)
    return table


def print_comparison(console: Console, base: Run, new: Run, changes: list[Change], threshold_pct: float | None,
                     every_pair: bool = False) -> None:
    """Regressions, improvements, status changes (or, with ``every_pair``, every pair), a per-implementation
    summary and the counts."""
    console.print(f"[bold]base[/] {markup(base.id)} ({markup(base.hardware)}, torch {markup(base.torch)}) → "
                  f"[bold]new[/] {markup(new.id)} ({markup(new.hardware)}, torch {markup(new.torch)})")
    if every_pair:
        console.print(_change_table("Every pair", changes))
    sections = (
        ("Slower (significant)", [c for c in changes if c.verdict == SLOWER], lambda c: -c.ratio),
        ("Faster (significant)", [c for c in changes if c.verdict == FASTER], lambda c: c.ratio),
        ("Broke (ok in base, not ok in new)", [c for c in changes if c.verdict == BROKE], lambda c: c.impl),
        ("Lost its time (ok and timed in base, ok without a time in new)", [c for c in changes if c.verdict == LOST],
         lambda c: c.impl),
        ("Fixed", [c for c in changes if c.verdict == FIXED], lambda c: c.impl),
        ("Status changed", [c for c in changes if c.verdict == CHANGED], lambda c: c.impl),
    )
    for title, members, order in sections:
        if members and not every_pair:
            console.print(_change_table(title, sorted(members, key=order)))
    timed: dict[str, list[float]] = {}
    for c in changes:
        if c.ratio is not None:
            timed.setdefault(c.impl, []).append(c.ratio)
    if timed:
        table = Table(title="Per implementation: geometric mean of new / base time over the pairs timed in both",
                      title_justify="left")
        for name, justify in (("implementation", "left"), ("pairs", "right"), ("geomean change", "right"),
                              ("slower", "right"), ("faster", "right"), ("within noise", "right")):
            table.add_column(name, justify=justify)
        for impl, ratios in sorted(timed.items()):
            mine = [c for c in changes if c.impl == impl]
            table.add_row(markup(impl), str(len(ratios)), _pct(math.exp(statistics.fmean(math.log(r) for r in ratios))),
                          *(str(sum(c.verdict == v for c in mine)) for v in (SLOWER, FASTER, NOISE)))
        console.print(table)
    counts = {v: sum(c.verdict == v for c in changes)
              for v in (SLOWER, FASTER, NOISE, BROKE, LOST, FIXED, CHANGED, ONLY_BASE, ONLY_NEW, UNTIMED)}
    console.print(", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no pairs")
    if threshold_pct is not None:
        failing = [c for c in changes if c.regresses(threshold_pct)]
        if failing:
            console.print(_change_table(f"Regressions (--fail-on-regression {threshold_pct:g})", failing))
        verdict = f"[bold red]{len(failing)} regression(s)[/]" if failing else "[green]no regression[/]"
        console.print(f"{verdict}: significant slowdowns beyond {threshold_pct:g}%, or pairs ok in base that are "
                      "not ok, not timed or missing in new")


def print_steps(console: Console, steps: list[Step], notes: list[str], by: str, threshold_pct: float | None,
                every_pair: bool = False) -> None:
    """Each ``--by`` comparison as ``print_comparison`` prints it, under a heading naming the two versions."""
    version_of = BY[by]
    for note in notes:
        console.print(f"[dim]{markup(note)}[/]")
    for step in steps:
        console.rule(f"{markup(step.base.suite)} on {markup(step.base.hardware)}: {by} "
                     f"{markup(version_of(step.base))} → {markup(version_of(step.new))}", align="left")
        print_comparison(console, step.base, step.new, step.changes, threshold_pct, every_pair)
