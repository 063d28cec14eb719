"""The runner end to end in worker processes: planted defects are caught, good implementations pass."""


import pytest

from attnbench.case import Case
from attnbench.executors.local import LocalExecutor, merge_correctness, trials_for_process
from attnbench.options import Correctness, Timing
from attnbench.plugins import load_registry
from attnbench.runner import RunOptions, plan


@pytest.fixture
def defect_env(fixture_plugins):
    return fixture_plugins("planted_defects")


def test_planted_defects_come_out_incorrect(defect_env):
    registry = load_registry()
    impls = registry.select(include=["defect.*", "eager", "sdpa"])
    case = Case(2, 4, 2, 64, 96, 32, mask="causal")
    options = RunOptions(timing=Timing(processes=1, min_time_s=0.05, repeats=3, warmup=1))
    todo, settled = plan([case], impls, options)
    assert not settled
    with LocalExecutor(options, env=defect_env) as executor:
        records = {r.impl: r for r in executor.submit(todo)}
    assert records["eager"].status == "ok" and records["sdpa"].status == "ok"
    for name in ("defect.wrong_scale", "defect.leaky_causal", "defect.batch_bug", "defect.all_zeros",
                 "defect.cached", "defect.wrong_shape", "defect.nan", "defect.mutates_input", "defect.rare_input"):
        assert records[name].status == "incorrect", (name, records[name].status, records[name].reason)
        assert records[name].reason
    assert "NaN" in records["defect.nan"].reason
    assert "shape" in records["defect.wrong_shape"].reason
    assert "input q" in records["defect.mutates_input"].reason
    # Errors are numbers, not only verdicts; an incorrect implementation is still timed.
    assert records["defect.wrong_scale"].metrics["rel_err"] > 1e-3
    assert records["defect.wrong_scale"].metrics["time_ms_median"] > 0
    assert records["eager"].metrics["rel_err"] < 1e-5


def test_two_processes_pool_samples_and_report_spread():
    registry = load_registry()
    case = Case(1, 2, 2, 64, 64, 32)
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=2, min_time_s=0.05, repeats=3, warmup=1))
    todo, _ = plan([case], registry.select(include=["eager", "sdpa"]), options)
    with LocalExecutor(options) as executor:
        records = list(executor.submit(todo))
    for r in records:
        assert r.status == "ok", r.reason
        assert len(r.metrics["time_ms_process_medians"]) == 2
        assert len(set(r.where["pids"])) == 2
        assert r.metrics["time_ms_n"] >= 6
        assert r.metrics["correctness_seeds"] == 3


def test_correctness_trials_spread_over_processes_still_judge_every_seed(defect_env):
    # The third seed is checked in the second process (its warm-up): a bug only it triggers must still count.
    registry = load_registry()
    case = Case(1, 2, 2, 64, 64, 32)
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=2, min_time_s=0.05, repeats=3, warmup=1))
    todo, _ = plan([case], registry.select(include=["defect.rare_input", "defect.cached", "eager"]), options)
    with LocalExecutor(options, env=defect_env) as executor:
        records = {r.impl: r for r in executor.submit(todo)}
    rare = records["defect.rare_input"]
    assert rare.status == "incorrect" and rare.reason.startswith("process 2: out:") and "seed 2" in rare.reason
    assert rare.metrics["rel_err"] == pytest.approx(0.01, rel=1e-3)
    assert rare.metrics["correctness_seeds"] == 3
    # Process 0 still sees two seeds, so an output cached across calls is caught there.
    assert records["defect.cached"].status == "incorrect"
    assert records["eager"].status == "ok" and records["eager"].metrics["correctness_seeds"] == 3


@pytest.mark.parametrize("seeds, processes, expected", [
    (3, 2, [[0, 1], [2]]), (3, 3, [[0, 1], [2], []]), (1, 2, [[0], []]), (5, 2, [[0, 1, 2, 3], [4]]),
    (5, 4, [[0, 1], [4], [3], [2]]), (3, 1, [[0, 1, 2]]),
])
def test_trials_for_process(seeds, processes, expected):
    got = [trials_for_process(p, seeds, processes) for p in range(processes)]
    assert got == expected
    assert sorted(t for trials in got for t in trials) == list(range(seeds))


def test_merge_correctness_keeps_the_worse_trial_per_tensor():
    into = {"rel_err": 1e-6, "max_abs_err": 1e-5, "baseline_rel_err": 1e-6, "dq_rel_err": 0.5, "correctness_seeds": 2}
    merge_correctness(into, {"rel_err": 2e-6, "max_abs_err": 3e-6, "baseline_rel_err": 1e-6, "dq_rel_err": 0.1,
                             "dq_max_abs_err": 1.0, "correctness_seeds": 1})
    assert into == {"rel_err": 2e-6, "max_abs_err": 3e-6, "baseline_rel_err": 1e-6, "dq_rel_err": 0.5,
                    "correctness_seeds": 3}
    merge_correctness(into, {"rel_err": 1e-9, "nonfinite": 4, "max_abs_err": float("nan")})
    assert into["nonfinite"] == 4 and into["rel_err"] == 1e-9


def test_a_slow_pair_costs_three_checked_calls_and_the_timed_samples(fixture_plugins, tmp_path, monkeypatch):
    # Each process's first call is a checked one and doubles as its warm-up; a checked call of
    # 0.25 s or more also replaces the calibration call, so nothing runs untimed and unchecked.
    log = tmp_path / "calls"
    monkeypatch.setenv("ATTNBENCH_COUNT_FILE", str(log))
    env = fixture_plugins("counting")
    case = Case(1, 2, 2, 32, 32, 16)
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=2, min_time_s=0.1, repeats=2, warmup=1))
    todo, _ = plan([case], load_registry().select(include=["count.slow"]), options)
    with LocalExecutor(options, env=env) as executor:
        (record,) = executor.submit(todo)
    assert record.status == "ok", record.reason
    first, second = record.where["pids"]
    calls = log.read_text().split()
    assert calls.count(str(first)) == 2 + 2 and calls.count(str(second)) == 1 + 2
    assert record.metrics["time_ms_n"] == 4 and record.metrics["correctness_seeds"] == 3
