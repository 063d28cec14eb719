"""Timing logic without a GPU: the counts, the method strings, and time_cuda against a simulated GPU queue.

The simulation keeps two clocks: the host's (what perf_counter reads) and the
GPU's queue (when the work enqueued so far will be done). Enqueuing costs host
time; a kernel or an event starts when both the host has queued it and the GPU
has finished what was ahead of it. That is all it takes to show the bias the
GPU sleep removes: on an idle GPU a start event waits for nothing, and the
sample then holds the host's launch time.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from attnbench import measurement
from attnbench.measure import timing
from attnbench.options import Timing as TimingOptions

LAUNCH_S = 2e-6
"""Host seconds to enqueue a sleep, a flush, an event or a graph replay."""
CYCLES_PER_S = 1.5e9


class FakeGPU:
    def __init__(self) -> None:
        self.host = 0.0
        self.free = 0.0
        self.log: list[str] = []
        self.capturing: FakeGraph | None = None

    def perf_counter(self) -> float:
        return self.host

    def enqueue(self, name: str, seconds: float, host_s: float = LAUNCH_S) -> float:
        """Queue ``name`` lasting ``seconds`` on the GPU; when it starts (or, under capture, nothing runs)."""
        self.host += host_s
        if self.capturing is not None:
            self.capturing.ops.append((name, seconds))
            return self.host
        start = max(self.free, self.host)
        self.free = start + seconds
        self.log.append(name)
        return start

    def synchronize(self) -> None:
        self.host = max(self.host, self.free)
        self.log.append("sync")

    def sleep(self, cycles: int) -> None:
        self.enqueue("sleep", cycles / CYCLES_PER_S)

    def kernel(self, host_s: float, gpu_s: float):
        """A call that spends ``host_s`` on the host launching one kernel of ``gpu_s``."""

        def call() -> None:
            self.enqueue("kernel", gpu_s, host_s=host_s)
        return call


class FakeGraph:
    def __init__(self, gpu: FakeGPU) -> None:
        self.gpu, self.ops = gpu, []

    def replay(self) -> None:
        self.gpu.host += LAUNCH_S
        for name, seconds in self.ops:
            self.gpu.enqueue(name, seconds, host_s=0.0)


@pytest.fixture
def gpu(monkeypatch) -> FakeGPU:
    """time_cuda's bound timers, flusher and graph API replaced by the simulation."""
    sim = FakeGPU()

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            self.at: float | None = None

        def record(self) -> None:
            self.at = sim.enqueue("record", 0.0)

        def elapsed_time(self, end: Event) -> float:
            return (end.at - self.at) * 1e3

    monkeypatch.setattr(timing, "_CudaEvent", Event)
    monkeypatch.setattr(timing, "_synchronize", sim.synchronize)
    monkeypatch.setattr(timing, "_sleep", sim.sleep)
    monkeypatch.setattr(timing, "perf_counter", sim.perf_counter)
    monkeypatch.setattr(timing, "_l2_flusher", lambda: (lambda: sim.enqueue("flush", 30e-6)))
    return sim


