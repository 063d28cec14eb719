"""Does attnbench measure what an independent tool measures? Ratios from one run.

Timing: the same callables (attnbench's timed step for each case) timed by
attnbench's CPU timer and by ``torch.utils.benchmark.Timer.blocked_autorange``,
alternating A, B, A, B so drift hits both; prints ours / theirs per case and
the median ratio (target: within +-5%).

Memory: attnbench's peak for ``eager`` against the analytic figure (two
score-sized tensors plus an output-sized one; B=1, H=8, N=4096, D=64 float32:
1032 MiB; target +-3%), and ``chunked``'s peak as a fraction of eager's
(target <= 1/8).

    python benchmarks/fidelity.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.utils.benchmark as tb

from attnbench.case import Case
from attnbench.measure import memory
from attnbench.measure.correctness import make_inputs
from attnbench.measure.timing import time_cpu, warmup
from attnbench.plugins import load_registry
from attnbench.worker import make_step

CASES = [
    Case(1, 8, 8, 512, 512, 64, mask="none"),
    Case(1, 8, 8, 1024, 1024, 64, mask="causal"),
    Case(2, 8, 2, 512, 1024, 64, mask="causal"),
    Case(1, 8, 8, 2048, 2048, 64, mask="none"),
    Case(1, 8, 8, 1024, 1024, 64, dtype=torch.bfloat16, mask="causal"),
    Case(1, 8, 8, 256, 256, 64, mask="none", pass_="fwd+bwd"),
    # Packed: a ragged training batch, and a paged prefill + decode mix (timed calls pass the call keywords).
    Case(4, 8, 2, 1024, 1024, 64, mask="causal", seqlens_q=(100, 1024, 37, 600), seqlens_kv=(100, 1024, 37, 600)),
    Case(5, 8, 2, 300, 1000, 64, mask="causal", seqlens_q=(300, 1, 1, 1, 1), seqlens_kv=(300, 1000, 77, 513, 40),
         page_size=16),
]
IMPLS = ("eager", "sdpa", "chunked")
ROUNDS = 2


def timing_ratios(quick: bool) -> list[float]:
    registry = load_registry()
    ratios = []
    print(f"{'case':52} {'impl':8} {'attnbench':>11} {'blocked_autorange':>18} {'ratio':>7}")
    for case in CASES[:3] if quick else CASES:
        for name in IMPLS:
            impl = registry.get(name)
            step = make_step(impl.build(case), impl, case, make_inputs(case, 0))
            estimate = warmup(step, 2, "cpu")
            ours, theirs = [], []
            for _ in range(ROUNDS):
                ours.append(time_cpu(step, min_time_s=1.0, first_estimate_s=estimate).median_ms)
                timer = tb.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
                theirs.append(timer.blocked_autorange(min_run_time=1.0).median * 1e3)
            ratio = statistics.median(ours) / statistics.median(theirs)
            ratios.append(ratio)
            print(f"{case.label():52} {name:8} {statistics.median(ours):9.3f}ms {statistics.median(theirs):16.3f}ms {ratio:7.3f}")
    return ratios


def memory_check() -> tuple[float, float]:
    registry = load_registry()
    case = Case(1, 8, 8, 4096, 4096, 64, mask="none")
    inputs = make_inputs(case, 0)
    peaks = {}
    for name in ("eager", "chunked"):
        impl = registry.get(name)
        step = make_step(impl.build(case), impl, case, inputs)
        peaks[name] = memory.peak_bytes_cpu(step)
    analytic = memory.eager_analytic_peak_bytes(case)
    eager_ratio = peaks["eager"] / analytic
    chunked_fraction = peaks["chunked"] / peaks["eager"]
    print(f"\n{case.label()}")
    print(f"eager peak   {peaks['eager'] / 2**20:9.1f} MiB   analytic {analytic / 2**20:.1f} MiB   ratio {eager_ratio:.4f} (target 0.97-1.03)")
    print(f"chunked peak {peaks['chunked'] / 2**20:9.1f} MiB   = {chunked_fraction:.4f} of eager (target <= 0.125)")
    return eager_ratio, chunked_fraction


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three cases only")
    args = parser.parse_args()
    ratios = timing_ratios(args.quick)
    median_ratio = statistics.median(ratios)
    print(f"\nmedian attnbench / blocked_autorange = {median_ratio:.3f} over {len(ratios)} pairs (target 0.95-1.05)")
    eager_ratio, chunked_fraction = memory_check()
    ok = abs(median_ratio - 1) <= 0.05 and abs(eager_ratio - 1) <= 0.03 and chunked_fraction <= 0.125
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
