"""xformers against attnbench's float64 reference on a CUDA GPU; skipped without xformers or CUDA.

The rule is attnbench's, for the output and dQ, dK, dV.
"""

import importlib.util
import sys

import pytest
import torch

from attnbench import Case, Unsupported
from attnbench.measure import correctness as corr
from attnbench.plugins import load_registry

CASES = {
    "plain": dict(batch=2, heads_q=4, heads_kv=4, seq_q=256, seq_kv=256, head_dim=64),
    "causal_cross": dict(batch=1, heads_q=4, heads_kv=4, seq_q=100, seq_kv=300, head_dim=64, mask="causal"),
    "gqa_window": dict(batch=1, heads_q=8, heads_kv=2, seq_q=256, seq_kv=256, head_dim=128, mask="sliding_window", window=64),
    "decode_mqa": dict(batch=2, heads_q=8, heads_kv=1, seq_q=1, seq_kv=500, head_dim=64, mask="causal"),
}


@pytest.fixture(scope="module")
def impl():
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "", "ATTNBENCH_PLUGIN_MODULES": "attnbench_xformers"})
    assert not registry.failures, [(p.name, p.errors) for p in registry.failures]
    return registry.get("xformers")


def to_bshd(t):
    return t.transpose(1, 2).contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", CASES)
def test_passes_attnbench_rule_forward_and_backward(impl, shape, dtype):
    if importlib.util.find_spec("xformers") is None:
        pytest.skip("xformers is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    case = Case(**CASES[shape], dtype=dtype, device="cuda", pass_="fwd+bwd")
    assert impl.declines(case) is None
    try:
        fn = impl.build(case)
    except Unsupported as exc:
        pytest.skip(exc.reason)
    inputs = corr.make_inputs(case, seed=0)
    expected = corr.math_attention_grads(inputs, case, dtype=torch.float64)
    baseline = corr.math_attention_grads(inputs, case, dtype=dtype)
    leaves = [to_bshd(t).requires_grad_(True) for t in (inputs.q, inputs.k, inputs.v)]
    out = fn(*leaves)
    got = [t.transpose(1, 2) for t in (out.detach(), *torch.autograd.grad(out, leaves, to_bshd(inputs.grad_out)))]
    for what, g, e, b in zip(("out", "dq", "dk", "dv"), got, expected, baseline):
        reason = corr.judge(corr.error_metrics(g, e), corr.error_metrics(b, e), case.dtype_name, corr.Tolerance())
        assert reason is None, f"{what}: {reason}"


def test_missing_library_is_unsupported_with_the_reason(impl, monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    with pytest.raises(Unsupported, match="xformers is not importable"):
        impl.build(Case(1, 2, 2, 16, 16, 64, device="cuda"))


def test_declares_cuda_and_no_block_sparse(impl):
    assert "device cpu" in impl.declines(Case(1, 2, 2, 16, 16, 64))
    assert "mask block_sparse" in impl.declines(Case(1, 2, 2, 16, 16, 64, device="cuda", mask="block_sparse", block=8))
