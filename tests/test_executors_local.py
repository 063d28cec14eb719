"""The local executor's slots side by side, on real worker processes: two fake GPU slots, CPU cases."""

import time

import pytest

from attnbench.case import Case
from attnbench.executors.local import LocalExecutor
from attnbench.executors.placement import Gpu, Slot
from attnbench.options import Correctness, Timing
from attnbench.plugins import load_registry
from attnbench.runner import RunOptions, plan

# Two slots pinned to two (fake) GPUs, as device_slots makes them on a two-GPU machine.
TWO_GPU_SLOTS = [Slot(i, str(i), Gpu(i, "fake GPU"), i) for i in range(2)]


@pytest.fixture
def fleet_env(fixture_plugins):
    return fixture_plugins("fleet,misbehaving")


def overlap(a, b) -> bool:
    return a.where["started"] < b.where["finished"] and b.where["started"] < a.where["finished"]


def test_cases_spread_over_slots_and_run_at_once(fleet_env):
    impls = load_registry().select(include=["fleet.sleepy"])
    cases = [Case(1, 2, 2, seq, seq, 16) for seq in (32, 48, 64, 80)]
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=0.3, repeats=3, warmup=1))
    todo, _ = plan(cases, impls, options)
    with LocalExecutor(options, env=fleet_env, slots=TWO_GPU_SLOTS) as executor:
        records = list(executor.submit(todo))
    assert sorted(r.case["seq_q"] for r in records) == [32, 48, 64, 80]
    assert all(r.status == "ok" for r in records), [r.reason for r in records]
    by_slot = {}
    for r in records:
        by_slot.setdefault(r.where["cuda_visible_devices"], []).append(r)
        assert r.where["executor"] == "local" and r.where["attempt"] == 1 and r.where["node"]
        assert r.where["environment"]["torch"] and r.hardware == "fake GPU"
        assert "gpu_telemetry" not in r.where  # CPU cases: no GPU was timed, so nothing is read
    assert sorted(by_slot) == ["0", "1"]
    # A slot times one pair at a time; the two slots time theirs at once.
    for slot_records in by_slot.values():
        assert not overlap(*slot_records)
    assert any(overlap(a, b) for a in by_slot["0"] for b in by_slot["1"])


def test_leaving_early_stops_every_slot(fleet_env):
    registry = load_registry()
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=0.05, repeats=3, warmup=1), timeout_s=600)
    quick, _ = plan([Case(1, 2, 2, 32, 32, 16)], registry.select(include=["eager"]), options)
    stuck, _ = plan([Case(1, 2, 2, 48, 48, 16)], registry.select(include=["bad.hang"]), options)
    executor = LocalExecutor(options, env=fleet_env, slots=TWO_GPU_SLOTS)
    with executor:
        records = executor.submit(quick + stuck)
        assert next(records).impl == "eager"  # meanwhile the other slot hangs, for up to 600 s
        start = time.monotonic()
        records.close()
        assert time.monotonic() - start < 10
    assert all(w.proc is None for slot in executor.slots for w in slot.workers)
