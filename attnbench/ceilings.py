"""The machine's own ceilings: achievable matmul TFLOP/s per dtype and memory bandwidth, measured.

A published peak says what a card could do; these say what this machine,
with this torch, does: a large square matmul per dtype and a large copy,
timed with ``attnbench.measure.timing`` like any implementation. They are
measured in a worker process (``python -m attnbench.ceilings``, so the parent
never touches the device), cached under the user's cache directory per
hardware fingerprint, and stored in the run beside the published peaks.
The roofline of every record (``roofline``) is drawn against them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from attnbench.case import FP8_DTYPES, Case
from attnbench.results import Record

CACHE_ENV = "ATTNBENCH_CACHE_DIR"
"""Where measured ceilings are kept (default: $XDG_CACHE_HOME/attnbench, else ~/.cache/attnbench)."""
IMPLAUSIBLE_FACTOR = 0.9
"""A time below this fraction of the roofline floor is faster than the machine allows: implausible."""
CACHE_RESIDENT_FACTOR = 4
"""Inputs smaller than this many last-level caches may be served from cache, faster than memory: no memory
floor is claimed for them (a cold-cache bandwidth says nothing about a warm working set)."""
MATMUL_SIZE = {"cpu": 1024, "cuda": 8192}
"""Square matmul side per device: seconds on a CPU core pair, ~ms on a datacenter GPU, both far from launch-bound."""
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}
"""Bytes copied to measure bandwidth: well beyond any cache."""
MEASURE_TIMEOUT_S = 300


def measure(device: str, dtypes: list[str], min_time_s: float = 0.3) -> dict:
    """Matmul TFLOP/s per dtype and copy GB/s on ``device`` (this process), each the best and the median of
    its samples, with the relative IQR as spread. The best is the ceiling: a bound is what was reached."""
    import torch

    from attnbench.case import DTYPES
    from attnbench.measure.timing import iqr, time_cpu, time_cuda, warmup

    def run(fn) -> list[float]:
        estimate = warmup(fn, 2, device)
        if device == "cuda":
            return time_cuda(fn, repeats=50, flush_l2=False).samples_ms
        return time_cpu(fn, min_time_s=min_time_s, min_samples=5, first_estimate_s=estimate).samples_ms

    def summary(samples_ms: list[float], work: float, unit: float) -> dict:
        rates = [work / (ms / 1e3) / unit for ms in samples_ms]
        return {"best": max(rates), "median": statistics.median(rates),
                "spread": iqr(samples_ms) / statistics.median(samples_ms)}

    n = MATMUL_SIZE[device]
    tflops = {}
    for name in dtypes:
        a = torch.randn(n, n, device=device).to(DTYPES[name])
        b = torch.randn(n, n, device=device).to(DTYPES[name])
        tflops[name] = summary(run(lambda a=a, b=b: a @ b), 2 * n**3, 1e12)
        del a, b
    count = COPY_BYTES[device] // 4
    src = torch.ones(count, device=device)
    dst = torch.empty_like(src)
    gbps = summary(run(lambda: dst.copy_(src)), 2 * count * 4, 1e9)  # read the source, write the destination
    return {"tflops": tflops, "gbps": gbps, "matmul_size": n, "copy_bytes": count * 4,
            "last_level_cache_bytes": last_level_cache_bytes(device), "threads": torch.get_num_threads()}


def last_level_cache_bytes(device: str) -> int | None:
    """The largest cache between the compute and memory: the CPU's L3 (or L2), the GPU's L2."""
    if device == "cuda":
        import torch

        return getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", None) or None
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes) if sizes else None


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attnbench"


def cache_key(device: str, hardware: str, software: dict, dtypes: list[str], threads: int | None) -> str:
    """One cached measurement per device, hardware name, torch build, thread count and dtype set."""
    text = json.dumps({"device": device, "hardware": hardware, "software": software, "dtypes": sorted(dtypes),
                       "threads": threads}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measured_ceilings(device: str, hardware: str, software: dict, dtypes: list[str], *, refresh: bool = False,
                      env: dict[str, str] | None = None, keep_higher: dict | None = None) -> dict:
    """The ceilings for this machine: from the cache, else measured now in a worker process (and cached).

    ``env`` is the workers' environment (threads, visible GPU): the ceilings
    are measured under what the implementations run under. ``keep_higher``:
    ceilings measured before, merged in entry by entry (a ceiling is the best
    ever reached: a measurement on a busy machine must not lower it).

    fp8 dtypes are left out: a plain ``a @ b`` in fp8 is no fp8 kernel (on the CPU it is not one at all), so
    its rate would be no ceiling; fp8 cases get a roofline only from ``--peak-tflops``.
    """
    dtypes = [d for d in dtypes if d not in FP8_DTYPES]
    env = dict(os.environ if env is None else env)
    threads = int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS", "").isdigit() else None
    path = cache_dir() / f"ceilings-{cache_key(device, hardware, software, dtypes, threads)}.json"
    if not refresh and path.exists():
        try:
            cached = json.loads(path.read_text())
            if _valid(cached):
                return {**cached, "cached": True}
        except (OSError, ValueError):
            pass  # an unreadable cache entry is measured again
    done = subprocess.run([sys.executable, "-m", "attnbench.ceilings", "--device", device, "--dtypes", ",".join(dtypes)],
                          capture_output=True, text=True, env=env, timeout=MEASURE_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"measuring the ceilings failed: {done.stderr.strip()[-400:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not _valid(result):
        raise RuntimeError("measuring the ceilings gave no usable figures")
    if keep_higher:
        result = higher(keep_higher, result)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: v for k, v in result.items() if k != "cached"}))
    except OSError:
        pass  # no cache is a slower next run, not a failed one
    return {**result, "cached": False}


def higher(old: dict, new: dict) -> dict:
    """``new`` with each ceiling replaced by ``old``'s where that one is higher."""
    merged = {**new, "tflops": dict(new["tflops"])}
    for name, entry in old.get("tflops", {}).items():
        if name not in merged["tflops"] or entry["best"] > merged["tflops"][name]["best"]:
            merged["tflops"][name] = entry
    if old.get("gbps", {}).get("best", 0) > new["gbps"]["best"]:
        merged["gbps"] = old["gbps"]
    return merged


