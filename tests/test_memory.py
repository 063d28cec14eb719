import ast
import dataclasses
import functools
import math
from pathlib import Path

import pytest
import torch

from attnbench import Case, measurement
from attnbench.executors.local import LocalExecutor
from attnbench.implementation import Implementation
from attnbench.impls import chunked, eager, sdpa
from attnbench.measure import memory
from attnbench.measure.memory import (
    TIMING_INPUT_SETS,
    budget_bytes,
    call_peak_bytes,
    eager_analytic_peak_bytes,
    free_bytes,
    fused_workspace_bytes,
    parse_bytes,
    peak_bytes_cpu,
    peak_bytes_cuda,
    predict_peak_bytes,
    reference_bytes,
    resident_bytes,
)
from attnbench.options import Correctness, Timing
from attnbench.plugins import load_registry
from attnbench.runner import RunOptions, plan
from attnbench.suite.load import load_suite

MiB = 2**20
IMPLS = {impl.name: impl for module in (eager, chunked, sdpa) for impl in module.attnbench_implementations()}


def _inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(case.q_shape, dtype=case.dtype, generator=gen)
    k, v = (torch.randn(case.kv_shape, dtype=case.dtype, generator=gen) for _ in range(2))
    return q, k, v


def _measure(name: str, case: Case) -> tuple[int, int]:
    """(peak above the inputs, bytes of the inputs) of one call, after a warm-up call."""
    fn = IMPLS[name].build(case)
    q, k, v = _inputs(case)
    inputs = sum(t.numel() * t.element_size() for t in (q, k, v))
    if not case.needs_backward:
        with torch.no_grad():
            fn(q, k, v)
            return peak_bytes_cpu(lambda: fn(q, k, v)), inputs
    for t in (q, k, v):
        t.requires_grad_(True)
    grad_out = torch.randn_like(q)

    def step():
        out = fn(q, k, v)
        out.backward(grad_out)
        return out

    step()
    q.grad = k.grad = v.grad = None
    return peak_bytes_cpu(step), inputs + grad_out.numel() * grad_out.element_size()


# The CPU allocator reports the bytes each tensor asked for, without rounding,
# so figures built from plain tensors are exact: no tolerance.

def test_peak_counts_tensors_alive_together_and_not_after_they_are_freed():
    def fn():
        held = [torch.empty(10 * MiB, dtype=torch.uint8) for _ in range(3)]
        del held
        return torch.empty(MiB, dtype=torch.uint8)

    assert peak_bytes_cpu(fn) == 30 * MiB


def test_peak_counts_the_returned_tensor():
    def fn():
        scratch = torch.empty(3 * MiB, dtype=torch.uint8)
        del scratch
        return torch.empty(5 * MiB, dtype=torch.uint8)

    assert peak_bytes_cpu(fn) == 5 * MiB


def test_inputs_allocated_before_the_call_are_not_counted():
    x = torch.ones(4 * MiB, dtype=torch.uint8)
    assert peak_bytes_cpu(x.clone) == 4 * MiB
    assert peak_bytes_cpu(lambda: x.view(-1)) == 0


def test_eager_matches_its_analytic_peak():
    case = Case(1, 4, 4, 1024, 1024, 64)
    measured, _ = _measure("eager", case)
    analytic = eager_analytic_peak_bytes(case)
    assert analytic == (2 * 4 * 1024 * 1024 + 4 * 1024 * 64) * 4
    assert abs(measured - analytic) <= 0.03 * analytic


def test_eager_analytic_counts_repeated_kv_under_gqa():
    case = Case(1, 4, 1, 256, 256, 64)
    assert eager_analytic_peak_bytes(case) == eager_analytic_peak_bytes(Case(1, 4, 4, 256, 256, 64)) + 2 * 4 * 256 * 64 * 4
    with pytest.raises(ValueError, match="forward"):
        eager_analytic_peak_bytes(Case(1, 4, 4, 256, 256, 64, pass_="fwd+bwd"))


