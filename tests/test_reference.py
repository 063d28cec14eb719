"""The chunked reference math (``measure.correctness``) against plain dense attention written here, and its memory.

The dense version repeats k and v to the query heads, builds the whole mask and
runs matmul, softmax, matmul at once: what the chunked one must equal on every
mask, GQA and MQA, ``seq_q != seq_kv``, sampled rows, forward and gradients, in
float64 (the reference) and in the case dtype (the pass rule's baseline, whose
rounding must stay that of plain attention). Chunks are forced small to cut
heads, groups and rows every way.
"""

from __future__ import annotations

import pytest
import torch

from attnbench import Case
from attnbench.masks import dense_mask
from attnbench.measure import correctness as corr
from attnbench.measure.memory import peak_bytes_cpu, reference_peak_bytes

MiB = 2**20
SHAPES = {
    "plain": Case(2, 4, 4, 33, 33, 16),
    "causal_cross_gqa": Case(2, 4, 2, 17, 40, 16, mask="causal"),
    "sliding_mqa": Case(1, 6, 1, 20, 50, 8, mask="sliding_window", window=7),
    "block_sparse_gqa": Case(2, 8, 2, 30, 64, 16, mask="block_sparse", block=4),
    "decode_gqa": Case(3, 8, 2, 1, 70, 16, mask="causal"),
    "long_queries": Case(1, 4, 4, 25, 9, 8),
    "scale": Case(1, 2, 1, 12, 12, 8, mask="causal", scale=0.3),
}
CHUNKS = [corr.CHUNK_ELEMENTS, 64, 300, 2000]
"""The default, and chunks of one row of one head, of a few rows or heads, and of a group."""