def install_graphs(monkeypatch, gpu: FakeGPU, fail: bool = False) -> list[FakeGraph]:
    """torch.cuda's stream and graph API over the simulation; a failing capture raises as torch's does."""
    graphs: list[FakeGraph] = []
    stream = SimpleNamespace(wait_stream=lambda other: None)

    @contextlib.contextmanager
    def capture(graph, stream=None):
        gpu.capturing = graph
        try:
            yield
            if fail:
                raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        finally:
            gpu.capturing = None

    def new_graph() -> FakeGraph:
        graphs.append(FakeGraph(gpu))
        return graphs[-1]

    monkeypatch.setattr(torch.cuda, "Stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", new_graph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    return graphs


def timed_loop(log: list[str]) -> list[str]:
    """The log of the timed loop: after the last synchronize before it, up to the final one."""
    syncs = [i for i, name in enumerate(log) if name == "sync"]
    return log[syncs[-2] + 1:syncs[-1]]


# --- the counts ----------------------------------------------------------------------


def test_warmup_count_is_a_time_floor_for_fast_calls_only():
    assert timing.warmup_count(0.02, calls=1, min_ms=25) == 1250  # a 20 us call: 25 ms of them
    assert timing.warmup_count(1000.0, calls=3, min_ms=25) == 3  # a 1 s call: the count, no more
    assert timing.warmup_count(10.0, calls=3, min_ms=25) == 3  # 3 x 10 ms already last 25 ms
    assert timing.warmup_count(5.0, calls=3, min_ms=25) == 5
    assert timing.warmup_count(5.0, calls=0, min_ms=0) == 1  # never fewer than one call
    assert timing.warmup_count(0.0, calls=1, min_ms=25) == timing.MAX_WARMUP_CALLS
    assert timing.warmup_count(0.0, calls=2, min_ms=0) == 2  # no time asked: the count, even off the clock
    assert timing.warmup_count(1e-6, calls=1, min_ms=25) == timing.MAX_WARMUP_CALLS


def test_repeat_count_follows_the_time_target_within_its_bounds():
    assert timing.repeat_count(0.02, time_ms=100, minimum=10, maximum=10_000) == 5000
    assert timing.repeat_count(0.005, time_ms=100, minimum=10, maximum=10_000) == 10_000
    assert timing.repeat_count(1000.0, time_ms=100, minimum=10, maximum=10_000) == 10
    assert timing.repeat_count(3.0, time_ms=100, minimum=10, maximum=10_000) == 34
    assert timing.repeat_count(0.02, time_ms=100, minimum=500, maximum=100) == 500  # the minimum wins
    assert timing.repeat_count(0.0, time_ms=100, minimum=10, maximum=200) == 200


def test_lead_covers_twice_the_launch_and_is_capped():
    assert timing.lead_ms(0.025) == pytest.approx(2 * 0.025 + timing.LEAD_PAD_MS)
    assert timing.lead_ms(0.0) == timing.LEAD_PAD_MS
    assert timing.lead_ms(50.0) == timing.LEAD_MAX_MS


def test_method_says_graph_only_when_one_was_replayed():
    assert timing.cuda_method(queued=True, graph=False, flush_l2=True) == "cuda-events+queued+l2-flush"
    assert timing.cuda_method(queued=True, graph=True, flush_l2=False) == "cuda-events+queued+graph+warm-l2"
    assert timing.cuda_method(queued=False, graph=False, flush_l2=False) == "cuda-events+warm-l2"


def test_cpu_warmup_adds_calls_to_fast_calls_only(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(timing, "perf_counter", lambda: clock[0])

    def call_of(seconds: float, calls: list):
        def call() -> None:
            clock[0] += seconds
            calls.append(1)
        return call

    fast, slow = [], []
    assert timing.warmup(call_of(1e-4, fast), 3, "cpu", min_ms=25) == pytest.approx(1e-4)
    assert len(fast) == 250
    timing.warmup(call_of(0.5, slow), 3, "cpu", min_ms=25)
    assert len(slow) == 3  # as many as before warm-up had a time: long calls do not warm up longer
    counted = []
    timing.warmup(call_of(1e-4, counted), 3, "cpu")
    assert len(counted) == 3  # no time given: the count alone, as benchmarks call it


# --- time_cuda on the simulated GPU ---------------------------------------------------


def test_sleep_is_queued_before_every_start_event(gpu):
    result = timing.time_cuda(gpu.kernel(25e-6, 20e-6), repeats=10, time_ms=5, flush_l2=True)
    loop = timed_loop(gpu.log)
    assert "".join(n[0] for n in loop) == "sfrkr" * result.n  # sleep, flush, record, kernel, record
    assert result.method == "cuda-events+queued+l2-flush" and not result.notes


def test_short_call_measures_the_kernel_not_the_launch(gpu):
    # 25 us to launch a 20 us kernel: on an idle GPU the sample is launch + kernel; queued, the kernel.
    warm = timing.time_cuda(gpu.kernel(25e-6, 20e-6), flush_l2=False)
    assert warm.median_ms == pytest.approx(0.020, rel=1e-6)
    assert warm.method == "cuda-events+queued+warm-l2"


def test_idle_gpu_start_events_hold_the_launch_time(gpu, monkeypatch):
    # What the sleep removes, shown by its absence: each sample is then the host's launch period
    # (events and call, 29 us), not the 20 us kernel.
    monkeypatch.setattr(timing, "_sleep", None)
    idle = timing.time_cuda(gpu.kernel(25e-6, 20e-6), flush_l2=False)
    assert idle.median_ms == pytest.approx(0.025 + 2 * LAUNCH_S * 1e3, rel=1e-6)
    assert idle.method == "cuda-events+warm-l2"
    assert any("_sleep is unavailable" in note for note in idle.notes)


def test_repeats_follow_the_time_target(gpu):
    short = timing.time_cuda(gpu.kernel(10e-6, 20e-6), repeats=10, time_ms=100, flush_l2=True)
    assert short.n == pytest.approx(5000, rel=1e-3)  # 100 ms of 20 us calls (the warm-up is GPU-bound here)
    assert short.median_ms == pytest.approx(0.020, rel=1e-6)
    assert gpu.free - gpu.host <= 1e-9  # and the loop waited for all of it


def test_a_host_bound_short_call_still_gets_thousands_of_repeats(gpu):
    # The warm-up sees the launch rate (25 us) rather than the kernel's 20 us: fewer repeats, still thousands.
    result = timing.time_cuda(gpu.kernel(25e-6, 20e-6), repeats=10, time_ms=100)
    assert result.n == pytest.approx(4000, rel=2e-3)


def test_a_one_second_call_gets_the_minimum_and_one_warm_up_call(gpu):
    calls = []

    def call() -> None:
        calls.append(1)
        gpu.enqueue("kernel", 1.0, host_s=30e-6)
    result = timing.time_cuda(call, repeats=10, time_ms=100, warmup_calls=1, warmup_ms=25)
    assert result.n == 10
    assert len(calls) == 1 + 10
    assert result.median_ms == pytest.approx(1000.0)


def test_warm_up_lasts_its_time_for_fast_calls(gpu):
    calls = []

    def call() -> None:
        calls.append(1)
        gpu.enqueue("kernel", 20e-6, host_s=10e-6)
    result = timing.time_cuda(call, repeats=10, time_ms=1, warmup_calls=1, warmup_ms=25)
    warmed = len(calls) - result.n
    # The first call's synchronised time (30 us) sets the count: 25 ms of such calls.
    assert warmed == math.ceil(25 / 0.030)


def test_a_slow_launch_is_noted_and_cannot_stretch_the_loop(gpu, monkeypatch):
    # 20 ms to launch a 10 us kernel, estimated (wrongly) at 10 us a call: 10,000 repeats planned.
    monkeypatch.setattr(timing, "_warm_up", lambda fn, calls, min_ms: (0.01, 20.0))
    result = timing.time_cuda(gpu.kernel(20e-3, 10e-6), repeats=10, time_ms=100, max_repeats=10_000)
    assert 10 <= result.n <= 60  # stopped after about LOOP_LIMIT_FACTOR x 100 ms of loop
    assert result.notes == ["a call takes 20 ms to launch, longer than the 10 ms the GPU is kept busy ahead of it: "
                            "samples may include launch time"]


def test_graph_replays_and_is_named(gpu, monkeypatch):
    graphs = install_graphs(monkeypatch, gpu)
    result = timing.time_cuda(gpu.kernel(25e-6, 20e-6), flush_l2=False, cuda_graph=True, time_ms=5)
    assert len(graphs) == 1 and graphs[0].ops == [("kernel", 20e-6)]
    assert result.method == "cuda-events+queued+graph+warm-l2" and not result.notes
    assert result.median_ms == pytest.approx(0.020, rel=1e-6)
    loop = timed_loop(gpu.log)
    assert "".join(n[0] for n in loop) == "srkr" * result.n


def test_failed_capture_is_a_note_and_no_graph_in_the_method(gpu, monkeypatch):
    install_graphs(monkeypatch, gpu, fail=True)
    result = timing.time_cuda(gpu.kernel(25e-6, 20e-6), flush_l2=True, cuda_graph=True, time_ms=5)
    assert "graph" not in result.method and result.method == "cuda-events+queued+l2-flush"
    assert result.notes == ["CUDA graph capture failed (RuntimeError: operation not permitted when stream is "
                            "capturing); timed without a graph"]
    assert result.median_ms == pytest.approx(0.020, rel=1e-6)  # the plain calls, still queued


def test_backward_only_is_never_captured_and_says_so(gpu, monkeypatch):
    graphs = install_graphs(monkeypatch, gpu)
    result = timing.time_cuda(gpu.kernel(25e-6, 20e-6), cuda_graph=True, backward_only=True, time_ms=5)
    assert graphs == []
    assert "graph" not in result.method and result.notes == [timing.BWD_GRAPH_NOTE]
    assert "fwd and fwd+bwd only" in timing.BWD_GRAPH_NOTE


def test_timers_stay_bound_when_torch_is_patched_later(monkeypatch):
    # What the worker relies on: a plugin replacing torch.cuda's timers after import cannot reach these.
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: pytest.fail("patched synchronize called"))
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: pytest.fail("patched _sleep called"))
    assert timing._synchronize is not torch.cuda.synchronize and timing._sleep is not torch.cuda._sleep
    timing.sync("cpu")


