"""xformers against attnbench's float64 reference on a CUDA GPU; skipped without xformers or CUDA.

The rule is attnbench's, for the output and dQ, dK, dV, on dense and ragged batches
and ALiBi. The probe's short cases and the ALiBi tensor bias are checked on the CPU.
"""

import importlib.util
import sys

import pytest
import torch

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
from attnbench.measure import correctness as corr
from attnbench.plugins import load_registry

RAGGED_SHAPES = [name for name, shape in PACKED_GPU_SHAPES.items() if "page_size" not in shape]


@pytest.fixture(scope="module")
def impl():
    registry = load_registry(environ={"ATTNBENCH_PLUGINS": "", "ATTNBENCH_PLUGIN_MODULES": "attnbench_xformers"})
    assert not registry.failures, [(p.name, p.errors) for p in registry.failures]
    return registry.get("xformers")


def runnable():
    if importlib.util.find_spec("xformers") is None:
        pytest.skip("xformers is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_passes_attnbench_rule_forward_and_backward(impl, shape, dtype):
    runnable()
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", RAGGED_SHAPES)
def test_ragged_batches_pass_attnbench_rule_forward_and_backward(impl, shape, dtype):
    runnable()
    case = Case(**PACKED_GPU_SHAPES[shape], dtype=dtype, device="cuda", pass_="fwd+bwd")
    assert impl.declines(case) is None
    try:
        fn = impl.build(case)
    except Unsupported as exc:
        pytest.skip(exc.reason)
    assert packed_problem(fn, case) is None


def test_declares_ragged_but_not_paged(impl):
    ragged = Case(2, 4, 4, 40, 40, 64, device="cuda", seqlens_q=(40, 3), seqlens_kv=(40, 3))
    assert impl.declines(ragged) is None
    assert "paged" in impl.declines(Case(2, 4, 4, 1, 40, 64, device="cuda", seqlens_q=(1, 1), seqlens_kv=(40, 3),
                                         page_size=16))


def test_the_probe_cuts_each_sequence_as_the_dense_probe_cuts_a_batch():
    from attnbench_xformers import PROBE_SEQ, probe_case

    dense = probe_case(Case(4, 8, 2, 300, 1000, 64, device="cuda", mask="causal"))
    assert (dense.batch, dense.seq_q, dense.seq_kv) == (1, PROBE_SEQ, 2 * PROBE_SEQ)
    ragged = probe_case(Case(3, 8, 2, 300, 1000, 64, device="cuda", mask="causal", pass_="fwd+bwd",
                             seqlens_q=(1, 300, 20), seqlens_kv=(1000, 300, 30)))
    assert ragged.seqlens_q == (1, PROBE_SEQ, 20) and ragged.seqlens_kv == (1 + PROBE_SEQ, PROBE_SEQ, 30)
    assert (ragged.seq_q, ragged.seq_kv, ragged.mask, ragged.heads_kv, ragged.pass_) == (
        PROBE_SEQ, 1 + PROBE_SEQ, "causal", 2, "fwd+bwd")


# --- ALiBi as a tensor bias -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", VARIANT_GPU_SHAPES)
def test_declared_variants_pass_attnbench_rule(impl, shape, dtype):
    runnable()
    case = gpu_variant_case(shape, dtype)
    if impl.declines(case):
        pytest.skip(impl.declines(case))
    try:
        fn = impl.build(case)
    except Unsupported as exc:
        pytest.skip(exc.reason)
    assert call_problem(fn, case, impl.layout) is None


def test_declares_alibi_only(impl):
    assert impl.score_mods == {"alibi"} and not impl.head_dim_v
    assert "softcap not supported" in impl.declines(Case(1, 2, 2, 16, 16, 64, device="cuda", softcap=5.0))


@pytest.mark.parametrize("mask, window", [("none", None), ("causal", None), ("sliding_window", 7)])
@pytest.mark.parametrize("heads_kv", [4, 2])
def test_the_alibi_bias_gives_attnbenchs_alibi_under_the_mask(mask, window, heads_kv):
    """On the CPU: plain attention plus ``alibi_bias`` (as xformers adds it) matches the float64 reference."""
    from attnbench_xformers import BIAS_ALIGNMENT, alibi_bias

    case = Case(2, 4, heads_kv, 13, 21, 16, mask=mask, window=window, bias="alibi")
    inputs = corr.make_inputs(case, 0)
    bias = alibi_bias(case, inputs.keywords["alibi_slopes"], torch.float64)
    assert bias.stride(-2) % BIAS_ALIGNMENT == 0 and bias.stride(0) == 0, "rows aligned, the batch a broadcast"
    q = inputs.q.double().view(2, heads_kv, 4 // heads_kv, 13, 16)
    k, v = (t.double()[:, :, None] for t in (inputs.k, inputs.v))
    scores = q @ k.transpose(-2, -1) * case.softmax_scale + bias.reshape(2, heads_kv, 4 // heads_kv, 13, 21)
    out = (torch.softmax(scores, dim=-1) @ v).view(2, 4, 13, 16)
    expected = corr.reference_outputs(inputs, case, dtype=torch.float64)[0]
    assert (out - expected).abs().max() < 1e-12
    if mask != "none":
        assert torch.isinf(bias).any() and not torch.isinf(bias[..., -1, -1]).any(), "the last row sees the last key"
