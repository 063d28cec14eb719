"""Timing one callable: calibrated blocks on the CPU, CUDA events on a GPU.

Both return a ``Timing`` of per-call samples; the median is the figure, the
interquartile range its spread. Warm-up lasts a time as well as a count
(``warmup``); on CUDA, ``time_cuda`` warms up itself and sizes its repeats by
time, and keeps the GPU busy ahead of each start event so that a sample is the
kernels' time, not the host's launch path.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from time import perf_counter

import torch

# Bound at import, which the worker does before any plugin loads: a plugin that replaces
# time.perf_counter or torch.cuda.Event/synchronize/_sleep later changes what it sees, not what times it.
_CudaEvent = torch.cuda.Event
_synchronize = torch.cuda.synchronize
_sleep = getattr(torch.cuda, "_sleep", None)

DEFAULT_L2_FLUSH_BYTES = 256 * 2**20
"""Bytes written between CUDA repeats when the card's L2 size is unknown (larger than any current L2)."""
MAX_WARMUP_CALLS = 10_000
"""A warm-up by time never runs more calls than this (a first estimate near zero would ask for millions)."""
LEAD_FACTOR = 2.0
LEAD_PAD_MS = 0.02
"""The GPU sleeps LEAD_FACTOR x the host's time to launch one call + LEAD_PAD_MS before each start event:
the host then queues the flush, the event and the whole call before the GPU reaches them, jitter included."""
LEAD_MAX_MS = 10.0
"""The longest sleep ahead of a start event; a call slower than this to launch is noted in the record."""
SLEEP_CALIBRATION_CYCLES = 1_000_000
"""GPU clock cycles of the sleep that converts milliseconds to ``torch.cuda._sleep`` cycles (about 0.5 ms)."""
LOOP_LIMIT_FACTOR = 10
"""The timed loop stops adding repeats (the minimum taken) once it has run this many times ``time_ms``:
a call far slower to launch than to run cannot stretch the loop past the pair's timeout."""
BWD_GRAPH_NOTE = ("CUDA graphs cover fwd and fwd+bwd only: a backward-only call replays autograd on the stream "
                  "its forward ran on, outside the capture; timed without a graph")


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
        _synchronize()


def time_once(fn: Callable[[], object], device: str) -> float:
    """Seconds one call of ``fn`` takes, the device synchronised before the clock stops (for calls too slow to repeat)."""
    start = perf_counter()
    fn()
    sync(device)
    return perf_counter() - start


def warmup_count(first_ms: float, *, calls: int, min_ms: float) -> int:
    """Warm-up calls: at least ``calls`` (and one), and enough to last ``min_ms`` at ``first_ms`` each.

    A call slower than ``min_ms / calls`` gets exactly ``calls``: the time is a floor for fast calls only.
    """
    if min_ms <= 0:
        by_time = 0
    else:  # a first call too fast for the clock asks for the most
        by_time = math.ceil(min_ms / first_ms) if first_ms > 0 else MAX_WARMUP_CALLS
    return max(1, calls, min(by_time, MAX_WARMUP_CALLS))


def warmup(fn: Callable[[], object], calls: int, device: str, *, min_ms: float = 0.0) -> float:
    """Run ``fn`` ``calls`` times, more while they last under ``min_ms``; the last call's seconds (a first estimate)."""
    elapsed = time_once(fn, device)
    for _ in range(warmup_count(elapsed * 1e3, calls=calls, min_ms=min_ms) - 1):
        elapsed = time_once(fn, device)
    return elapsed


def repeat_count(call_ms: float, *, time_ms: float, minimum: int, maximum: int) -> int:
    """Timed CUDA calls: enough to add up to ``time_ms`` at ``call_ms`` each, within [minimum, maximum] (minimum wins)."""
    by_time = math.ceil(time_ms / call_ms) if call_ms > 0 else maximum
    return max(1, minimum, min(by_time, maximum))


def lead_ms(host_ms: float) -> float:
    """How long the GPU sleeps before each start event, given the host's milliseconds to launch one call."""
    return min(LEAD_MAX_MS, LEAD_FACTOR * host_ms + LEAD_PAD_MS)


