"""Memory probes on a GPU: each measures one place where attnbench's memory figures could mislead, and prints what it finds.

- ``retained``: two attnbench worker processes, as one GPU slot runs them for a case; the first
  measures a large eager case and idles. The driver's free memory before, while it idles, and
  after it exits, and whether the second then measures the same case: what one worker's cached
  blocks take from the next.
- ``layouts``: one kernel (sdpa) declared bhsd and, through views, bshd. The run's peak (from a
  checked call) and the bare step's, for both: the runner transposes inputs for bshd outside the
  call, so equal figures mean the transposes stay out of the call's memory as documented, and a
  difference of about q + k + v means they are counted.
- ``reference``: the checked pass a run makes at long decode (B8, 32 query heads over 8, D128,
  one query over 32k and 128k keys, bf16), float64 reference included: its peak allocated bytes,
  what stays allocated after it, its seconds, or the OOM it meets.

    python benchmarks/gpu_memory_probe.py --json OUT.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import replace

import torch
from gpu_crosscheck import DECODE, PREFILL, checked_request

from attnbench.case import Case
from attnbench.implementation import Implementation
from attnbench.measure import memory
from attnbench.measure.correctness import make_inputs
from attnbench.plugins import load_registry
from attnbench.runner import WorkerProcess, call_or_failure
from attnbench.worker import make_step, measure

GiB = 2**30
LAYOUT_CASE = Case(4, 16, 16, 4096, 4096, 128, dtype="bfloat16", device="cuda", mask="causal")
LONG_DECODE = [replace(DECODE, seq_kv=n) for n in (32768, 131072)]
RETAINED_CASE = replace(PREFILL, mask="none")  # eager: two 4 GiB score tensors


def _input_bytes(case: Case) -> int:
    elem = case.dtype.itemsize
    return (case.batch * case.heads_q * case.seq_q + 2 * case.batch * case.heads_kv * case.seq_kv) * case.head_dim * elem


def _settle() -> None:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def bshd_twin(impl: Implementation) -> Implementation:
    """``impl`` declared bshd: it takes bshd tensors and hands the kernel bhsd views of them (no copy)."""

    def build(case: Case):
        fn = impl.build(case)

        def call(q, k, v):
            return fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        return call

    return replace(impl, name=f"{impl.name}.bshd", build=build, layout="bshd")


def layouts() -> list[dict]:
    sdpa = load_registry().get("sdpa")
    rows = []
    for impl in (sdpa, bshd_twin(sdpa)):
        _settle()
        reply = measure(impl, checked_request(impl.name, LAYOUT_CASE))
        step = make_step(impl.build(LAYOUT_CASE), impl, LAYOUT_CASE, make_inputs(LAYOUT_CASE, 0))
        step()
        rows.append({"impl": impl.name, "layout": impl.layout, "case": LAYOUT_CASE.label(), "status": reply["status"],
                     "reason": reply["reason"], "run_bytes": reply["metrics"].get("peak_bytes"),
                     "step_bytes": memory.peak_bytes_cuda(step), "input_bytes": _input_bytes(LAYOUT_CASE)})
        del step
    for r in rows:
        print(f"layout {r['layout']} ({r['impl']}): run peak {_gib(r['run_bytes'])}, step peak {_gib(r['step_bytes'])}, "
              f"q+k+v {_gib(r['input_bytes'])} [{r['status']}] {r['reason'][:120]}")
    if all(r["run_bytes"] is not None for r in rows):
        extra = rows[1]["run_bytes"] - rows[0]["run_bytes"]
        print(f"layout: bshd's run peak exceeds bhsd's by {_gib(extra)} ({extra / rows[0]['input_bytes']:.2f} x q+k+v)")
    return rows


def reference() -> list[dict]:
    sdpa = load_registry().get("sdpa")
    rows = []
    for case in LONG_DECODE:
        _settle()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        reply = measure(sdpa, checked_request("sdpa", case, memory=False))
        torch.cuda.synchronize()
        row = {"case": case.label(), "status": reply["status"], "reason": reply["reason"],
               "seconds": time.perf_counter() - start, "peak_bytes": torch.cuda.max_memory_allocated() - before,
               "retained_bytes": torch.cuda.memory_allocated() - before, "input_bytes": _input_bytes(case),
               "device_bytes": torch.cuda.get_device_properties(0).total_memory}
        rows.append(row)
        print(f"reference at {row['case']}: {row['status']} in {row['seconds']:.1f}s, peak {_gib(row['peak_bytes'])} "
              f"of {_gib(row['device_bytes'])} (q+k+v {_gib(row['input_bytes'])}), still allocated after: "
              f"{_gib(row['retained_bytes'])} {row['reason'][:160]}")
    return rows


def _device_free() -> int:
    """The driver's free bytes on GPU 0, from NVML when present (no CUDA context of ours), else CUDA."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).free
    except Exception:  # noqa: BLE001 - no NVML: CUDA's own view, after its context is made
        return torch.cuda.mem_get_info(0)[0]


def retained() -> dict:
    # The runner's own worker processes and protocol, both started before either measures, as a slot does.
    first, second = WorkerProcess(0), WorkerProcess(1)
    request = checked_request("eager", RETAINED_CASE).to_json()
    try:
        first.ensure_started()
        second.ensure_started()
        idle = _device_free()
        reply_a = call_or_failure(first, request, 300)
        after_first = _device_free()
        reply_b = call_or_failure(second, request, 300)
        after_second = _device_free()
    finally:
        first.kill()
        second.kill()
    time.sleep(1)  # the driver frees a context's memory as the process goes
    row = {"case": RETAINED_CASE.label(), "first_status": reply_a["status"], "first_peak_bytes": reply_a["metrics"].get("peak_bytes"),
           "second_status": reply_b["status"], "second_reason": reply_b["reason"],
           "free_idle": idle, "free_after_first": after_first, "free_after_second": after_second, "free_after_exit": _device_free()}
    row["held_by_idle_worker"] = idle - after_first
    print(f"retained: {row['case']}: first worker {row['first_status']} (peak {_gib(row['first_peak_bytes'])}); idle, it still holds "
          f"{_gib(row['held_by_idle_worker'])} of the device; the second worker then: {row['second_status']} "
          f"{row['second_reason'][:120]}; both hold {_gib(idle - after_second)}; after both exit "
          f"{_gib(idle - row['free_after_exit'])} is missing from the free memory seen before")
    return row


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GiB:.2f} GiB"


# retained first: this process's own cached blocks and references would otherwise crowd the workers.
PROBES = {"retained": retained, "layouts": layouts, "reference": reference}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the findings here too")
    parser.add_argument("--probe", action="append", choices=list(PROBES), help="only these probes (default: all)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to probe", file=sys.stderr)
        return 1
    print(f"device: {torch.cuda.get_device_name(0)}  torch {torch.__version__}")
    found: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for name in args.probe or list(PROBES):
        try:
            found[name] = PROBES[name]()
        except Exception as exc:  # noqa: BLE001 - one probe's failure is its finding; the others still run
            found[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: failed: {found[name]['error']}")
        if args.json:  # after each probe, so a timeout keeps what was found
            with open(args.json, "w") as f:
                json.dump(found, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
