"""local_attention against attnbench's float64 reference, forward and backward; skipped without local-attention.

The pass rule is attnbench's: error at most 2x that of plain attention in the
same dtype plus a floor, for the output and for dQ, dK and dV.
"""

import pytest
import torch

from attnbench import Case, Unsupported
from attnbench.conformance import forward_backward_problem
from attnbench.plugins import load_registry

pytest.importorskip("local_attention", reason="local-attention is not installed")

CASES = {
    "window": dict(batch=2, heads_q=2, heads_kv=2, seq_q=100, seq_kv=100, head_dim=32, mask="sliding_window", window=17),
    "window_of_two": dict(batch=1, heads_q=2, heads_kv=2, seq_q=40, seq_kv=40, head_dim=16, mask="sliding_window", window=2),
    "window_of_one": dict(batch=1, heads_q=2, heads_kv=2, seq_q=40, seq_kv=40, head_dim=16, mask="sliding_window", window=1),
    "window_past_the_start": dict(batch=1, heads_q=2, heads_kv=2, seq_q=30, seq_kv=30, head_dim=16, mask="sliding_window", window=64),
    "causal": dict(batch=1, heads_q=4, heads_kv=4, seq_q=96, seq_kv=96, head_dim=64, mask="causal"),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def impl():
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "", "ATTNBENCH_PLUGIN_MODULES": "attnbench_local_attention"})
    assert not registry.failures, [(p.name, p.errors) for p in registry.failures]
    return registry.get("local_attention")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("shape", CASES)
def test_passes_attnbench_rule_forward_and_backward(impl, shape, dtype):
    case = Case(**CASES[shape], dtype=dtype, pass_="fwd+bwd")
    assert impl.declines(case) is None
    assert forward_backward_problem(impl.build(case), case, impl.layout) is None


def test_declares_what_it_cannot_do(impl):
    assert "GQA" in impl.declines(Case(1, 4, 2, 16, 16, 16, mask="causal"))
    assert "seq_q != seq_kv" in impl.declines(Case(1, 2, 2, 8, 16, 16, mask="causal"))
    assert "mask none" in impl.declines(Case(1, 2, 2, 16, 16, 16))


def test_missing_library_is_unsupported_with_the_reason(impl, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "local_attention", None)
    with pytest.raises(Unsupported, match="local-attention is not importable"):
        impl.build(Case(1, 2, 2, 16, 16, 16, mask="causal"))
