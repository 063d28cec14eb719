"""Measured ceilings, the roofline of each record, and times faster than the machine allows."""

import json

import pytest

from attnbench import ceilings
from attnbench.case import Case
from attnbench.cli import main
from attnbench.results import Record


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


def _timed(impl: str, ms: float, exact: bool = True) -> Record:
    case = Case(1, 8, 8, 1024, 1024, 64).to_dict()  # 2.1 GFLOP forward
    return Record(impl=impl, case=case, status="ok", reason="", exact=exact,
                  metrics={"time_ms_median": ms, "time_ms_iqr": 0.01 * ms, "time_ms_n": 10})


SLOW = {"tflops": {"float32": {"best": 0.1}}, "gbps": {"best": 10.0}, "last_level_cache_bytes": 2**40}


def test_a_time_below_the_roofline_floor_is_implausible_and_approximations_are_exempt():
    judge = ceilings.RooflineJudge(SLOW)  # floor: 2.15 GFLOP / 0.1 TFLOP/s = 21.5 ms
    honest = judge.judge(_timed("honest", 30.0))
    assert honest.status == "ok" and honest.metrics["roofline_fraction"] == pytest.approx(21.47 / 30, rel=1e-3)
    cheat = judge.judge(_timed("cheat", 1.0))
    assert cheat.status == "implausible" and "roofline floor 21.47 ms" in cheat.reason
    assert judge.judge(_timed("approx", 1.0, exact=False)).status == "ok"


def test_ceilings_are_measured_again_before_a_record_is_called_implausible():
    calls = []

    def remeasure(previous):
        calls.append(previous)
        return ceilings.higher(previous, {"tflops": {"float32": {"best": 10.0}}, "gbps": {"best": 100.0}})

    judge = ceilings.RooflineJudge(SLOW, remeasure=remeasure)
    # 5 ms beats the cached (busy-machine) ceiling, not the one measured now: honest, and measured once only.
    assert judge.judge(_timed("fast", 5.0)).status == "ok"
    assert judge.judge(_timed("cheat", 0.01)).status == "implausible"
    assert len(calls) == 1 and judge.ceilings["tflops"]["float32"]["best"] == 10.0


def test_a_run_records_its_ceilings_and_roofline(tmp_path, monkeypatch):
    monkeypatch.setenv(ceilings.CACHE_ENV, str(tmp_path / "cache"))
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: roof\nimplementations: {include: [sdpa]}\nmatrix: {seq: [64]}\n"
                     "timing: {warmup: 1, min_time_s: 0.01, repeats: 3}\n")
    assert main(["run", str(suite), "--output", str(tmp_path / "out.json"), "--quiet"]) == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["run"]["ceilings"]["measured"]["tflops"]["float32"]["best"] > 0
    (record,) = [r for r in data["records"] if r["status"] == "ok"]
    assert 0 < record["metrics"]["roofline_fraction"] and record["metrics"]["bound"] in ("compute", "memory")


def test_fp8_gets_no_measured_ceiling(tmp_path, monkeypatch):
    from attnbench import ceilings
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["dtypes"] = cmd[cmd.index("--dtypes") + 1]
        raise RuntimeError("stop here")
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ceilings.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="stop here"):
        ceilings.measured_ceilings("cpu", "cpu-x", {}, ["bfloat16", "float8_e4m3fn", "float8_e5m2"], refresh=True)
    assert seen["dtypes"] == "bfloat16"
