"""CUDA paths (`pytest -m gpu`): skipped where torch sees no CUDA device."""

import pytest
import torch

from attnbench.case import Case
from attnbench.measure import memory
from attnbench.measure.correctness import make_inputs
from attnbench.measure.timing import time_cuda
from attnbench.plugins import load_registry
from attnbench.worker import Request, make_step, measure

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
FLEX_COMBOS = {("bfloat16", "fwd+bwd", "causal"), ("float16", "fwd", "none")}
BUILTINS = ("eager", "sdpa", "sdpa.math", "sdpa.flash", "sdpa.efficient", "sdpa.cudnn", "flex", "chunked")


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("mask", ["none", "causal"])
def test_builtin_correct_on_cuda(registry, name, dtype, pass_, mask):
    if name == "flex" and (dtype, pass_, mask) not in FLEX_COMBOS:
        pytest.skip("flex compiles per case (tens of seconds): checked on a subset")
    impl = registry.get(name)
    case = Case(2, 8, 2, 256, 512, 64, dtype=dtype, device="cuda", mask=mask, pass_=pass_)
    if impl.declines(case):
        pytest.skip(impl.declines(case))
    reply = measure(impl, Request(impl=name, case=case, seed=0, check_correctness=True, measure_memory=True, measure_time=False))
    if reply["status"] == "unsupported":
        assert reply["reason"], "Unsupported must carry a reason"
        pytest.skip(reply["reason"])
    assert reply["status"] == "ok", reply["reason"]
    assert reply["metrics"]["peak_bytes"] > 0


def _kernel_names(fn) -> str:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return " ".join(e.name for e in prof.events()).lower()


@pytest.mark.parametrize("name,expected", [
    ("sdpa.flash", ("flash",)),
    ("sdpa.efficient", ("fmha", "efficient", "cutlass")),
    ("sdpa.cudnn", ("cudnn", "sdpa_", "fmha")),
])
def test_pinned_backend_runs_its_own_kernel(registry, name, expected):
    case = Case(2, 8, 8, 1024, 1024, 64, dtype="bfloat16", device="cuda")
    impl = registry.get(name)
    step = make_step(impl.build(case), impl, case, make_inputs(case, 0))
    step()
    names = _kernel_names(step)
    assert any(token in names for token in expected), names[:2000]
    if name != "sdpa.flash":
        assert "flash_fwd" not in names  # pinned means no silent fallback to the flash kernel


def test_math_backend_runs_no_fused_kernel(registry):
    case = Case(1, 8, 8, 512, 512, 64, dtype="bfloat16", device="cuda")
    impl = registry.get("sdpa.math")
    step = make_step(impl.build(case), impl, case, make_inputs(case, 0))
    step()
    names = _kernel_names(step)
    assert "flash" not in names and "fmha" not in names


def test_l2_flush_and_cuda_graph_modes(registry):
    case = Case(1, 8, 8, 512, 512, 64, dtype="bfloat16", device="cuda")
    impl = registry.get("sdpa")
    step = make_step(impl.build(case), impl, case, make_inputs(case, 0))
    step()
    cold = time_cuda(step, repeats=50, flush_l2=True)
    warm = time_cuda(step, repeats=50, flush_l2=False)
    graph = time_cuda(step, repeats=50, flush_l2=False, cuda_graph=True)
    assert cold.method.endswith("+l2-flush") and warm.method.endswith("+warm-l2")
    assert "+graph" in graph.method and not graph.notes
    for t in (cold, warm, graph):
        assert t.n >= 50 and all(s > 0 for s in t.samples_ms)  # 50 at least: more while under 100 ms
    # A cold L2 can only make a memory-bound call slower, beyond noise never faster.
    assert cold.median_ms >= 0.9 * warm.median_ms


def test_cuda_peak_memory_of_eager_matches_analytic(registry):
    case = Case(1, 8, 8, 2048, 2048, 64, dtype="float16", device="cuda")
    impl = registry.get("eager")
    step = make_step(impl.build(case), impl, case, make_inputs(case, 0))
    step()
    measured = memory.peak_bytes_cuda(step)
    assert abs(measured / memory.eager_analytic_peak_bytes(case) - 1) < 0.02


