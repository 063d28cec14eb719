"""A run survives its implementations: crashes, hangs, memory hogs and exceptions become records."""


import pytest

from attnbench.case import Case
from attnbench.executors.local import LocalExecutor
from attnbench.options import Timing
from attnbench.plugins import load_registry
from attnbench.runner import RunOptions, plan


@pytest.fixture
def fixture_env(fixture_plugins):
    return fixture_plugins("misbehaving,planted_defects")


def test_misbehaving_implementations_end_in_their_status(fixture_env):
    registry = load_registry()
    assert not registry.failures, registry.failures
    impls = registry.select(include=["bad.*", "good.*", "eager", "defect.cached", "defect.mutates_input"])
    case = Case(1, 2, 2, 64, 64, 32)
    options = RunOptions(timing=Timing(processes=1, min_time_s=0.05, repeats=3, warmup=1), timeout_s=8, worker_memory_bytes=2 * 2**30)
    todo, _ = plan([case], impls, options)
    with LocalExecutor(options, env=fixture_env) as executor:
        records = {r.impl: r for r in executor.submit(todo)}
    expected = {
        "bad.abort": "crashed", "bad.segfault": "crashed", "bad.hang": "timeout", "bad.memory_hog": "oom",
        "bad.raises": "error", "bad.out_half_written": "incorrect", "defect.cached": "incorrect",
        "defect.mutates_input": "incorrect", "good.out": "ok", "eager": "ok",
    }
    assert {name: r.status for name, r in records.items()} == expected, {n: r.reason for n, r in records.items()}
    assert "SIGABRT" in records["bad.abort"].reason
    assert "SIGSEGV" in records["bad.segfault"].reason
    assert "kernel launch parameters" in records["bad.raises"].reason
    assert "unwritten" in records["bad.out_half_written"].reason
    # Everyone else's records are complete, whoever crashed before them.
    for name in ("eager", "good.out"):
        m = records[name].metrics
        assert m["time_ms_median"] > 0 and m["rel_err"] < 1e-5 and m["peak_bytes"] > 0
