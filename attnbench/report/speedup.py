"""A record's timing noise, and speedups judged against it: a ratio of two timings inside their noise is no difference."""

from __future__ import annotations

from attnbench.results import Record


def noise(record: Record) -> float:
    """Relative noise of a timing: the larger of IQR/median and the spread between worker processes."""
    m = record.metrics
    if not m.get("time_ms_median"):
        return 0.0
    # null (a non-finite figure, as the writer stores it) counts as no noise measured.
    return max((m.get("time_ms_iqr") or 0.0) / m["time_ms_median"], m.get("process_spread") or 0.0)


def speedup(record: Record, baseline: Record | None) -> tuple[float, bool] | None:
    """(baseline time / record time, significant?) when both were measured; a ratio inside the noise is not significant."""
    if baseline is None or record is baseline:
        return None
    a, b = record.metrics.get("time_ms_median"), baseline.metrics.get("time_ms_median")
    if not a or not b or baseline.status != "ok":
        return None
    ratio = b / a
    return ratio, abs(ratio - 1) > max(noise(record), noise(baseline))