def test_peak_table_entry_bounds_what_this_card_measures():
    # The entry the name picks must be this card's: no kernel beats its peaks, and a plain copy
    # and a large matmul reach a good share of them (H100 SXM: ~85% and ~75%). A wrong entry
    # (an H100 PCIe's 2 TB/s for an SXM) shows as a measurement over its peak.
    from attnbench.hardware import device_peak

    name = torch.cuda.get_device_name(0)
    peak = device_peak(name)
    if peak is None:
        pytest.skip(f"{name!r} is not in the peak table")
    src = torch.randn(2**28, device="cuda")  # 1 GiB, far beyond any L2
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: the first call pays for setup, not bandwidth
    copy_ms = time_cuda(lambda: dst.copy_(src), repeats=20, flush_l2=False).median_ms
    gbps = 2 * src.nbytes / (copy_ms / 1e3) / 1e9
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    a @ b  # warm-up: cuBLAS handle and heuristics
    mm_ms = time_cuda(lambda: a @ b, repeats=20, flush_l2=False).median_ms
    tflops = 2 * 8192**3 / (mm_ms / 1e3) / 1e12
    assert 0.5 * peak.gbps < gbps <= 1.02 * peak.gbps, (name, peak.name, gbps)
    assert 0.4 * peak.tflops["bfloat16"] < tflops <= 1.02 * peak.tflops["bfloat16"], (name, peak.name, tflops)


# --- timing: the GPU ahead of the host, repeats by time, graphs (measure/timing.py) ----------


def _sleep_call(gpu_us: float, host_us: float):
    """One kernel of ``gpu_us`` (torch.cuda._sleep) launched after ``host_us`` of host work: a call whose
    kernel time is known and whose launch path is longer than the kernel."""
    from time import perf_counter

    from attnbench.measure import timing

    cycles = int(gpu_us / 1e3 * timing._sleep_cycles_per_ms())

    def call() -> None:
        until = perf_counter() + host_us / 1e6
        while perf_counter() < until:
            pass
        torch.cuda._sleep(cycles)
    return call


def test_short_call_is_timed_on_the_gpu_not_the_host(monkeypatch):
    from attnbench.measure import timing

    call = _sleep_call(gpu_us=20, host_us=50)
    queued = time_cuda(call, flush_l2=False)
    monkeypatch.setattr(timing, "_sleep", None)  # start events on an idle GPU, as before
    idle = time_cuda(call, flush_l2=False)
    assert "+queued" in queued.method and "+queued" not in idle.method
    assert queued.median_ms == pytest.approx(0.020, rel=0.25), queued.median_ms
    assert idle.median_ms > 0.045, idle.median_ms  # the host's 50 us leak in without the lead


def test_twenty_microsecond_call_gets_thousands_of_repeats():
    result = time_cuda(_sleep_call(gpu_us=20, host_us=0), flush_l2=True)
    assert result.n >= 1000, (result.n, result.median_ms)
    slow = time_cuda(_sleep_call(gpu_us=200_000, host_us=0), repeats=5, flush_l2=False)
    assert slow.n == 5  # 0.2 s calls: the minimum, where a count of 100 took 20 s


def test_decode_call_cold_warm_and_graph(registry):
    case = Case(8, 32, 8, 1, 8192, 128, dtype="bfloat16", device="cuda", mask="causal")
    impl = registry.get("sdpa")
    step = make_step(impl.build(case), impl, case, make_inputs(case, 0))
    step()
    cold = time_cuda(step, flush_l2=True)
    warm = time_cuda(step, flush_l2=False)
    graph = time_cuda(step, flush_l2=False, cuda_graph=True)
    assert (cold.method, warm.method) == ("cuda-events+queued+l2-flush", "cuda-events+queued+warm-l2")
    assert graph.method == "cuda-events+queued+graph+warm-l2" and not graph.notes
    for t in (cold, warm, graph):
        assert t.n >= 100 and not [n for n in t.notes if "launch" in n], (t.method, t.n, t.notes)
    # 8 sequences x 8 kv heads x 8k keys x 128 of bf16 k and v: 256 MiB read, far beyond L2, so cold and
    # warm are close; a replayed graph never adds time.
    assert cold.median_ms >= 0.9 * warm.median_ms
    assert graph.median_ms <= 1.1 * warm.median_ms


def test_backward_only_is_timed_without_a_graph_and_says_so(registry):
    from attnbench.measure.timing import BWD_GRAPH_NOTE

    case = Case(2, 8, 8, 512, 512, 64, dtype="bfloat16", device="cuda", pass_="bwd")
    impl = registry.get("sdpa")
    step = make_step(impl.build(case), impl, case, make_inputs(case, 0))
    step()
    refused = time_cuda(step, flush_l2=False, cuda_graph=True, backward_only=True)
    assert "graph" not in refused.method and refused.notes == [BWD_GRAPH_NOTE]
    # Tried anyway, a capture either works (and says +graph) or fails with a note: never silently.
    tried = time_cuda(step, flush_l2=False, cuda_graph=True)
    assert ("+graph" in tried.method) != bool(tried.notes), (tried.method, tried.notes)


