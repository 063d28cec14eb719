"""xformers against attnbench's float64 reference on a CUDA GPU; skipped without xformers or CUDA.

The rule is attnbench's, for the output and dQ, dK, dV.
"""

import importlib.util
import sys

import pytest
import torch

from attnbench import Case, Unsupported
from attnbench.conformance import GPU_SHAPES, forward_backward_problem
from attnbench.plugins import load_registry


@pytest.fixture(scope="module")
def impl():
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "", "ATTNBENCH_PLUGIN_MODULES": "attnbench_xformers"})
    assert not registry.failures, [(p.name, p.errors) for p in registry.failures]
    return registry.get("xformers")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_passes_attnbench_rule_forward_and_backward(impl, shape, dtype):
    if importlib.util.find_spec("xformers") is None:
        pytest.skip("xformers is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    case = Case(**GPU_SHAPES[shape], dtype=dtype, device="cuda", pass_="fwd+bwd")
    assert impl.declines(case) is None
    try:
        fn = impl.build(case)
    except Unsupported as exc:
        pytest.skip(exc.reason)
    assert forward_backward_problem(fn, case, impl.layout) is None


def test_missing_library_is_unsupported_with_the_reason(impl, monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    with pytest.raises(Unsupported, match="xformers is not importable"):
        impl.build(Case(1, 2, 2, 16, 16, 64, device="cuda"))


def test_declares_cuda_and_no_block_sparse(impl):
    assert "device cpu" in impl.declines(Case(1, 2, 2, 16, 16, 64))
    assert "mask block_sparse" in impl.declines(Case(1, 2, 2, 16, 16, 64, device="cuda", mask="block_sparse", block=8))