def test_chunked_holds_a_fraction_of_eager():
    # At N=4096 one score tensor is 16 of chunked's default 1024 x 256 blocks.
    case = Case(1, 2, 2, 4096, 4096, 64)
    measured, _ = _measure("chunked", case)
    assert measured <= eager_analytic_peak_bytes(case) / 8


@pytest.mark.parametrize("name, case", [
    ("eager", Case(1, 4, 4, 1024, 1024, 64)),
    ("eager", Case(1, 4, 1, 512, 1024, 64, dtype=torch.bfloat16, mask="causal")),
    ("eager", Case(1, 2, 2, 512, 512, 64, mask="sliding_window", window=128, pass_="fwd+bwd")),
    ("chunked", Case(1, 4, 4, 2048, 2048, 64, mask="causal")),
    ("chunked", Case(1, 2, 1, 1024, 1024, 64, dtype=torch.float16, pass_="fwd+bwd")),
    ("sdpa.math", Case(1, 4, 4, 1024, 1024, 64)),
    ("sdpa.math", Case(1, 4, 2, 1024, 1024, 64, dtype=torch.bfloat16, mask="sliding_window", window=256)),
    ("sdpa.math", Case(1, 2, 2, 512, 512, 64, mask="causal", pass_="fwd+bwd")),
    ("sdpa", Case(1, 4, 4, 1024, 1024, 64, mask="sliding_window", window=256)),
    ("sdpa", Case(1, 4, 4, 1024, 1024, 64, mask="block_sparse", block=64)),
    ("sdpa", Case(1, 4, 2, 256, 1024, 64, dtype=torch.bfloat16, mask="causal")),
])
def test_prediction_is_conservative_but_close(name, case):
    measured, inputs = _measure(name, case)
    predicted = call_peak_bytes(case, IMPLS[name])
    # The prediction covers the inputs too; the measurement starts above them.
    assert measured + inputs <= predicted < 3 * (measured + inputs)


@pytest.mark.parametrize("name", ["sdpa", "sdpa.math"])
def test_the_model_covers_the_mask_build_keeps(name):
    """A causal mask with seq_q != seq_kv is built once, by build, and held by the call: counted with it."""
    case = Case(1, 4, 2, 256, 1024, 64, mask="causal")
    held = peak_bytes_cpu(lambda: IMPLS[name].build(case))
    assert held >= case.seq_q * case.seq_kv
    measured, inputs = _measure(name, case)
    assert held + measured + inputs <= call_peak_bytes(case, IMPLS[name])


def test_unknown_implementations_are_predicted_as_fused():
    case = Case(2, 8, 8, 4096, 4096, 64)
    fused = call_peak_bytes(case, Implementation(name="mylib.fast", build=eager.build))
    elem = case.dtype.itemsize
    assert fused < 3 * (2 * math.prod(case.q_shape) + 2 * math.prod(case.kv_shape)) * elem
    assert fused < call_peak_bytes(case, IMPLS["eager"]) / 20


def test_a_declared_model_replaces_the_fused_default():
    case = Case(2, 8, 2, 512, 1024, 64, mask="causal", pass_="fwd+bwd")
    declared = Implementation(name="mylib.dense", build=eager.build, memory=lambda c: 7 * c.seq_q * c.seq_kv)
    undeclared = Implementation(name="mylib.fused", build=eager.build)
    assert call_peak_bytes(case, declared) == resident_bytes(case) + 7 * 512 * 1024
    assert call_peak_bytes(case, undeclared) == resident_bytes(case) + fused_workspace_bytes(case)


# --- the harness's share: references and timing's input sets --------------------


def test_prediction_adds_the_references_to_the_call():
    case = Case(2, 8, 2, 512, 1024, 64, mask="causal", pass_="fwd+bwd")
    impl = IMPLS["eager"]
    harness = reference_bytes(case, seeds=3)
    assert predict_peak_bytes(case, impl) == harness.cached + max(
        harness.computing, call_peak_bytes(case, impl) + harness.timing)
    bshd = dataclasses.replace(impl, name="mylib.bshd", layout="bshd")
    assert predict_peak_bytes(case, bshd) == harness.cached + max(
        harness.computing, call_peak_bytes(case, impl) + harness.timing + harness.timing_inputs)
    assert predict_peak_bytes(case, impl, seeds=5) > predict_peak_bytes(case, impl) > call_peak_bytes(case, impl)


