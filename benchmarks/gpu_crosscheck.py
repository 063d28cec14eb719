"""Independent cross-checks on a GPU: attnbench's timings and peak memory against other clocks and counters.

- ``timing``: attnbench's three CUDA timing modes on one step against triton's benchmarks. Cold
  (L2 flushed before each call) against ``do_bench``, which flushes too (target within +-3%);
  warm and graph-replayed against ``do_bench_cudagraph``, warm replays of one graph of many calls
  with no launch gaps (graph target within +-5%; warm over it is the launch overhead). On a decode
  call (B8, 32 query heads over 8, D128, one query over 8k keys, bf16: about 0.1 ms, memory-bound,
  where launch gaps and L2 show) and an 8k prefill call (B2, H16, D128, bf16, causal: milliseconds,
  compute-bound), for sdpa, sdpa.cudnn, eager and flex (flex last: it compiles per case). Rows are
  saved as they come, so a timeout loses only the row in flight. Published H100 forward figures at
  8-16k, head dim 128, for scale: FlashAttention-2 about 330-370 TFLOP/s, cuDNN about 540-600.
- ``memory``: in a fresh process, attnbench's peak (a run's figure, from its checked call, and the
  bare step's) against the driver's view (``torch.cuda.mem_get_info`` around the call, the caching
  allocator emptied first, so what the call reserved stays visible) and the models
  (``eager_analytic_peak_bytes``, ``predict_peak_bytes``).
- ``summary``: both tables again from a saved JSON, no GPU needed.

    python benchmarks/gpu_crosscheck.py timing --json OUT.json
    python benchmarks/gpu_crosscheck.py memory --json OUT.json     # adds its rows to the same file
    python benchmarks/gpu_crosscheck.py summary OUT.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

import torch

from attnbench.case import Case
from attnbench.measure import memory
from attnbench.measure.correctness import make_inputs
from attnbench.measure.timing import time_cuda
from attnbench.plugins import load_registry
from attnbench.worker import Request, make_step, measure

DECODE = Case(8, 32, 8, 1, 8192, 128, dtype="bfloat16", device="cuda", mask="causal")
PREFILL = Case(2, 16, 16, 8192, 8192, 128, dtype="bfloat16", device="cuda", mask="causal")
TIMING_IMPLS = ["sdpa", "sdpa.cudnn", "eager", "flex"]
REPEATS = 100
MEMORY_CASES = [
    ("eager", Case(1, 8, 8, 4096, 4096, 64, dtype="float32", device="cuda")),  # two 512 MiB score tensors
    ("eager", DECODE),  # k and v repeated to the 32 query heads: 2 x 512 MiB
    ("sdpa", PREFILL),  # fused: the output and per-row statistics only
]
MiB = 2**20


def checked_request(name: str, case: Case, memory: bool = True) -> Request:
    """What a run asks a worker for one pair, timing left out: the checked calls, the peak from one of them."""
    return Request(impl=name, case=case, seed=0, check_correctness=True, measure_memory=memory, measure_time=False)


def _save(path: str | None, key: str, rows: list[dict]) -> None:
    """Put ``rows`` under ``key`` in the JSON at ``path``, keeping what other parts wrote there."""
    if not path:
        return
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data.update(device=torch.cuda.get_device_name(0), torch=torch.__version__, **{key: rows})
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


# --- timing ------------------------------------------------------------------------


def _do_bench_cudagraph(step: Callable[[], object]) -> float:
    from triton.testing import do_bench_cudagraph

    # Capture needs a side stream; triton versions differ in whether they take one themselves.
    with torch.cuda.stream(torch.cuda.Stream()):
        try:
            return do_bench_cudagraph(step, rep=100, return_mode="median")
        except TypeError:  # a triton without return_mode: its mean over 10 replays
            return do_bench_cudagraph(step, rep=100)


def timing_row(name: str, case: Case) -> dict:
    """attnbench's cold, warm and graph medians for one pair, next to triton's two benchmarks."""
    from triton.testing import do_bench

    row: dict = {"impl": name, "case": case.label()}
    impl = load_registry().get(name)
    step = make_step(impl.build(case), impl, case, make_inputs(case, 0))
    for _ in range(5):
        step()
    # Each triton figure sits between two of ours, so clock drift hits both sides alike.
    cold_a = time_cuda(step, repeats=REPEATS, flush_l2=True).median_ms
    row["do_bench_ms"] = do_bench(step, warmup=25, rep=100, return_mode="median")
    cold_b = time_cuda(step, repeats=REPEATS, flush_l2=True).median_ms
    row["cold_ms"] = (cold_a + cold_b) / 2
    row["warm_ms"] = time_cuda(step, repeats=REPEATS, flush_l2=False).median_ms
    graph = time_cuda(step, repeats=REPEATS, flush_l2=False, cuda_graph=True)
    row["graph_ms"], row["graph_notes"] = graph.median_ms, graph.notes
    try:
        row["do_bench_cudagraph_ms"] = _do_bench_cudagraph(step)
    except Exception as exc:  # noqa: BLE001 - a step that cannot be captured is a finding, not a failure
        row["do_bench_cudagraph_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    row["cold_ratio"] = row["cold_ms"] / row["do_bench_ms"]
    if "do_bench_cudagraph_ms" in row:
        row["warm_ratio"] = row["warm_ms"] / row["do_bench_cudagraph_ms"]
        row["graph_ratio"] = row["graph_ms"] / row["do_bench_cudagraph_ms"]
    row["tflops"] = case.flops() / (row["cold_ms"] / 1e3) / 1e12
    row["gbps"] = case.io_bytes() / (row["cold_ms"] / 1e3) / 1e9
    return row


def timing(impls: list[str], path: str | None) -> list[dict]:
    rows: list[dict] = []
    for name in impls:
        for case in (DECODE, PREFILL):
            try:
                row = timing_row(name, case)
            except Exception as exc:  # noqa: BLE001 - report and go on: a missing backend is a row, not a failure
                row = {"impl": name, "case": case.label(), "error": f"{type(exc).__name__}: {exc}"}
            rows.append(row)
            print_timing([row], header=len(rows) == 1)
            _save(path, "timing", rows)
            gc.collect()
            torch.cuda.empty_cache()  # graphs and eager's scores of one row must not crowd the next
    return rows


def print_timing(rows: list[dict], header: bool = True) -> None:
    if header:
        print(f"{'impl':11} {'case':42} {'cold':>9} {'do_bench':>9} {'ratio':>6} {'warm':>9} {'graph':>9} "
              f"{'cudagraph':>9} {'w/cg':>6} {'g/cg':>6} {'TFLOP/s':>8} {'GB/s':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['impl']:11} {r['case']:42} {r['error'][:150]}")
            continue
        cg = r.get("do_bench_cudagraph_ms")
        tail = (f"{cg:7.4f}ms {r['warm_ratio']:6.3f} {r['graph_ratio']:6.3f}" if cg is not None
                else f"{'failed':>9} {'':6} {'':6}")
        print(f"{r['impl']:11} {r['case']:42} {r['cold_ms']:7.4f}ms {r['do_bench_ms']:7.4f}ms {r['cold_ratio']:6.3f} "
              f"{r['warm_ms']:7.4f}ms {r['graph_ms']:7.4f}ms {tail} {r['tflops']:8.1f} {r['gbps']:7.0f}")
        for note in r.get("graph_notes") or []:
            print(f"{'':11} graph: {note}")
        if "do_bench_cudagraph_error" in r:
            print(f"{'':11} do_bench_cudagraph: {r['do_bench_cudagraph_error'][:150]}")


# --- memory --------------------------------------------------------------------------


def _free_bytes() -> int:
    gc.collect()
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def memory_row(name: str, case: Case) -> dict:
    """One pair's peak as attnbench, the driver and the models see it; run in a process of its own."""
    impl = load_registry().get(name)
    torch.cuda.empty_cache()
    free_start = _free_bytes()
    step = make_step(impl.build(case), impl, case, make_inputs(case, 0))
    step()  # one-time allocations (cuBLAS workspaces, modules) are no part of the call
    torch.cuda.empty_cache()
    free_ready = _free_bytes()
    out = step()
    # The caching allocator keeps what the call reserved (to 2 MiB segments): the driver sees its peak.
    free_after = _free_bytes()
    del out
    step_peak = memory.peak_bytes_cuda(step)
    del step
    torch.cuda.empty_cache()
    reply = measure(impl, checked_request(name, case))
    row = {
        "impl": name, "case": case.label(), "status": reply["status"], "reason": reply["reason"],
        "run_bytes": reply["metrics"].get("peak_bytes"), "step_bytes": step_peak,
        "driver_call_bytes": free_ready - free_after, "driver_held_bytes": free_start - free_after,
        "analytic_bytes": memory.eager_analytic_peak_bytes(case) if name == "eager" and not case.needs_backward else None,
        "predicted_bytes": memory.predict_peak_bytes(case, impl),
    }
    row["step_vs_driver"] = step_peak / row["driver_call_bytes"] if row["driver_call_bytes"] > 0 else None
    row["step_vs_analytic"] = step_peak / row["analytic_bytes"] if row["analytic_bytes"] else None
    row["predicted_vs_held"] = row["predicted_bytes"] / row["driver_held_bytes"] if row["driver_held_bytes"] > 0 else None
    return row


