"""flash_attn2 and flash_attn3 against attnbench's float64 reference on a CUDA GPU.

The kernel tests run wherever the library imports and a CUDA device exists
(skipped otherwise); the rule is attnbench's, for the output and dQ, dK, dV,
on dense batches and (flash_attn2) ragged and paged ones. The translation of
attnbench's packed keywords into FlashAttention's arguments is checked on the CPU.
"""

import importlib.util
import sys
import types

import pytest
import torch
from attnbench_flash_attn import PAGE_MULTIPLE, kvcache_arguments, paged_route, paged_varlen_arguments, varlen_arguments

from attnbench import Case, Unsupported
from attnbench.conformance import GPU_SHAPES, PACKED_GPU_SHAPES, forward_backward_problem, packed_problem
from attnbench.packing import call_keywords
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


# --- packed batches: ragged (varlen) and paged (kvcache) --------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("shape", PACKED_GPU_SHAPES)
def test_packed_batches_pass_attnbench_rule(registry, shape, dtype):
    runnable("flash_attn2")
    fields = PACKED_GPU_SHAPES[shape]
    case = Case(**fields, dtype=dtype, device="cuda", pass_="fwd" if "page_size" in fields else "fwd+bwd")
    impl = registry.get("flash_attn2")
    assert impl.declines(case) is None
    try:
        fn = impl.build(case)
    except Unsupported as exc:
        if case.page_size % PAGE_MULTIPLE:
            assert f"multiple of {PAGE_MULTIPLE}" in exc.reason
        pytest.skip(exc.reason)
    assert case.page_size is None or case.page_size % PAGE_MULTIPLE == 0, "FlashAttention 2 took a page it refuses"
    assert packed_problem(fn, case) is None


def test_only_flash_attn2_declares_packed_batches(registry):
    assert registry.get("flash_attn2").ragged and registry.get("flash_attn2").paged
    assert not registry.get("flash_attn3").ragged and not registry.get("flash_attn3").paged


RAGGED = Case(3, 8, 2, 40, 48, 64, dtype=torch.float16, mask="causal", seqlens_q=(16, 1, 40), seqlens_kv=(48, 33, 40))
PAGED = Case(3, 8, 2, 20, 600, 64, dtype=torch.float16, mask="causal", seqlens_q=(20, 1, 3),
             seqlens_kv=(20, 600, 300), page_size=256)


def test_varlen_arguments_rename_attnbench_keywords():
    keywords = call_keywords(RAGGED, 0)
    args = varlen_arguments(keywords)
    assert args["cu_seqlens_q"] is keywords["cu_seqlens_q"] and args["cu_seqlens_k"] is keywords["cu_seqlens_kv"]
    assert (args["max_seqlen_q"], args["max_seqlen_k"]) == (40, 48)
    assert args["cu_seqlens_k"].tolist() == [0, 48, 81, 121]


def test_paged_arguments_carry_the_shuffled_table_and_the_cache_lengths():
    keywords = call_keywords(PAGED, 3)
    cache = kvcache_arguments(keywords)
    assert cache["block_table"] is keywords["block_table"] and cache["cache_seqlens"].tolist() == [20, 600, 300]
    varlen = paged_varlen_arguments(keywords, PAGED.seq_kv)
    assert varlen["cu_seqlens_k"].dtype == torch.int32 and varlen["cu_seqlens_k"].tolist() == [0, 20, 620, 920]
    assert varlen["block_table"] is keywords["block_table"] and varlen["cu_seqlens_q"].tolist() == [0, 20, 21, 24]
    assert (varlen["max_seqlen_q"], varlen["max_seqlen_k"]) == (20, 600)


def _varlen_with_table(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, block_table=None):
    """flash_attn_varlen_func's signature in a release that takes block_table (only the signature is read)."""


def _varlen_without_table(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0):
    """flash_attn_varlen_func's signature before block_table."""


def _kvcache_with_table(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, block_table=None):
    """flash_attn_with_kvcache's signature with block_table."""


def _release(varlen):
    return types.SimpleNamespace(flash_attn_varlen_func=varlen, flash_attn_with_kvcache=_kvcache_with_table, __version__="2.x")


def test_paged_route_follows_the_release_and_the_page_size():
    decode = Case(2, 8, 2, 1, 600, 64, dtype=torch.float16, seqlens_q=(1, 1), seqlens_kv=(600, 3), page_size=256)
    assert paged_route(decode, _release(_varlen_with_table)) == "kvcache"
    assert paged_route(PAGED, _release(_varlen_with_table)) == "varlen"
    with pytest.raises(Unsupported, match=r"flash_attn_varlen_func takes no block_table.*1\.\.20"):
        paged_route(PAGED, _release(_varlen_without_table))
    with pytest.raises(Unsupported, match=r"multiple of 256 tokens .* not page_size 16"):
        paged_route(Case(2, 8, 2, 1, 40, 64, seqlens_q=(1, 1), seqlens_kv=(40, 3), page_size=16), _release(_varlen_with_table))
