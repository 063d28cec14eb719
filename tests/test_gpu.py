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
        assert t.n == 50 and all(s > 0 for s in t.samples_ms)
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
