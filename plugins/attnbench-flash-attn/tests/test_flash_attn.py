"""flash_attn2 and flash_attn3 against attnbench's float64 reference on a CUDA GPU.

The kernel tests run wherever the library imports and a CUDA device exists
(skipped otherwise); the rule is attnbench's, for the output and dQ, dK, dV,
on dense batches, (flash_attn2) ragged and paged ones, and the variants each
declares (softcap, ALiBi, 192/128 head dims, fp8). The translation of attnbench's
packed and variant keywords into FlashAttention's arguments, and the release and
head-dim checks, are checked on the CPU.
"""

import importlib.util
import sys
import types

import pytest
import torch
from attnbench_flash_attn import (
    PAGE_MULTIPLE,
    call_variants,
    kvcache_arguments,
    paged_route,
    paged_varlen_arguments,
    value_dim_problem,
    variant_arguments,
    varlen_arguments,
)

from attnbench import Case, Unsupported
from attnbench.conformance import (
    GPU_SHAPES,
    PACKED_GPU_SHAPES,
    VARIANT_GPU_SHAPES,
    call_problem,
    forward_backward_problem,
    gpu_variant_case,
    packed_problem,
)
from attnbench.measure.correctness import make_inputs
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


# --- variants: softcap, ALiBi, value head dims, fp8 -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn],
                         ids=["float16", "bfloat16", "float8_e4m3fn"])
@pytest.mark.parametrize("shape", VARIANT_GPU_SHAPES)
@pytest.mark.parametrize("name", MODULES)
def test_declared_variants_pass_attnbench_rule(registry, name, shape, dtype):
    runnable(name)
    impl = registry.get(name)
    case = gpu_variant_case(shape, dtype)
    if impl.declines(case):
        pytest.skip(impl.declines(case))
    try:
        fn = impl.build(case)
    except Unsupported as exc:
        pytest.skip(exc.reason)
    assert call_problem(fn, case, impl.layout) is None


def test_variant_declarations(registry):
    fa2, fa3 = registry.get("flash_attn2"), registry.get("flash_attn3")
    assert fa2.score_mods == {"softcap", "alibi"} and not fa2.head_dim_v
    assert fa3.score_mods == {"softcap"} and fa3.head_dim_v
    assert torch.float8_e4m3fn in fa3.dtypes and torch.float8_e4m3fn not in fa2.dtypes
    assert torch.float8_e5m2 not in fa3.dtypes  # hopper/flash_api.cpp: fp16, bf16 and fp8_e4m3 only
    sinks = Case(1, 2, 2, 16, 16, 64, dtype=torch.float16, device="cuda", sinks=True)
    assert "sinks not supported" in fa2.declines(sinks) and "sinks not supported" in fa3.declines(sinks)
    assert "head_dim_v" in fa2.declines(Case(1, 2, 2, 16, 16, 192, head_dim_v=128, dtype=torch.float16, device="cuda"))


def _func_2_5(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), alibi_slopes=None):
    """flash_attn_func's signature before softcap (only the signature is read)."""


def _func_2_6(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
              alibi_slopes=None):
    """flash_attn_func's signature from 2.6."""


def _func_3(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None, v_descale=None,
            window_size=(-1, -1), attention_chunk=0, softcap=0.0):
    """FlashAttention 3's flash_attn_func signature (hopper/flash_attn_interface.py)."""


def test_variant_arguments_follow_the_release():
    capped = Case(1, 2, 2, 16, 16, 64, dtype=torch.float16, device="cuda", softcap=30.0, bias="alibi")
    assert variant_arguments(capped, [_func_2_6], "flash_attn 2.6.3") == {"softcap": 30.0}
    with pytest.raises(Unsupported, match=r"flash_attn 2.5.9: _func_2_5 takes no softcap= \(FlashAttention 2 took "
                                          r"softcap from 2.6\)"):
        variant_arguments(capped, [_func_2_5], "flash_attn 2.5.9")
    alibi = Case(1, 2, 2, 16, 16, 64, dtype=torch.float16, device="cuda", bias="alibi")
    assert variant_arguments(alibi, [_func_2_5], "flash_attn 2.5.9") == {}
    with pytest.raises(Unsupported, match="takes no alibi_slopes="):
        variant_arguments(alibi, [_func_3], "flash_attn_interface")
    fp8 = Case(1, 2, 2, 16, 16, 64, dtype=torch.float8_e4m3fn, device="cuda")
    assert variant_arguments(fp8, [_func_3], "flash_attn_interface") == {}
    with pytest.raises(Unsupported, match="takes no q_descale="):
        variant_arguments(fp8, [_func_2_6], "flash_attn 2.6.3")


def test_call_variants_pass_the_slopes_and_descales_and_nothing_else():
    alibi = Case(2, 4, 2, 8, 16, 64, bias="alibi", seqlens_q=(8, 3), seqlens_kv=(16, 3))
    keywords = make_inputs(alibi, 0).keywords
    assert set(call_variants(keywords)) == {"alibi_slopes"}
    assert call_variants(keywords)["alibi_slopes"] is keywords["alibi_slopes"]
    fp8 = make_inputs(Case(2, 4, 2, 8, 16, 64, dtype=torch.float8_e4m3fn), 0).keywords
    descales = call_variants(fp8)
    assert set(descales) == {"q_descale", "k_descale", "v_descale"}
    assert all(t.shape == (2, 2) and t.dtype == torch.float32 for t in descales.values())  # (batch, heads_kv)


def test_value_head_dims_follow_flashattention_3s_checks():
    hopper, ampere = (9, 0), (8, 0)

    def case(d, dv, dtype=torch.bfloat16):
        return Case(1, 2, 2, 16, 16, d, head_dim_v=dv, dtype=dtype, device="cuda")

    assert value_dim_problem(case(192, 128), hopper) is None
    assert value_dim_problem(case(192, 128, torch.float8_e4m3fn), hopper) is None
    assert value_dim_problem(case(64, 512), hopper) is None and value_dim_problem(case(48, 32), hopper) is None
    assert "(128, 192]" in value_dim_problem(case(256, 128), hopper)
    assert "(128, 192]" in value_dim_problem(case(192, 64), hopper)
    assert "Hopper only" in value_dim_problem(case(192, 128), ampere)
    assert "over 256 needs fp16 or bf16" in value_dim_problem(case(64, 512, torch.float8_e4m3fn), hopper)
    assert "multiples of 16" in value_dim_problem(case(40, 40, torch.float8_e4m3fn), hopper)
    assert value_dim_problem(case(40, 40), hopper) is None  # equal dims: only the alignment applies
