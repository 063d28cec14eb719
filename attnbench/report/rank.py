"""Leaderboard math: score, interval, coverage, pass rate, memory ratio, ranks and ties.

Score: the geometric mean, over the cases an implementation ran correctly
(status ``ok``), of baseline time / its time, the baseline measured in the same
run. A case it got wrong earns no speed credit: it is left out of the score and
counts against the pass rate instead.

Interval: a seeded bootstrap over cases that also redraws each case's timing.
Each replicate resamples the cases with replacement and adds to every picked
log-ratio a normal draw whose standard deviation is that case's timing noise,
``hypot(log1p(noise(impl)), log1p(noise(baseline)))`` with ``noise`` the larger
of IQR/median and the spread between worker processes (report.speedup). Taking
the noise as one standard deviation is deliberately wide (the median of many
samples is tighter than one sample's IQR, but process-to-process spread does not
average away), so the interval errs towards "tied". The interval is the central
``CONFIDENCE`` range of the replicates' geometric means. With one case the
interval is the timing noise alone.

Ranks: rank = 1 + the number of implementations of the same section whose whole
interval lies above this one's; implementations whose intervals overlap are
tied (``tied_with``). Approximate implementations (``exact=false``) are ranked
in their own section; ``ranked=false`` ones (the float64 reference) are listed,
not ranked; those that cannot run on the board's device at all (every record
``unsupported`` for a reason starting "device ") are named apart, not listed
as rows of no coverage.

An ``implausible`` record (timed faster than the roofline floor of the
machine's measured ceilings allows) earns no speed credit: it is kept out of
the score, fast_p and the win rate, counts against the pass rate as the
failure results.FAILURES makes it, and is counted on its implementation's
line so that the board says why.
"""

from __future__ import annotations

import math
import statistics
import zlib
from dataclasses import dataclass, field

import numpy as np

from attnbench.report.fastp import fast_p, wins
from attnbench.report.runs import Entry, Group
from attnbench.report.speedup import noise
from attnbench.results import FAILURES

CONFIDENCE = 0.95
REPLICATES = 1000
SEED = 0
"""Base seed of the bootstrap; each implementation's stream also hashes its name, so order does not matter."""

ATTEMPTED = ("ok", *FAILURES)
"""Statuses that count towards the pass rate: a verdict was reached or the implementation failed on its own.
``unsupported``, ``skipped`` (memory budget) and ``oom`` are resource or capability limits, not wrong answers;
``implausible`` (a time faster than the hardware allows) is one of the failures."""
OFF_DEVICE = "device "
"""How the reason of a record starts when its implementation does not run on the case's device at all."""


@dataclass
class Standing:
    """One implementation's line on a leaderboard."""

    impl: str
    plugin: str
    version: str
    exact: bool
    cases_total: int
    cases_supported: int
    cases_scored: int
    passed: int
    attempted: int
    score: float | None = None
    low: float | None = None
    high: float | None = None
    memory_ratio: float | None = None
    rel_err_median: float | None = None
    rel_err_max: float | None = None
    rank: int | None = None
    tied_with: list[str] = field(default_factory=list)
    speedups: list[float] = field(default_factory=list)
    """Speedup over the baseline of each scored case, sorted: what fast_p counts."""
    wins: int = 0
    implausible: int = 0

    @property
    def coverage(self) -> float:
        return self.cases_supported / self.cases_total if self.cases_total else 0.0

    @property
    def win_rate(self) -> float:
        return self.wins / self.cases_total if self.cases_total else 0.0

    @property
    def fast_1(self) -> float:
        return fast_p(self.speedups, self.cases_total, 1.0)

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.attempted if self.attempted else None


@dataclass
class Leaderboard:
    """A group's exact and approximate sections, and the implementations listed but not ranked."""

    group: Group
    exact: list[Standing]
    approximate: list[Standing]
    unranked: list[Standing]
    off_device: list[tuple[str, str]] = field(default_factory=list)
    """(implementation, reason) of those that cannot run on the group's device at all."""

    @property
    def implausible(self) -> int:
        return sum(s.implausible for s in (*self.exact, *self.approximate, *self.unranked))


def case_speedup(entry: Entry) -> tuple[float, float] | None:
    """(log of baseline time / time, its noise as a log standard deviation) for a correct, timed case with a correct baseline."""
    rec, base = entry.record, entry.baseline
    if rec.status != "ok" or base is None or base.status != "ok":
        return None
    t, tb = rec.metrics.get("time_ms_median"), base.metrics.get("time_ms_median")
    if not t or not tb:
        return None
    if rec is base:
        return 0.0, 0.0
    return math.log(tb / t), math.hypot(math.log1p(noise(rec)), math.log1p(noise(base)))