# --- the worker's wiring ------------------------------------------------------------------


def _request(device: str, pass_: str = "fwd", **timing_options) -> SimpleNamespace:
    return SimpleNamespace(case=SimpleNamespace(device=device, pass_=pass_), timing=TimingOptions(**timing_options))


@pytest.mark.parametrize("pass_", ["fwd", "bwd", "fwd+bwd"])
def test_time_passes_the_suite_options_to_time_cuda(monkeypatch, pass_):
    seen = {}
    monkeypatch.setattr(measurement, "time_cuda", lambda step, **kw: seen.update(kw) or timing.Timing([1.0]))
    monkeypatch.setattr(measurement, "warmup", lambda *a, **k: pytest.fail("CUDA warms up inside time_cuda"))
    req = _request("cuda", pass_, warmup=4, warmup_ms=30, cuda_repeats=20, cuda_time_ms=50, cuda_max_repeats=900,
                   flush_l2=False, cuda_graph=True)
    measurement._time(lambda: None, req, warm=False)
    assert seen == {"repeats": 20, "time_ms": 50, "max_repeats": 900, "warmup_calls": 4, "warmup_ms": 30,
                    "flush_l2": False, "cuda_graph": True, "backward_only": pass_ == "bwd"}
    measurement._time(lambda: None, req, warm=True)
    assert seen["warmup_calls"] == 1  # a checked call already ran: one more, and the time floor


def test_time_on_cpu_warms_up_by_count_with_a_time_floor(monkeypatch):
    seen = []
    monkeypatch.setattr(measurement, "warmup", lambda step, calls, device, min_ms=0.0: seen.append((calls, min_ms))
                        or 1e-3)
    monkeypatch.setattr(measurement, "time_cpu", lambda step, **kw: timing.Timing([1.0]))
    measurement._time(lambda: None, _request("cpu", warmup=3, warmup_ms=25), warm=False)
    measurement._time(lambda: None, _request("cpu", warmup=3, warmup_ms=25), warm=True, checked_call_s=0.01)
    measurement._time(lambda: None, _request("cpu", warmup=3, warmup_ms=25), warm=True, checked_call_s=1.0)
    assert seen == [(3, 25), (1, 25)]  # a slow checked call stands in for the warm-up, as before


def test_methodology_names_every_part_of_the_method():
    text = (Path(__file__).resolve().parents[1] / "docs" / "methodology.md").read_text(encoding="utf-8")
    for part in ("cuda-events", "+queued", "+graph", "+l2-flush", "+warm-l2"):
        assert f"`{part}`" in text, part
    assert timing.BWD_GRAPH_NOTE.split(":")[0] in text
