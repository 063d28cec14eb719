"""The GPU check's scripts where no GPU is: gpu_check.sh's dry run, the cross-check's tables, build_wheels.sh."""

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = [
    "env and nvidia-smi", "install .whl", "timing probe", "memory cross-check", "memory probes",
    "pytest -m gpu (not flex)", "pytest -m gpu (flex)", "attnbench run (long_seq + decode, trimmed)", "summary",
]
CUDA_STEPS = set(STEPS[1:7])


def test_dry_run_announces_every_step_in_order_and_exits_0(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DRY": "1", "PYTHON": sys.executable}
    start = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert elapsed < 60, f"a dry run took {elapsed:.0f}s"
    announced = re.findall(r"^== \[(\d+)/(\d+)\] (.+)$", proc.stdout, flags=re.MULTILINE)
    assert [name for _, _, name in announced] == STEPS
    assert [int(i) for i, _, _ in announced] == list(range(1, len(STEPS) + 1))
    # Each CUDA step says it was skipped, right after its announcement.
    for name in STEPS:
        after = proc.stdout.split(f"] {name}\n", 1)[1].splitlines()[0]
        assert after.startswith("-- skipped: needs CUDA") == (name in CUDA_STEPS), (name, after)
    assert "ok " in proc.stdout and "6 cuda cases" in proc.stdout  # the suite it wrote validates
    # The log holds everything that was printed; OUT stays within what comes back from a device machine.
    files = [p for p in out.rglob("*")]
    assert all(p.is_file() and p.parent == out for p in files) and len(files) <= 8
    assert (out / "gpu_check.log").read_text() == proc.stdout


def test_crosscheck_summary_prints_saved_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_crosscheck

    timing = {"impl": "sdpa", "case": "B8 H32/8 N1x8192 D128 bfloat16 causal fwd", "cold_ms": 0.11, "do_bench_ms": 0.1,
              "cold_ratio": 1.1, "warm_ms": 0.09, "graph_ms": 0.08, "graph_notes": [], "do_bench_cudagraph_ms": 0.08,
              "warm_ratio": 1.125, "graph_ratio": 1.0, "tflops": 0.6, "gbps": 2500.0}
    uncaptured = {**timing, "impl": "flex", "do_bench_cudagraph_error": "RuntimeError: capture failed"}
    del uncaptured["do_bench_cudagraph_ms"], uncaptured["warm_ratio"], uncaptured["graph_ratio"]
    memory = {"impl": "eager", "case": "B1 H8 N4096 D64 float32 none fwd", "status": "ok", "reason": "", "run_bytes": 2**30,
              "step_bytes": 2**30, "driver_call_bytes": 2**30 + 2**21, "driver_held_bytes": 2**31, "analytic_bytes": 2**30,
              "predicted_bytes": 2**31, "step_vs_driver": 0.998, "step_vs_analytic": 1.0, "predicted_vs_held": 1.0}
    path = tmp_path / "crosscheck.json"
    path.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "memory": [memory, {"impl": "sdpa", "case": "x", "error": "OutOfMemoryError: no"}],
                                "timing": [timing, uncaptured, {"impl": "sdpa.cudnn", "case": "x", "error": "Unsupported: GQA"}]}))
    gpu_crosscheck.summary(str(path))
    printed = capsys.readouterr().out
    assert "NVIDIA H100 80GB HBM3" in printed and "1.125" in printed and "capture failed" in printed
    assert "Unsupported: GQA" in printed and "OutOfMemoryError" in printed and "1024.0" in printed


@pytest.mark.slow
def test_build_wheels_makes_attnbench_and_pyperf_wheels_small_enough_to_carry(tmp_path):
    whl = tmp_path / "whl"
    env = {**os.environ, "WHL_DIR": str(whl), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/build_wheels.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in whl.iterdir())
    assert [n.split("-")[0] for n in names] == ["attnbench", "pyperf"], names
    assert sum(p.stat().st_size for p in whl.iterdir()) < 16 * 2**20
    with zipfile.ZipFile(next(whl.glob("attnbench-*.whl"))) as wheel:
        listed = wheel.namelist()
    assert "attnbench/worker.py" in listed and not any("__pycache__" in n for n in listed)
