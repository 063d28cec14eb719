"""flash_attn2 and flash_attn3 against attnbench's float64 reference on a CUDA GPU.

The kernel tests run wherever the library imports and a CUDA device exists
(skipped otherwise); the rule is attnbench's, for the output and dQ, dK, dV.
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
MODULES = {"flash_attn2": "flash_attn", "flash_attn3": "flash_attn_interface"}


@pytest.fixture(scope="module")
def registry():
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "", "ATTNBENCH_PLUGIN_MODULES": "attnbench_flash_attn"})
    assert not registry.failures, [(p.name, p.errors) for p in registry.failures]
    return registry


def runnable(name: str):
    if importlib.util.find_spec(MODULES[name]) is None:
        pytest.skip(f"{MODULES[name]} is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def to_bshd(t):
    return t.transpose(1, 2).contiguous()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("shape", CASES)
@pytest.mark.parametrize("name", MODULES)
def test_passes_attnbench_rule_forward_and_backward(registry, name, shape, dtype):
    runnable(name)
    case = Case(**CASES[shape], dtype=dtype, device="cuda", pass_="fwd+bwd")
    impl = registry.get(name)
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


@pytest.mark.parametrize("name", MODULES)
def test_missing_library_is_unsupported_with_the_reason(registry, name, monkeypatch):
    monkeypatch.setitem(sys.modules, MODULES[name], None)
    with pytest.raises(Unsupported, match=f"{MODULES[name]} is not importable"):
        registry.get(name).build(Case(1, 2, 2, 16, 16, 64, dtype=torch.float16, device="cuda"))


@pytest.mark.parametrize("name", MODULES)
def test_declares_cuda_half_precision_and_no_block_sparse(registry, name):
    impl = registry.get(name)
    assert "device cpu" in impl.declines(Case(1, 2, 2, 16, 16, 64, dtype=torch.float16))
    assert "dtype float32" in impl.declines(Case(1, 2, 2, 16, 16, 64, device="cuda"))
    assert "mask block_sparse" in impl.declines(
        Case(1, 2, 2, 16, 16, 64, dtype=torch.float16, device="cuda", mask="block_sparse", block=8))


def test_sliding_window_maps_to_window_size():
    from attnbench_flash_attn import mask_arguments

    assert mask_arguments(Case(1, 1, 1, 8, 8, 8, mask="sliding_window", window=3)) == {"causal": True, "window_size": (2, 0)}
    assert mask_arguments(Case(1, 1, 1, 8, 8, 8)) == {"causal": False, "window_size": (-1, -1)}