def test_forward_backward_is_captured(registry):
    case = Case(2, 8, 8, 512, 512, 64, dtype="bfloat16", device="cuda", pass_="fwd+bwd")
    impl = registry.get("sdpa")
    step = make_step(impl.build(case), impl, case, make_inputs(case, 0))
    step()
    graph = time_cuda(step, flush_l2=False, cuda_graph=True)
    assert "+graph" in graph.method and not graph.notes, (graph.method, graph.notes)


@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
def test_records_name_the_method_and_the_graph_refusal(registry, pass_):
    from attnbench.measure.timing import BWD_GRAPH_NOTE
    from attnbench.options import Timing

    seq_q, seq_kv = (1, 4096) if pass_ == "fwd" else (256, 256)
    case = Case(4, 32, 8, seq_q, seq_kv, 128, dtype="bfloat16", device="cuda", mask="causal", pass_=pass_)
    reply = measure(registry.get("sdpa"), Request(impl="sdpa", case=case, seed=0, check_correctness=True,
                                                  measure_memory=False, measure_time=True,
                                                  timing=Timing(cuda_graph=True)))
    assert reply["status"] == "ok", reply["reason"]
    method, notes = reply["metrics"]["timing_method"], reply["metrics"].get("timing_notes", [])
    if pass_ == "fwd":
        assert method == "cuda-events+queued+graph+l2-flush" and not notes, (method, notes)
        assert len(reply["samples_ms"]) >= 1000  # a decode call of a few microseconds: 100 ms of them
    else:
        assert "graph" not in method and notes == [BWD_GRAPH_NOTE]


def test_bshd_layout_is_not_charged_for_the_harness_transposes_on_cuda():
    from test_measurement import eager_in_bshd  # the same bshd eager the CPU test measures

    from attnbench.implementation import Implementation
    from attnbench.impls.eager import build as eager_build

    case = Case(1, 8, 8, 1024, 1024, 64, dtype="bfloat16", device="cuda")
    peaks = {}
    for impl in (Implementation("eager", eager_build), Implementation("bshd.eager", eager_in_bshd, layout="bshd")):
        reply = measure(impl, Request(impl=impl.name, case=case, seed=0, check_correctness=True, measure_memory=True,
                                      measure_time=False))
        assert reply["status"] == "ok", reply["reason"]
        peaks[impl.name] = reply["metrics"]["peak_bytes"]
    assert abs(peaks["bshd.eager"] / peaks["eager"] - 1) < 0.05, peaks


def test_the_last_request_of_a_case_returns_the_cached_device_memory(registry):
    from attnbench import measurement

    case = Case(4, 16, 16, 2048, 2048, 64, dtype="bfloat16", device="cuda")
    reply = measure(registry.get("eager"), Request(impl="eager", case=case, seed=0, check_correctness=True,
                                                   measure_memory=True, measure_time=True, release=True))
    assert reply["status"] == "ok", reply["reason"]
    assert not measurement._REFERENCES.trials
    assert torch.cuda.memory_reserved() < 64 * 2**20, torch.cuda.memory_reserved()


def test_telemetry_is_read_around_the_timed_region(registry):
    case = Case(1, 8, 8, 1024, 1024, 64, dtype="bfloat16", device="cuda")
    reply = measure(registry.get("sdpa"), Request(impl="sdpa", case=case, seed=0, check_correctness=False,
                                                  measure_memory=False, measure_time=True))
    assert reply["status"] == "ok", reply["reason"]
    readings = reply.get("telemetry")
    if readings is None:
        pytest.skip("this torch gives no device UUID to ask NVML about")
    assert set(readings) == {"before", "after"} and readings["before"]["read_at"] <= readings["after"]["read_at"]


def test_planning_a_cuda_run_leaves_this_process_without_a_cuda_context(tmp_path):
    import subprocess
    import sys

    suite = tmp_path / "suite.yaml"
    suite.write_text("name: ctx\nimplementations: {include: [sdpa]}\nmatrix: {seq: [128]}\n")
    script = ("import sys, torch; from attnbench.cli import build_parser; from attnbench.run_command import build_spec;"
              f"build_spec(build_parser().parse_args(['run', {str(suite)!r}, '--device', 'cuda', '--output', "
              f"{str(tmp_path / 'out')!r}]));"
              "sys.exit(1 if torch.cuda.is_initialized() else 0)")
    assert subprocess.run([sys.executable, "-c", script], timeout=300).returncode == 0


# --- the float64 reference at long decode; sdpa's lower-right causal mask ------------------------


