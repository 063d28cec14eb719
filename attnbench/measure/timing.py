"""Timing one callable: calibrated blocks on the CPU, CUDA events on a GPU.

Both return a ``Timing`` of per-call samples; the median is the figure, the
interquartile range its spread. Warm-up is the caller's job or ``warmup``'s.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from time import perf_counter

import torch

# Bound at import, which the worker does before any plugin loads: a plugin that replaces
# time.perf_counter or torch.cuda.Event later changes what it sees, not what times it.
_CudaEvent = torch.cuda.Event

DEFAULT_L2_FLUSH_BYTES = 256 * 2**20
"""Bytes written between CUDA repeats when the card's L2 size is unknown (larger than any current L2)."""


@dataclass
class Timing:
    """Per-call times in milliseconds, and how they were taken."""

    samples_ms: list[float]
    inner: int = 1
    """Calls per sample: each sample is a block of ``inner`` calls divided by ``inner``."""
    method: str = "cpu-perf_counter"
    notes: list[str] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def iqr_ms(self) -> float:
        return iqr(self.samples_ms)

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    def to_dict(self) -> dict:
        return asdict(self) | {"median_ms": self.median_ms, "iqr_ms": self.iqr_ms, "n": self.n}


def iqr(values: list[float]) -> float:
    """Interquartile range (inclusive quartiles); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def sync(device: str) -> None:
    """Wait for the work queued on ``device``: CUDA calls return before their kernels finish; the CPU has no queue."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(fn: Callable[[], object], device: str) -> float:
    """Seconds one call of ``fn`` takes, the device synchronised before the clock stops (for calls too slow to repeat)."""
    start = perf_counter()
    fn()
    sync(device)
    return perf_counter() - start


def warmup(fn: Callable[[], object], calls: int, device: str) -> float:
    """Run ``fn`` ``calls`` times and return the last call's seconds (a first estimate for calibration)."""
    elapsed = 0.0
    for _ in range(max(1, calls)):
        elapsed = time_once(fn, device)
    return elapsed


def time_cpu(
    fn: Callable[[], object],
    *,
    min_time_s: float = 1.0,
    min_samples: int = 5,
    max_samples: int = 200,
    block_s: float = 0.02,
    first_estimate_s: float | None = None,
) -> Timing:
    """Calibrated repeats of ``fn`` on the CPU.

    A block runs ``fn`` enough times to last about ``block_s`` (so timer
    resolution and call overhead stay negligible for fast kernels); blocks
    repeat until ``min_time_s`` has passed and at least ``min_samples`` were
    taken. Slow calls get one call per block and exactly ``min_samples`` blocks.
    """
    estimate = first_estimate_s if first_estimate_s is not None else warmup(fn, 1, "cpu")
    inner = max(1, math.ceil(block_s / max(estimate, 1e-9)))
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max_samples and (len(samples) < min_samples or spent < min_time_s):
        start = perf_counter()
        for _ in range(inner):
            fn()
        elapsed = perf_counter() - start
        spent += elapsed
        samples.append(elapsed / inner * 1e3)
    return Timing(samples, inner=inner, method="cpu-perf_counter")


def time_cuda(
    fn: Callable[[], object],
    *,
    repeats: int = 100,
    flush_l2: bool = True,
    cuda_graph: bool = False,
) -> Timing:
    """CUDA-event timing of ``fn``: one event pair per repeat, L2 flushed before each unless ``flush_l2`` is False.

    With ``cuda_graph`` the calls are captured once into a CUDA graph and the
    graph is replayed, which removes CPU launch overhead from the figure.
    """
    notes = []
    call = fn
    if cuda_graph:
        call, note = _capture_graph(fn)
        if note:
            notes.append(note)
    flush = _l2_flusher() if flush_l2 else None
    starts = [_CudaEvent(enable_timing=True) for _ in range(repeats)]
    ends = [_CudaEvent(enable_timing=True) for _ in range(repeats)]
    torch.cuda.synchronize()
    for i in range(repeats):
        if flush is not None:
            flush()
        starts[i].record()
        call()
        ends[i].record()
    torch.cuda.synchronize()
    samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    method = "cuda-events" + ("+graph" if cuda_graph and not notes else "") + ("+l2-flush" if flush_l2 else "+warm-l2")
    return Timing(samples, inner=1, method=method, notes=notes)


def _l2_flusher() -> Callable[[], None]:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    l2 = getattr(props, "L2_cache_size", 0) or 0
    size = max(2 * l2, 64 * 2**20) if l2 else DEFAULT_L2_FLUSH_BYTES
    buffer = torch.empty(size, dtype=torch.int8, device="cuda")

    def flush() -> None:
        # Writing a buffer twice the L2's size evicts whatever the last call left there.
        buffer.zero_()

    return flush


def _capture_graph(fn: Callable[[], object]) -> tuple[Callable[[], object], str | None]:
    """Capture ``fn`` into a CUDA graph; fall back to plain calls (with a note) if capture fails."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as the CUDA-graph docs require
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:  # noqa: BLE001 - any capture failure means: measure without a graph
        torch.cuda.synchronize()
        return fn, f"CUDA graph capture failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); timed without a graph"
    return graph.replay, None
