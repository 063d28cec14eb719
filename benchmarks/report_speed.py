"""How long does ``attnbench report ... -o`` take on 10,000 records, start-up included? (target: <= 3 s)

Writes two synthetic results files (two machines, half the records each, with
every status, an approximate and an unranked implementation, and out-of-memory
frontiers), then times the command as a subprocess a few times and prints the
seconds of each try, their median, and the page's size.

    python benchmarks/report_speed.py [--records N] [--tries K]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnbench.results import Record, write_results

IMPLS = [(f"impl{i}", True, True) for i in range(9)] + [("approx.lowrank", False, True), ("reference", True, False)]
BASELINE = "impl0"
SEQS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
DTYPES = ("float32", "float16", "bfloat16")
MASKS = ("none", "causal", "sliding_window")
PASSES = ("fwd", "bwd", "fwd+bwd")
HEAD_DIMS = (64, 128, 256)


def cases(count: int) -> list[dict]:
    out = []
    for head_dim, dtype, mask, pass_, seq in itertools.product(HEAD_DIMS, DTYPES, MASKS, PASSES, SEQS):
        out.append({"batch": 1, "heads_q": 16, "heads_kv": 4, "seq_q": seq, "seq_kv": seq, "head_dim": head_dim,
                    "dtype": dtype, "device": "cuda", "mask": mask, "window": 256 if mask == "sliding_window" else None,
                    "scale": None, "pass": pass_})
    return out[:count]


def record(rng: random.Random, impl: str, exact: bool, ranked: bool, case: dict, hardware: str) -> Record:
    seq = case["seq_kv"]
    common = {"impl": impl, "case": case, "plugin": f"plugin.{impl}", "version": "1.0", "exact": exact,
              "ranked": ranked, "hardware": hardware}
    roll = rng.random()
    if impl != BASELINE and roll < 0.05:
        return Record(status="unsupported", reason="head_dim > 128 not supported", **common)
    if impl in ("impl1", "reference") and seq >= 8192:
        return Record(status="oom" if seq == 8192 else "skipped", reason="predicted 80 GiB > budget", **common)
    speed = 1 + int(impl[-1]) / 10 if impl[-1].isdigit() else 2.0
    median = 1e-6 * seq * seq / speed * rng.uniform(0.9, 1.1)
    samples = [median * rng.uniform(0.97, 1.03) for _ in range(2)]
    metrics = {
        "time_ms_median": median, "time_ms_iqr": median * rng.uniform(0.01, 0.05), "time_ms_n": 100,
        "time_ms_process_medians": samples, "process_spread": max(samples) / min(samples) - 1,
        "tflops": 4 * case["head_dim"] * seq * seq * 16 / (median * 1e9), "gbps": 500.0,
        "peak_bytes": seq * seq * (64 if impl == "impl1" else 4), "rel_err": rng.uniform(1e-4, 3e-3) * (30 if not exact else 1),
        "timing_method": "cuda-events+l2-flush",
    }
    status = "incorrect" if impl == "impl8" and roll > 0.9 else "ok"
    return Record(status=status, reason="rel err above the pass rule" if status != "ok" else "", metrics=metrics, **common)


def write_run(path: Path, hardware: str, n_cases: int, seed: int) -> None:
    rng = random.Random(seed)
    records = [record(rng, impl, exact, ranked, case, hardware) for case in cases(n_cases) for impl, exact, ranked in IMPLS]
    run = {"id": path.parent.name, "suite": {"name": "synthetic", "path": "-", "sha256": "-"}, "device": "cuda",
           "hardware": hardware, "baseline": BASELINE, "started": f"2026-01-0{seed + 1}T00:00:00+00:00",
           "finished": None, "attnbench": "synthetic", "command": ["report_speed.py"],
           "environment": {"hostname": f"host{seed}", "torch": "2.13.0"}, "plugins": [], "options": {},
           "resumed_records": 0, "interrupted": False}
    path.parent.mkdir(parents=True)
    write_results(path, run, records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    per_machine = math.ceil(args.records / 2 / len(IMPLS))
    if per_machine > len(cases(10**9)):
        parser.error(f"at most {2 * len(IMPLS) * len(cases(10**9))} records")
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / name / "results.json" for name in ("machine-a", "machine-b")]
        for seed, (path, gpu) in enumerate(zip(files, ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"))):
            write_run(path, gpu, per_machine, seed)
        total = 2 * per_machine * len(IMPLS)
        out = Path(tmp) / "page"
        times = []
        for _ in range(args.tries):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "attnbench", "report", *map(str, files), "-o", str(out)],
                           check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
            print(f"{total} records: {times[-1]:.2f} s")
        size = (out / "index.html").stat().st_size
        print(f"median {statistics.median(times):.2f} s over {args.tries} tries; index.html {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