def test_long_decode_reference_stays_below_three_kv_caches():
    """Decode B8 H32/8 D128 at 131072 keys (a 4 GiB bf16 cache): its inputs and the peak of computing the float64
    reference stay below 3x the cache, and within the model the budget check uses."""
    from attnbench.measure.correctness import math_attention

    case = Case(8, 32, 8, 1, 131072, 128, dtype="bfloat16", device="cuda", mask="causal")
    gen = torch.Generator(device="cuda").manual_seed(0)
    # Drawn on the GPU: only the memory matters here, and 2G CPU normals would take a while.
    q = torch.randn(case.q_shape, device="cuda", dtype=case.dtype, generator=gen)
    k, v = (torch.randn(case.kv_shape, device="cuda", dtype=case.dtype, generator=gen) for _ in range(2))
    cache = k.nbytes + v.nbytes

    def reference():
        return math_attention(q, k, v, case, dtype=torch.float64)

    reference()  # cuBLAS workspaces are a first call's
    peak = memory.peak_bytes_cuda(reference)
    assert q.nbytes + cache + peak < 3 * cache, peak / cache
    assert peak <= memory.reference_peak_bytes(case, torch.float64), (peak, memory.reference_peak_bytes(case, torch.float64))
    baseline = memory.peak_bytes_cuda(lambda: math_attention(q, k, v, case, dtype=case.dtype))
    assert baseline <= memory.reference_peak_bytes(case, case.dtype), baseline


def _count_mask_builds(monkeypatch) -> list[str]:
    from torch.nn.attention import bias

    from attnbench.impls import sdpa

    built: list[str] = []
    materialize, build_dense = bias.CausalBias._materialize, sdpa.dense_mask
    monkeypatch.setattr(bias.CausalBias, "_materialize",
                        lambda self, device=None: built.append("causal_lower_right") or materialize(self, device))
    monkeypatch.setattr(sdpa, "dense_mask", lambda *a, **kw: built.append("dense_mask") or build_dense(*a, **kw))
    return built


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("name", ["sdpa.math", "sdpa.cudnn"])
def test_pinned_backend_builds_the_lower_right_causal_mask_once(registry, monkeypatch, name, pass_):
    """math and cuDNN take no lower-right causal: torch would materialise it on every call; build makes it once,
    and the output is the very one ``causal_lower_right`` gives."""
    import torch.nn.functional as F
    from torch.nn.attention import bias, sdpa_kernel

    from attnbench.impls import sdpa

    case = Case(2, 8, 2, 256, 1024, 64, dtype="bfloat16", device="cuda", mask="causal", pass_=pass_)
    impl = registry.get(name)
    built = _count_mask_builds(monkeypatch)
    reply = measure(impl, Request(impl=name, case=case, seed=0, check_correctness=True, measure_memory=False,
                                  measure_time=False))
    if reply["status"] == "unsupported":
        pytest.skip(reply["reason"])
    assert reply["status"] == "ok", reply["reason"]
    fn = impl.build(case)
    at_build = len(built)
    assert built[-1:] == ["dense_mask"]
    inputs = make_inputs(case, 0)
    backend = sdpa.BACKENDS[name.partition(".")[2]]

    def lower_right(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.causal_lower_right(case.seq_q, case.seq_kv),
                                                  enable_gqa=True)

    def run(f):
        q, k, v = (t.detach().requires_grad_(case.needs_backward) for t in (inputs.q, inputs.k, inputs.v))
        with torch.set_grad_enabled(case.needs_backward):
            out = f(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), inputs.grad_out) if case.needs_backward else ()
        return (out.detach(), *grads)

    got = [run(fn) for _ in range(3)][-1]
    assert len(built) == at_build, f"masks built per call: {built[at_build:]}"
    want = run(lower_right)
    for a, b in zip(got, want):
        if case.needs_backward:
            torch.testing.assert_close(a, b)  # backward kernels may reduce in any order
        else:
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["sdpa", "sdpa.flash", "sdpa.efficient"])
def test_fused_backends_keep_lower_right_causal_native(registry, monkeypatch, name):
    """Where torch has a kernel for bottom-right causal, no mask is built at all, neither in build nor per call."""
    from attnbench.impls import sdpa

    case = Case(2, 8, 8, 256, 1024, 64, dtype="bfloat16", device="cuda", mask="causal")
    backend = sdpa.BACKENDS.get(name.partition(".")[2])
    assert sdpa.lower_right_is_native(case, backend, case.seq_q, case.seq_kv)
    built = _count_mask_builds(monkeypatch)
    impl = registry.get(name)
    fn = impl.build(case)
    inputs = make_inputs(case, 0)
    with torch.no_grad():
        for _ in range(3):
            fn(inputs.q, inputs.k, inputs.v)
    assert built == []