def case_of(name: str, dtype: torch.dtype = torch.float32, pass_: str = "fwd") -> Case:
    fields = {f: getattr(SHAPES[name], f) for f in
              ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim", "mask", "window", "block", "scale")}
    return Case(**fields, dtype=dtype, pass_=pass_)


def dense(q, k, v, case: Case, dtype: torch.dtype) -> torch.Tensor:
    """Plain attention, the obvious way, in ``dtype``."""
    q, k, v = (t.to(dtype) for t in (q, k, v))
    k, v = (t.repeat_interleave(case.group_size, dim=1) for t in (k, v))
    scores = (q * case.softmax_scale) @ k.transpose(-2, -1)
    allowed = dense_mask(case.mask, case.window, case.seq_q, case.seq_kv, block=case.block)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def dense_grads(inputs: corr.Inputs, case: Case, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    q, k, v = (t.detach().to(dtype).requires_grad_(True) for t in (inputs.q, inputs.k, inputs.v))
    out = dense(q, k, v, case, dtype)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), inputs.grad_out.to(dtype)))


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("name", SHAPES)
def test_reference_equals_dense_float64(monkeypatch, name, chunk):
    monkeypatch.setattr(corr, "CHUNK_ELEMENTS", chunk)
    case = case_of(name, pass_="fwd+bwd")
    inputs = corr.make_inputs(case, 5)
    expected = dense(inputs.q, inputs.k, inputs.v, case, torch.float64)
    torch.testing.assert_close(corr.math_attention(inputs.q, inputs.k, inputs.v, case, dtype=torch.float64),
                               expected, rtol=0, atol=1e-13)
    rows = torch.tensor([0, 1, case.seq_q - 1]).unique() if case.seq_q > 1 else torch.tensor([0])
    torch.testing.assert_close(corr.math_attention(inputs.q, inputs.k, inputs.v, case, dtype=torch.float64, rows=rows),
                               expected[:, :, rows], rtol=0, atol=1e-13)
    for got, want in zip(corr.math_attention_grads(inputs, case, dtype=torch.float64),
                         dense_grads(inputs, case, torch.float64)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", SHAPES)
def test_baseline_is_plain_attention_in_its_dtype(name, dtype):
    """Unchunked (small cases): the same bits as the obvious code in that dtype, gradients summed over GQA groups included."""
    case = case_of(name, dtype, pass_="fwd+bwd")
    inputs = corr.make_inputs(case, 2)
    assert torch.equal(corr.math_attention(inputs.q, inputs.k, inputs.v, case, dtype=dtype),
                       dense(inputs.q, inputs.k, inputs.v, case, dtype))
    for got, want in zip(corr.math_attention_grads(inputs, case, dtype=dtype), dense_grads(inputs, case, dtype)):
        assert got.dtype == dtype
        assert torch.equal(got, want)


@pytest.mark.parametrize("chunk", CHUNKS[1:])
@pytest.mark.parametrize("name", ["causal_cross_gqa", "sliding_mqa", "block_sparse_gqa"])
def test_chunked_baseline_stays_as_rough_as_plain_attention(monkeypatch, name, chunk):
    """Cut into chunks, the baseline moves by rounding only: its error against float64 stays that of plain attention."""
    monkeypatch.setattr(corr, "CHUNK_ELEMENTS", chunk)
    case = case_of(name, torch.bfloat16, pass_="fwd+bwd")
    inputs = corr.make_inputs(case, 3)
    truth = dense_grads(inputs, case, torch.float64)
    plain = dense_grads(inputs, case, torch.bfloat16)
    for got, want, exact in zip(corr.math_attention_grads(inputs, case, dtype=torch.bfloat16), plain, truth):
        plain_err = corr.error_metrics(want, exact)["rel_err"]
        assert corr.error_metrics(got, exact)["rel_err"] <= 1.5 * plain_err + 1e-3


def test_chunks_stay_within_the_bound_and_the_tests_cut_every_way(monkeypatch):
    cuts = set()
    for chunk in CHUNKS:
        monkeypatch.setattr(corr, "CHUNK_ELEMENTS", chunk)
        for name in SHAPES:
            case = case_of(name)
            for dtype, repeat in ((torch.float64, False), (torch.float32, False), (torch.float64, case.gqa)):
                plan = corr.chunking(case, case.seq_q, dtype, repeat=repeat)
                if plan.kv_heads * plan.group * plan.rows > 1:
                    assert plan.kv_heads * plan.group * plan.rows * case.seq_kv <= chunk
                assert repeat or plan.group == 1  # the forward copies no k: a group's heads one at a time
                cuts.add(("heads", plan.kv_heads < case.batch * case.heads_kv))
                cuts.add(("group", plan.group < case.group_size if repeat else None))
                cuts.add(("rows", plan.rows < case.seq_q))
    assert {("heads", True), ("group", True), ("group", False), ("rows", True)} <= cuts


def test_float64_copies_of_a_chunk_stay_within_half_the_cache():
    case = Case(8, 32, 8, 1, 131072, 128, dtype=torch.bfloat16, device="cuda", mask="causal")
    plan = corr.chunking(case, 1, torch.float64)
    copies = 2 * plan.kv_heads * case.seq_kv * case.head_dim * 8
    assert copies <= kv_cache_bytes(case) / 2


def test_the_mask_is_built_a_tile_at_a_time(monkeypatch):
    monkeypatch.setattr(corr, "CHUNK_ELEMENTS", 300)
    tiles = []
    real = corr.mask_tile

    def recording(mask, window, seq_q, seq_kv, rows, keys, *args, **kwargs):
        tiles.append(rows[1] - rows[0])
        return real(mask, window, seq_q, seq_kv, rows, keys, *args, **kwargs)

    monkeypatch.setattr(corr, "mask_tile", recording)
    case = case_of("causal_cross_gqa", pass_="fwd+bwd")
    inputs = corr.make_inputs(case, 0)
    corr.math_attention(inputs.q, inputs.k, inputs.v, case, dtype=torch.float64)
    corr.math_attention_grads(inputs, case, dtype=torch.float64)
    assert tiles and max(tiles) <= corr.chunking(case, case.seq_q, torch.float64).rows < case.seq_q


# --- memory ----------------------------------------------------------------------


def kv_cache_bytes(case: Case) -> int:
    return 2 * case.batch * case.heads_kv * case.seq_kv * case.head_dim * case.dtype.itemsize


def input_bytes(inputs: corr.Inputs) -> int:
    return sum(t.numel() * t.element_size() for t in (inputs.q, inputs.k, inputs.v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_reference_needs_less_than_three_caches(dtype):
    """Inputs held and the peak of computing the float64 reference together stay below 3x the KV cache."""
    case = Case(2, 8, 2, 1, 65536, 64, dtype=dtype, mask="causal")
    inputs = corr.make_inputs(case, 0)

    def reference():
        return corr.math_attention(inputs.q, inputs.k, inputs.v, case, dtype=torch.float64)

    reference()
    measured = peak_bytes_cpu(reference)
    assert input_bytes(inputs) + measured < 3 * kv_cache_bytes(case)
    assert measured <= reference_peak_bytes(case, torch.float64) < 1.2 * measured


def test_long_decode_reference_is_predicted_below_three_caches():
    """The issue's case, by the model alone: B8 H32/8 D128 at 131072 keys (a 4 GiB bf16 cache)."""
    case = Case(8, 32, 8, 1, 131072, 128, dtype=torch.bfloat16, device="cuda", mask="causal")
    inputs = (2 * case.batch * case.heads_kv * case.seq_kv + case.batch * case.heads_q) * case.head_dim * 2
    assert inputs + reference_peak_bytes(case, torch.float64) < 3 * kv_cache_bytes(case)


@pytest.mark.parametrize("case", [
    Case(1, 8, 8, 2048, 2048, 64, mask="causal"),
    Case(1, 8, 1, 512, 1024, 64, dtype=torch.bfloat16, mask="sliding_window", window=100),
    Case(2, 4, 2, 300, 700, 32, mask="block_sparse", block=64, pass_="fwd+bwd"),
    Case(1, 8, 2, 512, 1024, 64, dtype=torch.bfloat16, pass_="fwd+bwd"),
], ids=lambda c: c.label())
@pytest.mark.parametrize("dtype", ["float64", "case"])
def test_reference_peak_model_covers_the_measurement(case, dtype):
    dtype = torch.float64 if dtype == "float64" else case.dtype
    inputs = corr.make_inputs(case, 0)
    rows = corr.sample_rows(case, 256, 0)
    if case.needs_backward:
        def reference():
            return corr.math_attention_grads(inputs, case, dtype=dtype)
    else:
        def reference():
            return corr.math_attention(inputs.q, inputs.k, inputs.v, case, dtype=dtype, rows=rows)
    reference()
    measured = peak_bytes_cpu(reference)
    assert measured <= reference_peak_bytes(case, dtype, 256) < 1.6 * measured + 2 * MiB