def cuda_method(*, queued: bool, graph: bool, flush_l2: bool) -> str:
    """The ``method`` of a CUDA timing: ``+queued`` when a GPU sleep led each start event, ``+graph`` when a
    captured graph was replayed (never when capture failed or was not attempted), then the L2 mode."""
    return ("cuda-events" + ("+queued" if queued else "") + ("+graph" if graph else "")
            + ("+l2-flush" if flush_l2 else "+warm-l2"))


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
    repeats: int = 10,
    time_ms: float = 100.0,
    max_repeats: int = 10_000,
    warmup_calls: int = 1,
    warmup_ms: float = 25.0,
    flush_l2: bool = True,
    cuda_graph: bool = False,
    backward_only: bool = False,
) -> Timing:
    """CUDA-event timing of ``fn``: one event pair per repeat, L2 flushed before each unless ``flush_l2`` is False.

    Warms up for ``warmup_calls`` calls and at least ``warmup_ms``, then times
    enough repeats to add up to ``time_ms`` (at least ``repeats``, at most
    ``max_repeats``), estimated from the warm-up. Before each start event the
    GPU sleeps long enough for the host to queue the call behind it, so the
    events bracket the kernels and no launch gap. With ``cuda_graph`` the call
    is captured once into a CUDA graph and the graph is replayed, which removes
    launch gaps between its kernels; a ``backward_only`` call is never captured.
    """
    estimate_ms, host_ms = _warm_up(fn, warmup_calls, warmup_ms)
    notes: list[str] = []
    call, graphed = fn, False
    if cuda_graph and backward_only:
        notes.append(BWD_GRAPH_NOTE)
    elif cuda_graph:
        call, note = _capture_graph(fn)
        graphed = note is None
        if note:
            notes.append(note)
        else:
            host_ms = _launch_ms(call, 3)
    cycles_per_ms = _sleep_cycles_per_ms()
    lead = lead_ms(host_ms)
    if cycles_per_ms is None:
        notes.append("torch.cuda._sleep is unavailable: start events are recorded on an idle GPU, so short calls "
                     "include launch time")
    elif host_ms > lead:
        notes.append(f"a call takes {host_ms:.3g} ms to launch, longer than the {lead:g} ms the GPU is kept busy "
                     "ahead of it: samples may include launch time")
    cycles = int(lead * cycles_per_ms) if cycles_per_ms else 0
    flush = _l2_flusher() if flush_l2 else None
    n = repeat_count(estimate_ms, time_ms=time_ms, minimum=repeats, maximum=max_repeats)
    starts = [_CudaEvent(enable_timing=True) for _ in range(n)]
    ends = [_CudaEvent(enable_timing=True) for _ in range(n)]
    limit_s = LOOP_LIMIT_FACTOR * time_ms / 1e3
    _synchronize()
    begun = perf_counter()
    taken = 0
    while taken < n:
        if cycles:
            _sleep(cycles)  # the GPU is busy while the host queues what follows
        if flush is not None:
            flush()
        starts[taken].record()
        call()
        ends[taken].record()
        taken += 1
        if taken >= repeats and perf_counter() - begun > limit_s:
            break
    _synchronize()
    samples = [s.elapsed_time(e) for s, e in zip(starts[:taken], ends[:taken])]
    method = cuda_method(queued=bool(cycles), graph=graphed, flush_l2=flush_l2)
    return Timing(samples, inner=1, method=method, notes=notes)


def _warm_up(fn: Callable[[], object], calls: int, min_ms: float) -> tuple[float, float]:
    """Warm ``fn`` up; its GPU milliseconds per call (events around the warm-up's block) and the host's to launch one."""
    start = perf_counter()
    fn()
    launched = perf_counter()
    _synchronize()
    first_ms = (perf_counter() - start) * 1e3
    launches = [(launched - start) * 1e3]
    more = warmup_count(first_ms, calls=calls, min_ms=min_ms) - 1
    if more == 0:
        return first_ms, launches[0]
    begin, end = _CudaEvent(enable_timing=True), _CudaEvent(enable_timing=True)
    begin.record()
    for _ in range(more):
        t = perf_counter()
        fn()
        launches.append((perf_counter() - t) * 1e3)
    end.record()
    _synchronize()
    return begin.elapsed_time(end) / more, statistics.median(launches)


def _launch_ms(call: Callable[[], object], n: int) -> float:
    """The host's median milliseconds to queue ``call``, over ``n`` calls."""
    times = []
    for _ in range(n):
        t = perf_counter()
        call()
        times.append((perf_counter() - t) * 1e3)
    _synchronize()
    return statistics.median(times)


def _sleep_cycles_per_ms() -> float | None:
    """``torch.cuda._sleep`` cycles per millisecond on this GPU now, measured with events; None without it."""
    if _sleep is None:
        return None
    _sleep(1000)  # the first launch loads the kernel
    begin, end = _CudaEvent(enable_timing=True), _CudaEvent(enable_timing=True)
    begin.record()
    _sleep(SLEEP_CALIBRATION_CYCLES)
    end.record()
    _synchronize()
    ms = begin.elapsed_time(end)
    return SLEEP_CALIBRATION_CYCLES / ms if ms > 0 else None


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
        # Captured on the stream it warmed up on: libraries that cache per-stream state (cuBLAS
        # workspaces) then find it there instead of setting it up during the capture.
        with torch.cuda.graph(graph, stream=side):
            fn()
    except Exception as exc:  # noqa: BLE001 - any capture failure means: measure without a graph
        _synchronize()
        return fn, f"CUDA graph capture failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); timed without a graph"
    return graph.replay, None
