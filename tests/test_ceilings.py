"""Measured ceilings, the roofline of each record, and times faster than the machine allows."""

import json

import pytest

from attnbench import ceilings
from attnbench.case import Case
from attnbench.executors.local import LocalExecutor
from attnbench.options import Timing
from attnbench.plugins import load_registry
from attnbench.runner import RunOptions, plan


def test_roofline_bound_fraction_and_floor():
    # 1 GFLOP over 10 MB: intensity 100, against 10 TFLOP/s and 1000 GB/s (ridge at 10): compute-bound.
    r = ceilings.roofline(1e9, 1e7, 2e-4, peak_tflops=10, peak_gbps=1000)
    assert r["arithmetic_intensity"] == pytest.approx(100) and r["bound"] == "compute"
    assert r["roofline_fraction"] == pytest.approx(1e-4 / 2e-4)
    assert r["roofline_floor_ms"] == pytest.approx(0.1)
    # Intensity 1: memory-bound; the floor is the bytes over the bandwidth, unless the inputs fit in cache.
    r = ceilings.roofline(1e7, 1e7, 1e-4, peak_tflops=10, peak_gbps=1000)
    assert r["bound"] == "memory" and r["roofline_floor_ms"] == pytest.approx(1e-2)
    cached = ceilings.roofline(1e7, 1e7, 1e-4, peak_tflops=10, peak_gbps=1000, cache_bytes=10**7)
    assert cached["roofline_floor_ms"] == pytest.approx(1e-3)  # only the compute floor binds a cache-resident case
    # A kernel may compute in a faster dtype than the case's: the floor takes the fastest ceiling.
    assert ceilings.roofline(1e9, 1e7, 1.0, peak_tflops=10, peak_gbps=1000, fastest_tflops=100)[
        "roofline_floor_ms"] == pytest.approx(1e-2)
    assert "bound" not in ceilings.roofline(1e9, 1e7, 1.0, peak_tflops=None, peak_gbps=None)


def test_ceilings_are_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(ceilings.CACHE_ENV, str(tmp_path))
    first = ceilings.measured_ceilings("cpu", "test cpu", {"torch": "x"}, ["float32"])
    assert not first["cached"] and first["tflops"]["float32"]["best"] > 0 and first["gbps"]["best"] > 0
    again = ceilings.measured_ceilings("cpu", "test cpu", {"torch": "x"}, ["float32"])
    assert again["cached"] and again["tflops"] == first["tflops"]
    (entry,) = tmp_path.glob("ceilings-*.json")
    entry.write_text("{not json")
    assert not ceilings.measured_ceilings("cpu", "test cpu", {"torch": "x"}, ["float32"])["cached"]
    assert json.loads(entry.read_text())["tflops"]["float32"]["best"] > 0


def test_a_time_below_the_roofline_floor_is_implausible_and_approximations_are_exempt():
    registry = load_registry()
    slow_machine = {"tflops": {"float32": {"best": 1e-6}}, "gbps": {"best": 1e-6}, "last_level_cache_bytes": None}
    options = RunOptions(timing=Timing(processes=1, min_time_s=0.01, repeats=3, warmup=1), ceilings=slow_machine)
    todo, _ = plan([Case(1, 2, 2, 64, 64, 16)], registry.select(include=["eager", "performer.m64"]), options)
    with LocalExecutor(options) as executor:
        records = {r.impl: r for r in executor.submit(todo)}
    assert records["eager"].status == "implausible"
    assert "roofline floor" in records["eager"].reason
    assert records["performer.m64"].status == "ok"  # an approximation does less than the exact work counted