def test_timing_input_sets_match_the_worker():
    assert TIMING_INPUT_SETS == measurement.MIN_INPUT_SETS


def test_a_lone_seed_is_cached_with_its_negated_twin():
    case = Case(1, 4, 4, 64, 64, 32)
    one, two = reference_bytes(case, seeds=1), reference_bytes(case, seeds=2)
    q, k = math.prod(case.q_shape) * 4, math.prod(case.kv_shape) * 4
    # The twin's v and outputs are new tensors; its q and k are the trial's.
    assert one.cached == two.cached - q - k
    assert one.timing == two.timing


def _worker_peak(monkeypatch, impl, case: Case, correctness: Correctness) -> int:
    """Peak bytes of measuring the pair in this process, as a worker does: references, trials, timing."""
    monkeypatch.setattr(measurement, "_REFERENCES", measurement._References())
    request = measurement.Request(impl=impl.name, case=case, seed=0, check_correctness=True, measure_memory=False,
                                  measure_time=True, correctness=correctness,
                                  timing=Timing(warmup=1, repeats=2, min_time_s=0.01))
    replies = []
    peak = peak_bytes_cpu(lambda: replies.append(measurement.measure(impl, request)))
    assert replies[0]["status"] == "ok", replies[0]["reason"]
    return peak


