"""flash_attn2 and flash_attn3 against attnbench's float64 reference on a CUDA GPU.

The kernel tests run wherever the library imports and a CUDA device exists
(skipped otherwise); the rule is attnbench's, for the output and dQ, dK, dV.
"""

import importlib.util
import sys

import pytest
import torch

from attnbench import Case, Unsupported
from attnbench.conformance import GPU_SHAPES, forward_backward_problem
from attnbench.plugins import load_registry

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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("name", MODULES)
def test_passes_attnbench_rule_forward_and_backward(registry, name, shape, dtype):
    runnable(name)
    case = Case(**GPU_SHAPES[shape], dtype=dtype, device="cuda", pass_="fwd+bwd")
    impl = registry.get(name)
    assert impl.declines(case) is None
    try:
        fn = impl.build(case)
    except Unsupported as exc:
        pytest.skip(exc.reason)
    assert forward_backward_problem(fn, case, impl.layout) is None


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
