"""example.naive against attnbench's float64 reference, forward and backward.

The pass rule is attnbench's: relative-L2 error at most 2x that of plain
attention (attnbench's ``eager``) in the same dtype, plus a small floor.
"""

import pytest
import torch

from attnbench import Case, Unsupported
from attnbench.impls.reference import reference_attention
from attnbench.measure.memory import call_peak_bytes, peak_bytes_cpu
from attnbench.plugins import load_registry

FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 2e-3}
CASES = {
    "plain": dict(batch=2, heads_q=2, heads_kv=2, seq_q=64, seq_kv=64, head_dim=32),
    "causal": dict(batch=1, heads_q=2, heads_kv=2, seq_q=96, seq_kv=96, head_dim=64, mask="causal"),
    "causal_fewer_queries": dict(batch=1, heads_q=2, heads_kv=2, seq_q=24, seq_kv=80, head_dim=32, mask="causal"),
    "decode": dict(batch=2, heads_q=4, heads_kv=1, seq_q=1, seq_kv=50, head_dim=32, mask="causal"),
    "gqa": dict(batch=1, heads_q=8, heads_kv=2, seq_q=48, seq_kv=64, head_dim=32, mask="causal"),
    "more_queries": dict(batch=1, heads_q=2, heads_kv=2, seq_q=70, seq_kv=30, head_dim=32),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def registry():
    """attnbench's registry with this package loaded as a plugin module, whether installed or not."""
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "", "ATTNBENCH_PLUGIN_MODULES": "attnbench_example"})
    assert not registry.failures, [(p.name, p.errors) for p in registry.failures]
    return registry


def inputs(case: Case):
    """Seeded standard-normal q, k, v and dO (never zeros), cast to the case's dtype."""
    gen = torch.Generator().manual_seed(0)
    shapes = (case.q_shape, case.kv_shape, case.kv_shape, case.q_shape)
    return [torch.randn(s, generator=gen).to(case.dtype) for s in shapes]


def run(fn, q, k, v, grad_out):
    """Output and (dq, dk, dv) of ``fn``."""
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    return [out.detach(), *torch.autograd.grad(out, (q, k, v), grad_out)]


def rel_err(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("shape", CASES)
def test_matches_reference_forward_and_backward(registry, shape, dtype):
    case = Case(**CASES[shape], dtype=dtype, pass_="fwd+bwd")
    impl = registry.get("example.naive")
    assert impl.declines(case) is None
    q, k, v, grad_out = inputs(case)

    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref_out = reference_attention(*leaves, case)
    truth = [ref_out.detach(), *torch.autograd.grad(ref_out, leaves, grad_out.double())]

    ours = run(impl.build(case), q, k, v, grad_out)
    eager = run(registry.get("eager").build(case), q, k, v, grad_out)
    for what, mine, plain, expected in zip(("out", "dq", "dk", "dv"), ours, eager, truth):
        limit = 2 * rel_err(plain, expected) + FLOOR[dtype]
        assert rel_err(mine, expected) <= limit, f"{what}: {rel_err(mine, expected):.3g} > {limit:.3g}"


def test_registered_with_truthful_capabilities(registry):
    impl = registry.get("example.naive")
    assert impl.plugin == "attnbench_example"
    window = Case(1, 2, 2, 16, 16, 32, mask="sliding_window", window=4)
    assert "mask sliding_window" in impl.declines(window)
    with pytest.raises(Unsupported, match="sliding_window"):
        impl.build(window)


@pytest.mark.parametrize("case", [
    Case(1, 4, 4, 512, 512, 64),
    Case(1, 8, 2, 256, 512, 64, dtype=torch.bfloat16, mask="causal", pass_="fwd+bwd"),
], ids=Case.label)
def test_memory_model_is_a_close_upper_bound(registry, case):
    """The declared model, plus the inputs and output attnbench adds, covers the measured peak without waste."""
    impl = registry.get("example.naive")
    fn = impl.build(case)
    q, k, v, grad_out = inputs(case)
    given = (q, k, v, grad_out) if case.needs_backward else (q, k, v)
    held = sum(t.numel() * t.element_size() for t in given)  # allocated before the call, so not measured
    if case.needs_backward:
        run(fn, q, k, v, grad_out)  # warm-up: one-time allocations are not the call's
        measured = peak_bytes_cpu(lambda: run(fn, q, k, v, grad_out))
    else:
        with torch.no_grad():
            fn(q, k, v)
            measured = peak_bytes_cpu(lambda: fn(q, k, v))
    predicted = call_peak_bytes(case, impl)  # the call alone: what the model covers (the harness adds its own share)
    assert measured + held <= predicted < 2 * (measured + held)