def _eager_bshd(case: Case):
    """eager's arithmetic on (batch, seq, heads, dim) tensors, through views."""
    attend = eager.build(case)
    return lambda q, k, v: attend(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


IMPLS["eager.bshd"] = dataclasses.replace(IMPLS["eager"], name="eager.bshd", build=_eager_bshd, layout="bshd")


@pytest.mark.parametrize("name, case", [
    ("chunked", Case(2, 8, 2, 1, 32768, 64, mask="causal")),
    ("eager.bshd", Case(2, 8, 2, 4, 16384, 64, mask="causal")),
    ("sdpa", Case(1, 4, 4, 512, 512, 64, dtype=torch.bfloat16, mask="causal")),
    ("eager", Case(1, 4, 2, 256, 512, 64, mask="sliding_window", window=64, pass_="fwd+bwd")),
    ("chunked", Case(1, 2, 2, 600, 600, 32, mask="causal")),
], ids=lambda x: x if isinstance(x, str) else x.label())
def test_prediction_covers_what_a_worker_holds(monkeypatch, name, case):
    correctness = Correctness(seeds=3, max_rows=256)
    measured = _worker_peak(monkeypatch, IMPLS[name], case, correctness)
    predicted = predict_peak_bytes(case, IMPLS[name], seeds=correctness.seeds, max_rows=correctness.max_rows)
    assert measured <= predicted < 3 * measured


def test_long_seq_cpu_skips_only_eager_at_16k():
    """The suite's fixed budget: the references' share must not push anything else over it."""
    suite = load_suite(Path(__file__).parent.parent / "suites" / "long_seq.yaml")
    settings = suite.settings("cpu")
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": ""})
    impls = registry.select(include=list(settings.include), exclude=list(settings.exclude))
    options = RunOptions(correctness=settings.correctness, timing=settings.timing,
                         memory_budget_bytes=settings.memory_budget.nbytes)
    predict = functools.partial(predict_peak_bytes, seeds=settings.correctness.seeds,
                                max_rows=settings.correctness.max_rows)
    todo, settled = plan(suite.cases("cpu"), impls, options, predict=predict)
    skipped = {(r.impl, r.case["seq_q"], r.case["dtype"], r.case["mask"]) for r in settled if r.status == "skipped"}
    assert skipped == {("eager", 16384, dtype, mask) for dtype in ("float32", "bfloat16") for mask in ("none", "causal")}
    assert todo


def test_memory_must_be_callable():
    with pytest.raises(ValueError, match="memory must be callable"):
        Implementation(name="mylib.bad", build=eager.build, memory=1024)


def test_the_prediction_module_knows_no_implementation():
    # The models belong to the implementations; this module only adds them up.
    tree = ast.parse(Path(memory.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if name and name.startswith("attnbench.impls")}


def test_the_budget_check_uses_a_plugins_declared_model(fixture_plugins):
    env = fixture_plugins("memory_models")
    case = Case(1, 2, 2, 64, 64, 32)
    budget = 2**30
    registry = load_registry()
    impls = registry.select(include=["memory.*"])
    need = predict_peak_bytes(case, registry.get("memory.huge"))
    options = RunOptions(correctness=Correctness(seeds=1), timing=Timing(processes=1, min_time_s=0.01, repeats=2, warmup=1), memory_budget_bytes=budget)
    todo, settled = plan([case], impls, options, predict=predict_peak_bytes)
    (skipped,) = settled
    assert (skipped.impl, skipped.status) == ("memory.huge", "skipped")
    assert skipped.reason == (f"predicted peak {need / 2**30:.2f} GiB exceeds the "
                              f"memory budget {budget / 2**30:.2f} GiB")
    assert [pair.impl.name for pair in todo] == ["memory.small"]
    with LocalExecutor(options, env=env) as executor:
        (record,) = executor.submit(todo)
    assert record.status == "ok", record.reason


def test_vm_hwm_sees_touched_memory():
    # In a fresh process: after earlier tests this one's allocator may hand back pages already resident,
    # which the high-water mark rightly does not see again.
    import subprocess
    import sys
    code = ("import torch; from attnbench.measure.memory import vm_hwm_bytes_during; "
            "print(vm_hwm_bytes_during(lambda: torch.ones(128 * 2**20, dtype=torch.uint8)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    grown = None if out.split()[-1] == "None" else int(out.split()[-1])
    if grown is None:
        pytest.skip("VmHWM cannot be reset here")
    assert grown >= 120 * MiB


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_bytes_cuda():
    x = torch.ones(4 * MiB, dtype=torch.uint8, device="cuda")

    def fn():
        held = [torch.empty(10 * MiB, dtype=torch.uint8, device="cuda") for _ in range(3)]
        del held
        return x * 2

    assert peak_bytes_cuda(fn) == 30 * MiB


@pytest.mark.parametrize("text, expected", [
    ("8GiB", 8 * 2**30),
    ("8 gib", 8 * 2**30),
    ("1.5GiB", 3 * 2**29),
    ("512MiB", 512 * MiB),
    ("512M", 512 * MiB),
    ("2GB", 2 * 10**9),
    ("100kb", 100_000),
    ("4096", 4096),
    ("4096B", 4096),
    (".5K", 512),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "8 XB", "-1GiB", "1e3", "8GiB 2"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError, match="size"):
        parse_bytes(text)


def test_budget_from_a_fraction_or_a_size(monkeypatch):
    monkeypatch.setattr("attnbench.measure.memory.available_memory_bytes", lambda: 10 * 2**30)
    assert free_bytes("cpu") == 10 * 2**30
    assert budget_bytes(0.5, "cpu") == 5 * 2**30
    assert budget_bytes(1.0, "cpu") == 10 * 2**30
    assert budget_bytes("80%", "cpu") == 8 * 2**30
    assert budget_bytes("0.25", "cpu") == 10 * 2**30 // 4
    assert budget_bytes("6GiB", "cpu") == 6 * 2**30
    assert budget_bytes(1234, "cpu") == 1234
    assert budget_bytes(1234.0, "cpu") == 1234
    assert budget_bytes("1234", "cpu") == 1234


@pytest.mark.parametrize("spec", [0, 0.0, -3, 1.5, float("nan"), float("inf"), "150%", "x%", "0GiB", True, None])
def test_budget_rejects(spec):
    with pytest.raises(ValueError, match="budget"):
        budget_bytes(spec, "cpu")
