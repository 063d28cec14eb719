"""Checks for issue 10: a suite fanned out over a local Ray cluster with two fake GPUs, and crashes under each executor.

1. The same pairs measured serially (``--executor local`` on CPU: one slot)
   and as Ray tasks on a local cluster with two fake GPUs (one task per case,
   one GPU per task, so two cases at a time): wall times, their ratio, and
   whether every record is present, ok, its case's pairs measured by one task,
   and placed on its own GPU whenever two tasks overlapped.
2. A crashing implementation (``bad.abort``) next to a good one under the
   local, Ray and Slurm (submitit's local cluster) executors: each yields its
   record, and nothing hangs.

The pairs are ``--cases`` cases x ``--impls`` of ``fleet.sleepy`` and its twins
(tests/fixture_plugins/fleet.py): correct attention that sleeps in each call, so a pair's time is waiting, not CPU, and
two pairs overlap on a 2-core machine the way two GPU-bound pairs would on two
GPUs. With CPU-bound pairs the ratio is capped by cores, not by the executor.

    .venv/bin/python benchmarks/executor_speedup.py [--cases 4] [--impls 2] [--pair-seconds 6]

A pair's timing lasts about ``--pair-seconds`` (min_time_s); each call sleeps
1/100 of it (at least 50 ms), since timing stops at 200 samples.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixture_plugins"
WORKER_ENV = {"PYTHONPATH": os.pathsep.join([str(FIXTURES), os.environ.get("PYTHONPATH", "")]),
              "ATTNBENCH_PLUGIN_MODULES": "fleet,misbehaving"}
os.environ.update(WORKER_ENV)
sys.path.insert(0, str(FIXTURES))

import ray  # noqa: E402

from attnbench.case import Case  # noqa: E402
from attnbench.executors.local import LocalExecutor  # noqa: E402
from attnbench.executors.ray import RayExecutor  # noqa: E402
from attnbench.executors.slurm import SlurmExecutor  # noqa: E402
from attnbench.options import Correctness, Timing  # noqa: E402
from attnbench.plugins import load_registry  # noqa: E402
from attnbench.runner import RunOptions, plan  # noqa: E402


def speedup(n_cases: int, n_impls: int, pair_seconds: float) -> None:
    # Read by fleet.sleepy in the workers, which inherit os.environ (local) or get WORKER_ENV (Ray).
    sleep = str(max(0.05, pair_seconds / 100))
    os.environ["ATTNBENCH_FLEET_SLEEP_S"] = WORKER_ENV["ATTNBENCH_FLEET_SLEEP_S"] = sleep
    registry = load_registry()
    cases = [Case(1, 2, 2, 32 + 16 * i, 32 + 16 * i, 16) for i in range(n_cases)]
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=pair_seconds, repeats=3, warmup=1), timeout_s=600)
    impls = registry.select(include=["fleet.sleepy*"])[:n_impls]
    todo, _ = plan(cases, impls, options)
    n_pairs = len(todo)

    start = time.monotonic()
    with LocalExecutor(options) as executor:
        serial = list(executor.submit(todo))
    serial_s = time.monotonic() - start

    start = time.monotonic()
    ray.init(num_cpus=2, num_gpus=2, resources={"accelerator_type:H100": 2}, include_dashboard=False,
             log_to_driver=False)
    ray_start_s = time.monotonic() - start
    start = time.monotonic()
    with RayExecutor(options, accelerator_type="H100", num_gpus=1, env=WORKER_ENV) as executor:
        fanned = list(executor.submit(todo))
    ray_s = time.monotonic() - start
    ray.shutdown()

    print(f"{n_cases} cases x {len(impls)} implementations (fleet.sleepy and twins, {sleep} s per call) = {n_pairs} "
          f"pairs, timed for {pair_seconds:g} s each (min_time_s), 1 process per pair; 1 Ray task per case")
    print(f"  serial (local, one slot):     {serial_s:6.1f} s")
    print(f"  Ray, 2 fake GPUs:             {ray_s:6.1f} s   (+ {ray_start_s:.1f} s to start Ray, not counted)")
    print(f"  ratio Ray / serial:           {ray_s / serial_s:6.2f}")
    busy = sum(r.where["finished"] - r.where["started"] for r in fanned)
    overhead = (2 * ray_s - busy) / n_cases
    print(f"  per Ray task:                 {busy / n_cases:6.1f} s measuring + {overhead:.1f} s else (the first task "
          "on each lane starts its Ray process's torch and its worker; later ones take the last one's worker)")
    print(f"  ratio without that start-up:  {busy / 2 / serial_s:6.2f}   (measuring time over two lanes / serial wall)")
    for name, records in (("serial", serial), ("ray", fanned)):
        assert len(records) == n_pairs and all(r.status == "ok" for r in records), (name, [r.reason for r in records])
    overlapping = [(a, b) for i, a in enumerate(fanned) for b in fanned[i + 1:]
                   if a.where["started"] < b.where["finished"] and b.where["started"] < a.where["finished"]]
    assert overlapping, "no two Ray tasks overlapped"
    assert all(a.where["cuda_visible_devices"] != b.where["cuda_visible_devices"] for a, b in overlapping)
    tasks = {}
    for r in fanned:
        tasks.setdefault(r.case["seq_q"], set()).add((r.where["job"]["task_id"], r.where["cuda_visible_devices"]))
    assert all(len(placed) == 1 for placed in tasks.values()), "a case's pairs were measured by several tasks"
    kept = took_over(fanned)
    print(f"  tasks that took over the worker their Ray process's previous task left: {kept} of {n_cases - 2} "
          "possible (the first task on each of two lanes starts its own)")
    devices = sorted({r.where["cuda_visible_devices"] for r in fanned})
    print(f"  every record present and ok; {len(overlapping)} overlapping pairs of tasks, each on two distinct "
          f"GPUs (CUDA_VISIBLE_DEVICES used: {', '.join(devices)})")


def took_over(records: list) -> int:
    """Tasks whose worker pids are those of the previous task in the same Ray worker process."""
    first_of_task = {}
    for r in sorted(records, key=lambda r: r.where["started"]):
        first_of_task.setdefault(r.where["job"]["task_id"], r)
    last, kept = {}, 0
    for r in first_of_task.values():
        process = r.where["job"]["worker_id"]
        kept += process in last and last[process] == r.where["pids"]
        last[process] = r.where["pids"]
    return kept


def crashes() -> None:
    registry = load_registry()
    options = RunOptions(correctness=Correctness(seeds=3), timing=Timing(processes=1, min_time_s=0.05, repeats=3, warmup=1), timeout_s=60)
    todo, _ = plan([Case(1, 2, 2, 32, 32, 16)], registry.select(include=["eager", "bad.abort"]), options)
    with tempfile.TemporaryDirectory() as folder:
        executors = {
            "local": lambda: LocalExecutor(options),
            "ray": lambda: RayExecutor(options, address=None, num_gpus=0, env=WORKER_ENV),
            "slurm (submitit local)": lambda: SlurmExecutor(options, Path(folder), device="cpu", cluster="local",
                                                            env=WORKER_ENV, poll_s=0.3),
        }
        print("bad.abort next to eager, under each executor:")
        for name, make in executors.items():
            start = time.monotonic()
            with make() as executor:
                records = {r.impl: r for r in executor.submit(todo)}
            statuses = {impl: r.status for impl, r in sorted(records.items())}
            assert statuses == {"bad.abort": "crashed", "eager": "ok"}, (name, statuses)
            print(f"  {name:24s} {statuses} in {time.monotonic() - start:5.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--impls", type=int, default=2, choices=range(1, 5), help="implementations per case (1-4)")
    parser.add_argument("--pair-seconds", type=float, default=6.0)
    args = parser.parse_args()
    speedup(args.cases, args.impls, args.pair_seconds)
    crashes()


if __name__ == "__main__":
    main()
