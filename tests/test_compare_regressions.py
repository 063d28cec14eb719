"""compare --fail-on-regression: a pair ok in BASE and missing, not ok or untimed in NEW fails CI, listed by name."""

import math

import pytest
from synthetic_results import case, record, write_run

from attnbench.cli import main
from attnbench.compare import BROKE, EXIT_REGRESSION, LOST, NOISE, ONLY_BASE, compare_runs, judge
from attnbench.report.runs import load_runs

C = case(128)


@pytest.fixture
def runs(tmp_path):
    base = write_run(tmp_path / "base", [
        record("steady", C, 1.0), record("vanished", C, 1.0), record("declined", C, 1.0), record("skipped", C, 1.0),
        record("untimed", C, 1.0), record("preempted", C, 1.0), record("was_unsupported", C, status="unsupported"),
    ])
    new = write_run(tmp_path / "new", [
        record("steady", C, 1.0), record("declined", C, status="unsupported"), record("skipped", C, status="skipped"),
        record("untimed", C, ms=None), record("preempted", C, status="preempted"),
    ], started="2026-02-01T00:00:00+00:00")
    return base, new


REGRESSIONS = {"vanished": ONLY_BASE, "declined": BROKE, "skipped": BROKE, "untimed": LOST, "preempted": BROKE}


def test_every_way_of_not_measuring_an_ok_pair_is_a_regression(runs):
    changes = {c.impl: c for c in compare_runs(*load_runs(list(runs)))}
    assert {impl: c.verdict for impl, c in changes.items() if c.regresses(1000)} == REGRESSIONS
    assert changes["steady"].verdict == NOISE and not changes["steady"].regresses(0)
    assert changes["was_unsupported"].verdict == ONLY_BASE and not changes["was_unsupported"].regresses(0)


def test_the_command_fails_and_names_each_regression(runs, capsys):
    base, new = map(str, runs)
    assert main(["compare", base, new, "--fail-on-regression", "50"]) == EXIT_REGRESSION
    out = capsys.readouterr().out
    regressions = out[out.index("Regressions (--fail-on-regression 50)"):]
    for impl in REGRESSIONS:
        assert impl in regressions, impl
    assert "steady" not in regressions and "was_unsupported" not in regressions
    assert "5 regression(s)" in out
    assert main(["compare", base, base, "--fail-on-regression", "0"]) == 0


def test_a_nan_time_is_never_faster():
    base, new = record("x", C, 1.0), record("x", C, 1.0)
    new.metrics["time_ms_median"] = math.nan
    change = judge(base, new)
    assert change.verdict == LOST and change.ratio is None and change.regresses(1000)


def test_a_nan_time_in_a_file_is_refused_on_load(runs, capsys):
    base, new = runs
    new.write_text(new.read_text().replace('"time_ms_median": 1.0', '"time_ms_median": NaN', 1))
    assert main(["compare", str(base), str(new), "--fail-on-regression", "50"]) == 1
    err = capsys.readouterr().err
    assert f"{new}: records[0].metrics.time_ms_median" in err and "got NaN" in err