def bootstrap_interval(log_ratios: list[float], sigmas: list[float], seed: int) -> tuple[float, float]:
    """Central CONFIDENCE interval of the geometric mean (as ratios), resampling cases and redrawing their noise."""
    rng = np.random.default_rng(seed)
    values, variances = np.asarray(log_ratios), np.square(sigmas)
    n = len(values)
    picks = rng.integers(0, n, size=(REPLICATES, n))
    # The mean of n independent normal draws added to the picked cases is one normal draw with
    # standard deviation sqrt(sum of their variances) / n: same distribution, n times fewer draws.
    noise_sd = np.sqrt(variances[picks].sum(axis=1)) / n
    means = values[picks].mean(axis=1) + noise_sd * rng.standard_normal(REPLICATES)
    tail = 50 * (1 - CONFIDENCE)
    low, high = np.percentile(means, [tail, 100 - tail])
    return math.exp(low), math.exp(high)


def geomean(values: list[float]) -> float | None:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else None


def standing(impl: str, entries: list[Entry], cases_total: int) -> Standing:
    """Score and counts of one implementation from its entries in a group."""
    first = entries[0].record
    line = Standing(
        impl=impl, plugin=first.plugin, version=first.version, exact=first.exact, cases_total=cases_total,
        cases_supported=sum(e.record.status != "unsupported" for e in entries), cases_scored=0,
        passed=sum(e.record.status == "ok" for e in entries),
        attempted=sum(e.record.status in ATTEMPTED for e in entries),
        wins=sum(map(wins, entries)), implausible=sum(e.record.status == "implausible" for e in entries),
    )
    log_ratios, sigmas, memory = [], [], []
    for e in entries:
        speed = case_speedup(e)
        if speed is None:
            continue
        log_ratios.append(speed[0])
        sigmas.append(speed[1])
        peak, base_peak = e.record.metrics.get("peak_bytes"), e.baseline.metrics.get("peak_bytes")
        if peak and base_peak:
            memory.append(peak / base_peak)
    errors = sorted(e.record.metrics["rel_err"] for e in entries
                    if e.record.status == "ok" and e.record.metrics.get("rel_err") is not None)
    if errors:
        line.rel_err_median, line.rel_err_max = statistics.median(errors), errors[-1]
    line.memory_ratio = geomean(memory)
    if log_ratios:
        line.cases_scored = len(log_ratios)
        line.speedups = sorted(math.exp(x) for x in log_ratios)
        line.score = math.exp(statistics.fmean(log_ratios))
        line.low, line.high = bootstrap_interval(log_ratios, sigmas, SEED + zlib.crc32(impl.encode()))
    return line


def assign_ranks(section: list[Standing]) -> list[Standing]:
    """Rank by the interval rule (see module doc); best first, the unscored last."""
    scored = [s for s in section if s.score is not None]
    for s in scored:
        s.rank = 1 + sum(o.low > s.high for o in scored if o is not s)
        s.tied_with = [o.impl for o in scored if o is not s and o.low <= s.high and s.low <= o.high]
    unscored = sorted((s for s in section if s.score is None), key=lambda s: s.impl)
    return sorted(scored, key=lambda s: (s.rank, -s.score, s.impl)) + unscored


def off_device(entries: list[Entry]) -> bool:
    """Whether every record says the implementation does not run on the device at all."""
    return all(e.record.status == "unsupported" and e.record.reason.startswith(OFF_DEVICE) for e in entries)


def leaderboard(group: Group) -> Leaderboard:
    """The leaderboard of one group."""
    by_impl: dict[str, list[Entry]] = {}
    for e in group.entries:
        by_impl.setdefault(e.record.impl, []).append(e)
    absent = sorted((impl, entries[0].record.reason) for impl, entries in by_impl.items() if off_device(entries))
    for impl, _ in absent:
        del by_impl[impl]
    lines = {impl: standing(impl, entries, len(group.cases)) for impl, entries in by_impl.items()}
    ranked = {impl for impl, entries in by_impl.items() if entries[0].record.ranked}
    return Leaderboard(
        group=group,
        exact=assign_ranks([s for impl, s in lines.items() if impl in ranked and s.exact]),
        approximate=assign_ranks([s for impl, s in lines.items() if impl in ranked and not s.exact]),
        unranked=sorted((s for impl, s in lines.items() if impl not in ranked), key=lambda s: s.impl),
        off_device=absent,
    )
