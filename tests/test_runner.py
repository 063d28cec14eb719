"""The runner end to end in worker processes: planted defects are caught, good implementations pass."""


import pytest

from attnbench.case import Case
from attnbench.plugins import load_registry
from attnbench.runner import LocalExecutor, RunOptions, plan


@pytest.fixture
def defect_env(fixture_plugins):
    return fixture_plugins("planted_defects")


def test_planted_defects_come_out_incorrect(defect_env):
    registry = load_registry()
    impls = registry.select(include=["defect.*", "eager", "sdpa"])
    case = Case(2, 4, 2, 64, 96, 32, mask="causal")
    options = RunOptions(processes=1, min_time_s=0.05, min_samples=3)
    todo, settled = plan([case], impls, options)
    assert not settled
    with LocalExecutor(options, env=defect_env) as executor:
        records = {r.impl: r for r in executor.submit(todo)}
    assert records["eager"].status == "ok" and records["sdpa"].status == "ok"
    for name in ("defect.wrong_scale", "defect.leaky_causal", "defect.batch_bug", "defect.all_zeros",
                 "defect.cached", "defect.wrong_shape", "defect.nan", "defect.mutates_input"):
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
    options = RunOptions(processes=2, min_time_s=0.05, min_samples=3, seeds=3)
    todo, _ = plan([case], registry.select(include=["eager", "sdpa"]), options)
    with LocalExecutor(options) as executor:
        records = list(executor.submit(todo))
    for r in records:
        assert r.status == "ok", r.reason
        assert len(r.metrics["time_ms_process_medians"]) == 2
        assert len(set(r.where["pids"])) == 2
        assert r.metrics["time_ms_n"] >= 6
        assert r.metrics["correctness_seeds"] == 3