def memory_child(path: str) -> None:
    rows = []
    for name, case in MEMORY_CASES:
        try:
            rows.append(memory_row(name, case))
        except Exception as exc:  # noqa: BLE001 - one pair's failure is its row
            rows.append({"impl": name, "case": case.label(), "error": f"{type(exc).__name__}: {exc}"})
        gc.collect()
        torch.cuda.empty_cache()
    with open(path, "w") as f:
        json.dump(rows, f)


def memory_rows(path: str | None) -> list[dict]:
    # A fresh process: no graph pools, L2 flush buffers or cached blocks of the timing rows.
    with tempfile.TemporaryDirectory() as tmp:
        child_out = os.path.join(tmp, "rows.json")
        subprocess.run([sys.executable, __file__, "memory-child", child_out], check=True)
        with open(child_out) as f:
            rows = json.load(f)
    print_memory(rows)
    _save(path, "memory", rows)
    return rows


def print_memory(rows: list[dict]) -> None:
    def mib(value: int | None) -> str:
        return f"{value / MiB:9.1f}" if value is not None else f"{'-':>9}"

    def ratio(value: float | None) -> str:
        return f"{value:8.4f}" if value is not None else f"{'-':>8}"

    print(f"{'impl':6} {'case':42} {'run':>9} {'step':>9} {'driver':>9} {'analytic':>9} {'step/drv':>8} "
          f"{'step/ana':>8} {'held':>9} {'predicted':>9} {'pred/held':>9}   (MiB; run, step, driver: above the inputs)")
    for r in rows:
        if "error" in r:
            print(f"{r['impl']:6} {r['case']:42} {r['error'][:150]}")
            continue
        print(f"{r['impl']:6} {r['case']:42} {mib(r['run_bytes'])} {mib(r['step_bytes'])} {mib(r['driver_call_bytes'])} "
              f"{mib(r['analytic_bytes'])} {ratio(r['step_vs_driver'])} {ratio(r['step_vs_analytic'])} "
              f"{mib(r['driver_held_bytes'])} {mib(r['predicted_bytes'])} {ratio(r['predicted_vs_held'])} {r['status']}")


def summary(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    print(f"device: {data.get('device')}  torch {data.get('torch')}")
    if data.get("timing"):
        print_timing(data["timing"])
    if data.get("memory"):
        print_memory(data["memory"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p_timing = sub.add_parser("timing", help="cold, warm and graph timings against do_bench and do_bench_cudagraph")
    p_timing.add_argument("--json", help="write the rows here too (added to what the file holds)")
    p_timing.add_argument("--impl", action="append", default=[], help=f"implementations to time (default {', '.join(TIMING_IMPLS)})")
    p_memory = sub.add_parser("memory", help="peak bytes against the driver's free memory and the models, in a fresh process")
    p_memory.add_argument("--json", help="write the rows here too (added to what the file holds)")
    p_child = sub.add_parser("memory-child")
    p_child.add_argument("out")
    p_summary = sub.add_parser("summary", help="print the tables of a saved JSON")
    p_summary.add_argument("path")
    args = parser.parse_args()
    if args.part == "summary":
        summary(args.path)
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to cross-check", file=sys.stderr)
        return 1
    if args.part == "memory-child":
        memory_child(args.out)
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}  torch {torch.__version__}")
    if args.part == "timing":
        timing(args.impl or TIMING_IMPLS, args.json)
    else:
        memory_rows(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