def _valid(data: object) -> bool:
    try:
        rates = [v["best"] for v in data["tflops"].values()] + [data["gbps"]["best"]]
    except (KeyError, TypeError, AttributeError):
        return False
    return all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in rates)


def roofline(flops: float, io_bytes: float, seconds: float, *, peak_tflops: float | None, peak_gbps: float | None,
             fastest_tflops: float | None = None, cache_bytes: int | None = None) -> dict:
    """A record's place under the roofline: intensity, bound, achieved fraction of the attainable rate, and the floor.

    ``peak_tflops`` is the case dtype's ceiling, ``fastest_tflops`` the highest
    of any dtype (a kernel may compute half inputs in a wider type, or fp32 in
    TF32: the floor must not call those impossible). The memory floor counts only
    when the inputs cannot sit in cache.
    """
    out: dict = {"arithmetic_intensity": flops / io_bytes if io_bytes else None}
    if not (peak_tflops and peak_gbps and io_bytes and seconds > 0):
        return out
    compute_s, memory_s = flops / (peak_tflops * 1e12), io_bytes / (peak_gbps * 1e9)
    out["bound"] = "compute" if compute_s >= memory_s else "memory"
    out["roofline_fraction"] = max(compute_s, memory_s) / seconds
    floor_s = flops / ((fastest_tflops or peak_tflops) * 1e12)
    if cache_bytes is None or io_bytes > CACHE_RESIDENT_FACTOR * cache_bytes:
        floor_s = max(floor_s, memory_s)
    out["roofline_floor_ms"] = floor_s * 1e3
    return out


class RooflineJudge:
    """Puts each timed record under this machine's roofline and flags the ones faster than it allows.

    Before calling a record implausible it measures the ceilings once more
    (once per run) and keeps the higher of each: ceilings cached from a busier
    machine than this run's would otherwise condemn honest kernels. Records
    without a time pass unchanged.
    """

    def __init__(self, ceilings: dict | None, *, peak_tflops: float | None = None, peak_gbps: float | None = None,
                 remeasure: Callable[[dict], dict] | None = None) -> None:
        self.ceilings = ceilings
        self.peak_tflops, self.peak_gbps = peak_tflops, peak_gbps
        self._remeasure = remeasure

    def judge(self, record: Record) -> Record:
        seconds = (record.metrics.get("time_ms_median") or 0) / 1e3
        if not seconds or not (self.ceilings or self.peak_tflops):
            return record
        case = Case.from_dict(record.case)
        metrics = {**record.metrics, **self._roofline(case, seconds)}
        if self._too_fast(record, metrics) and self._remeasure is not None:
            self.ceilings, self._remeasure = self._remeasure(self.ceilings or {}), None
            metrics = {**record.metrics, **self._roofline(case, seconds)}
        if not self._too_fast(record, metrics):
            return dataclasses.replace(record, metrics=metrics)
        floor = metrics["roofline_floor_ms"]
        reason = (f"median {metrics['time_ms_median']:.4g} ms is below {IMPLAUSIBLE_FACTOR:g} x the roofline floor "
                  f"{floor:.4g} ms this machine's measured ceilings allow ({metrics.get('bound', '?')}-bound)")
        return dataclasses.replace(record, metrics=metrics, status="implausible", reason=reason)

    @staticmethod
    def _too_fast(record: Record, metrics: dict) -> bool:
        # Approximations do less than the exact work the case's FLOPs count: no floor binds them.
        floor = metrics.get("roofline_floor_ms")
        return bool(record.status == "ok" and record.exact and floor
                    and metrics["time_ms_median"] < IMPLAUSIBLE_FACTOR * floor)

    def _roofline(self, case: Case, seconds: float) -> dict:
        measured = self.ceilings or {}
        rates = {name: entry["best"] for name, entry in measured.get("tflops", {}).items()}
        peak_tflops = self.peak_tflops or rates.get(case.dtype_name)
        fastest = max([peak_tflops or 0, *rates.values()]) or None
        return roofline(case.flops(), case.io_bytes(), seconds, peak_tflops=peak_tflops,
                        peak_gbps=self.peak_gbps or measured.get("gbps", {}).get("best"), fastest_tflops=fastest,
                        cache_bytes=measured.get("last_level_cache_bytes"))


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure matmul and copy ceilings on this device; print JSON.")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtypes", default="float32")
    args = parser.parse_args()
    print(json.dumps(measure(args.device, [d for d in args.dtypes.split(",") if d])))


if __name__ == "__main__":
    main()
