"""The zoo: the block_sparse mask, the structured exact implementations, the approximations and the seed notes' code.

Exact implementations are held to attnbench's own rule (``correctness.judge``:
at most 2x the error of plain attention in the same dtype, plus a floor)
against the float64 ``reference_attention``. Approximate ones must give a
finite error that falls as their parameter grows.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnbench import Case, Unsupported
from attnbench.impls import block_sparse, seed
from attnbench.impls.reference import reference_attention
from attnbench.masks import count_visible_pairs, dense_mask, mask_mod, visible_bounds
from attnbench.measure import correctness as corr
from attnbench.plugins import load_registry
from attnbench.suite import load_suite
from attnbench.worker import Request, measure

IMPLS = load_registry(environ={"ATTNBENCH_PLUGINS": ""}).implementations


# --- inputs and the rule ------------------------------------------------------------


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.transpose(1, 2).contiguous() if layout == "bshd" else t


def run_forward(name: str, case: Case, inputs: corr.Inputs) -> torch.Tensor:
    """``name``'s output on the inputs, given and returned in bhsd whatever its layout."""
    impl = IMPLS[name]
    assert impl.declines(case) is None, impl.declines(case)
    with torch.no_grad():
        out = impl.build(case)(*(to_layout(t, impl.layout) for t in (inputs.q, inputs.k, inputs.v)))
    out = to_layout(out, impl.layout)
    assert corr.output_problem(out, case, inputs.q) is None
    return out


def forward_verdict(name: str, case: Case, seed_: int = 0) -> tuple[str | None, dict]:
    """(why it fails attnbench's rule or None, its errors) for one seeded forward call."""
    inputs = corr.make_inputs(case, seed_)
    expected = reference_attention(inputs.q, inputs.k, inputs.v, case)
    baseline = corr.math_attention(inputs.q, inputs.k, inputs.v, case, dtype=case.dtype)
    errors = corr.error_metrics(run_forward(name, case, inputs), expected)
    return corr.judge(errors, corr.error_metrics(baseline, expected), case.dtype_name, corr.Tolerance()), errors


def backward_failures(name: str, case: Case) -> list[str]:
    """Reasons the output or any of dQ, dK, dV fails the rule (empty when all pass)."""
    inputs = corr.make_inputs(case, 0)
    expected = corr.math_attention_grads(inputs, case, dtype=torch.float64)
    baseline = corr.math_attention_grads(inputs, case, dtype=case.dtype)
    leaves = [t.detach().requires_grad_(True) for t in (inputs.q, inputs.k, inputs.v)]
    out = IMPLS[name].build(case)(*leaves)
    got = (out.detach(), *torch.autograd.grad(out, leaves, inputs.grad_out))
    failures = []
    for what, g, e, b in zip(("out", "dq", "dk", "dv"), got, expected, baseline):
        reason = corr.judge(corr.error_metrics(g, e), corr.error_metrics(b, e), case.dtype_name, corr.Tolerance())
        if reason:
            failures.append(f"{what}: {reason}")
    return failures


# --- the block_sparse mask ------------------------------------------------------------


def test_block_sparse_counted_by_hand():
    # Block 2, 12 positions. Row 8 (block 4): itself, blocks 3, 2 and 0 (distances 1, 2, 4) = 1 + 2 + 2 + 2.
    # Row 10 (block 5): itself + 1 key, blocks 4, 3, 1 (distances 1, 2, 4) and block 0 (global) = 2 + 2 + 2 + 2 + 1.
    per_row = [1, 2, 3, 4, 5, 6, 7, 8, 7, 8, 9, 10]
    assert count_visible_pairs("block_sparse", None, 12, 12, block=2) == sum(per_row) == 70
    assert dense_mask("block_sparse", None, 12, 12, block=2).sum(dim=1).tolist() == per_row
    # Bottom-right aligned: two queries over 12 keys are rows 10 and 11 above.
    assert Case(1, 1, 1, 2, 12, 8, mask="block_sparse", block=2).visible_pairs() == 9 + 10
    assert Case(2, 4, 2, 12, 12, 16, mask="block_sparse", block=2).forward_flops() == 2 * 4 * 70 * 4 * 16


@pytest.mark.parametrize(("seq_q", "seq_kv", "block"), [(7, 11, 2), (64, 64, 8), (33, 100, 5), (1, 50, 4), (100, 100, 1),
                                                        (300, 300, 300), (256, 1024, 16)])
def test_block_sparse_count_mask_and_mask_mod_agree(seq_q, seq_kv, block):
    allowed = dense_mask("block_sparse", None, seq_q, seq_kv, block=block)
    assert count_visible_pairs("block_sparse", None, seq_q, seq_kv, block=block) == int(allowed.sum())
    mod = mask_mod("block_sparse", None, seq_q, seq_kv, block=block)
    assert torch.equal(mod(0, 0, torch.arange(seq_q)[:, None], torch.arange(seq_kv)[None, :]), allowed)
    assert allowed.any(dim=1).all(), "every row sees a key"
    causal = dense_mask("causal", None, seq_q, seq_kv)
    assert not (allowed & ~causal).any(), "never a future key"
    previous = (0, 0)
    for row in range(seq_q):
        lo, hi = visible_bounds("block_sparse", None, seq_q, seq_kv, row)
        keys = allowed[row].nonzero().flatten()
        assert lo <= keys.min() and keys.max() < hi, "the bounds hold every visible key"
        assert lo >= previous[0] and hi >= previous[1], "both ends rise with the row (chunked relies on it)"
        previous = (lo, hi)


def test_block_sparse_is_causal_when_one_block_covers_everything():
    assert torch.equal(dense_mask("block_sparse", None, 50, 80, block=80), dense_mask("causal", None, 50, 80))


def test_block_sparse_grows_like_log_not_like_seq():
    pairs = [Case(1, 1, 1, n, n, 1, mask="block_sparse", block=64).visible_pairs() / n for n in (1024, 4096, 16384)]
    assert pairs[1] - pairs[0] == pytest.approx(pairs[2] - pairs[1], rel=0.05), "each 4x adds the same 2 blocks per row"


def test_case_block_belongs_to_block_sparse():
    with pytest.raises(ValueError, match="block_sparse needs a positive integer block"):
        Case(1, 1, 1, 8, 8, 8, mask="block_sparse")
    with pytest.raises(ValueError, match="block is only meaningful"):
        Case(1, 1, 1, 8, 8, 8, mask="causal", block=4)
    case = Case(1, 2, 2, 8, 16, 8, mask="block_sparse", block=4)
    assert case.label() == "B1 H2 N8x16 D8 float32 block_sparse4 fwd"
    assert Case.from_dict(case.to_dict()) == case
    assert "block" not in Case(1, 1, 1, 8, 8, 8).to_dict(), "other cases keep the keys they always had"


def test_suite_block_axis_is_dropped_for_other_masks(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmatrix:\n  seq: 64\n  mask: [causal, block_sparse]\n  block: [8, 16]\n")
    assert [(c.mask, c.block) for c in load_suite(path).cases("cpu")] == [
        ("causal", None), ("block_sparse", 8), ("block_sparse", 16)]


# --- exact implementations ----------------------------------------------------------

WINDOW_CASES = {
    "self": dict(batch=2, heads_q=4, heads_kv=4, seq_q=200, seq_kv=200, head_dim=32, window=48),
    "cross_gqa_bf16": dict(batch=1, heads_q=8, heads_kv=2, seq_q=70, seq_kv=230, head_dim=64, window=33,
                           dtype=torch.bfloat16),
    "decode_mqa": dict(batch=2, heads_q=4, heads_kv=1, seq_q=1, seq_kv=300, head_dim=32, window=64),
    "window_past_the_start": dict(batch=1, heads_q=2, heads_kv=2, seq_q=20, seq_kv=24, head_dim=16, window=100),
    "window_one": dict(batch=1, heads_q=2, heads_kv=2, seq_q=65, seq_kv=65, head_dim=16, window=1),
    "fp16": dict(batch=1, heads_q=2, heads_kv=2, seq_q=130, seq_kv=130, head_dim=64, window=70, dtype=torch.float16),
}


@pytest.mark.parametrize("shape", WINDOW_CASES)
def test_sliding_window_passes_the_rule(shape):
    case = Case(**WINDOW_CASES[shape], mask="sliding_window")
    reason, _ = forward_verdict("sliding_window", case)
    assert reason is None, reason


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_sliding_window_backward_passes_the_rule(dtype):
    case = Case(1, 4, 2, 90, 150, 32, dtype=dtype, mask="sliding_window", window=40, pass_="fwd+bwd")
    assert backward_failures("sliding_window", case) == []


def test_sliding_window_work_grows_with_the_window_not_the_sequence(monkeypatch):
    """Its scores are (blocks, 64, 64 + window - 1): seq x (window + 63), not seq x seq."""
    from attnbench.impls.sliding_window import QUERY_BLOCK

    case = Case(1, 1, 1, 4096, 4096, 8, mask="sliding_window", window=128)
    inputs = corr.make_inputs(case, 0)
    seen = []
    softmax = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda x, dim: seen.append(x.numel()) or softmax(x, dim))
    run_forward("sliding_window", case, inputs)
    assert seen == [4096 * (QUERY_BLOCK + 128 - 1)]


BLOCK_SPARSE_CASES = {
    "self_float32": Case(1, 2, 2, 256, 256, 32, mask="block_sparse", block=32),
    "cross_gqa_bfloat16": Case(2, 4, 2, 192, 320, 64, dtype=torch.bfloat16, mask="block_sparse", block=64),
}


@pytest.mark.parametrize("shape", BLOCK_SPARSE_CASES)
def test_block_sparse_passes_the_rule(shape):
    reason, _ = forward_verdict("block_sparse", BLOCK_SPARSE_CASES[shape])
    assert reason is None, reason


def test_block_sparse_layout_marks_its_blocks():
    # Block 16, 128 positions = 8 blocks; query block 5 sees itself (partial), 4, 3, 1 (distances 1, 2, 4) and 0.
    partial, full = block_sparse.block_layout(Case(1, 1, 1, 128, 128, 8, mask="block_sparse", block=16))
    assert partial[5] == [5] and full[5] == [0, 1, 3, 4]
    assert full[0] == [] and full[4] == [0, 2, 3]


def test_block_sparse_declines_misaligned_queries():
    with pytest.raises(Unsupported, match="multiple of the block"):
        IMPLS["block_sparse"].build(Case(1, 1, 1, 1, 100, 8, mask="block_sparse", block=16))


@pytest.mark.parametrize("name", ["eager", "sdpa", "sdpa.math", "chunked", "reference", "flex"])
def test_dense_builtins_take_the_block_sparse_mask(name):
    case = Case(1, 4, 2, 96, 160, 32, mask="block_sparse", block=16)
    reason, _ = forward_verdict(name, case)
    assert reason is None, reason


def test_chunked_skips_the_holes_of_a_block_sparse_pattern(monkeypatch):
    from attnbench.impls.chunked import build

    case = Case(1, 2, 2, 512, 512, 16, mask="block_sparse", block=32)
    inputs = corr.make_inputs(case, 0)
    fn = build(case, q_block=32, kv_block=32)
    calls = []
    exp = torch.exp
    monkeypatch.setattr(torch, "exp", lambda x: calls.append(x.shape) or exp(x))
    out = fn(inputs.q, inputs.k, inputs.v)
    monkeypatch.undo()
    # One torch.exp (the rescale) per block visited; 16 query blocks see 1 + their power-of-two and global blocks.
    visited = sum(len(full) + 1 for full in block_sparse.block_layout(case)[1])
    assert len(calls) == visited < 16 * 17 // 2
    expected = reference_attention(inputs.q, inputs.k, inputs.v, case)
    assert corr.error_metrics(out, expected)["rel_err"] < 1e-5


# --- the seed notes -----------------------------------------------------------------

SEED_CASE = Case(2, 4, 4, 64, 64, 16)


def test_seed_self_attention_as_written_is_caught_as_incorrect():
    reason, errors = forward_verdict("seed.self_attention", SEED_CASE)
    assert reason and "rel-L2" in reason
    assert errors["rel_err"] > 0.5, "attending across heads is nowhere near attention over positions"


def test_seed_multi_head_as_written_raises_the_notes_index_error():
    inputs = corr.make_inputs(SEED_CASE, 0)
    fn = IMPLS["seed.multi_head"].build(SEED_CASE)
    with pytest.raises(IndexError, match="Dimension out of range"):
        fn(*(to_layout(t, "bshd") for t in (inputs.q, inputs.k, inputs.v)))


@pytest.mark.parametrize("case", [SEED_CASE, Case(1, 2, 2, 40, 90, 32, dtype=torch.bfloat16), Case(1, 2, 2, 16, 16, 8, scale=0.3)],
                         ids=["float32", "cross_bfloat16", "scale"])
def test_seed_self_attention_fixed_passes(case):
    reason, _ = forward_verdict("seed.self_attention_fixed", case)
    assert reason is None, reason


def test_seed_fixed_backward_passes():
    case = Case(1, 2, 2, 24, 24, 16, pass_="fwd+bwd")
    inputs = corr.make_inputs(case, 0)
    expected = corr.math_attention_grads(inputs, case, dtype=torch.float64)
    leaves = [to_layout(t, "bshd").requires_grad_(True) for t in (inputs.q, inputs.k, inputs.v)]
    out = IMPLS["seed.self_attention_fixed"].build(case)(*leaves)
    grads = torch.autograd.grad(out, leaves, to_layout(inputs.grad_out, "bshd"))
    for got, want in zip((out, *grads), expected):
        assert corr.error_metrics(to_layout(got, "bshd"), want)["rel_err"] < 1e-5


@pytest.mark.parametrize(("name", "status", "reason"), [
    ("seed.self_attention", "incorrect", "out: rel-L2 error"),
    ("seed.multi_head", "error", "IndexError: Dimension out of range"),
    ("seed.self_attention_fixed", "ok", ""),
])
def test_worker_records_each_seed_version(name, status, reason):
    """What a run records for each: the worker's own correctness pass, no timing."""
    reply = measure(IMPLS[name], Request(impl=name, case=SEED_CASE, seed=0, check_correctness=True, measure_memory=False, measure_time=False))
    assert reply["status"] == status and reason in reply["reason"], reply
    assert (status == "ok") == (name not in seed.AS_WRITTEN)


# --- approximations -------------------------------------------------------------------

APPROXIMATE = ["linformer", "linformer.r64", "linformer.r1024", "int8", "int8.per_token", "int8.per_tensor",
               "performer", "performer.m64", "performer.m1024"]


def forward_error(name: str, case: Case, qk_scale: float = 1.0) -> float:
    inputs = corr.make_inputs(case, 0)
    inputs = corr.Inputs(inputs.q * qk_scale, inputs.k * qk_scale, inputs.v)
    expected = reference_attention(inputs.q, inputs.k, inputs.v, case)
    errors = corr.error_metrics(run_forward(name, case, inputs), expected)
    assert errors["nonfinite"] == 0
    return errors["rel_err"]


def test_approximations_are_declared_and_documented():
    for name in APPROXIMATE:
        impl = IMPLS[name]
        assert not impl.exact and impl.ranked and impl.params and impl.description, name


@pytest.mark.parametrize("name", APPROXIMATE)
def test_approximation_is_finite_on_every_case_it_declares(name):
    impl = IMPLS[name]
    cases = [Case(1, 4, 2, 48, 80, 32), Case(1, 4, 2, 48, 80, 32, dtype=torch.bfloat16, mask="causal"),
             Case(2, 2, 1, 1, 64, 16, mask="causal")]
    checked = 0
    for case in cases:
        if impl.declines(case) is None:
            assert math.isfinite(forward_error(name, case))
            checked += 1
    assert checked


def test_approximate_worker_record_has_an_error_and_no_verdict():
    case = Case(1, 2, 2, 64, 64, 32)
    reply = measure(IMPLS["linformer.r64"], Request(impl="linformer.r64", case=case, seed=0, check_correctness=True,
                                                    measure_memory=False, measure_time=False))
    assert reply["status"] == "ok" and reply["metrics"]["rel_err"] > 0.1


def test_linformer_error_falls_as_the_rank_grows():
    case = Case(1, 4, 4, 512, 512, 64)
    errors = [forward_error(name, case) for name in ("linformer.r64", "linformer", "linformer.r1024")]
    assert errors[0] > errors[1] > errors[2], errors


def test_int8_error_falls_as_the_scales_get_finer():
    case = Case(1, 4, 2, 256, 256, 64, mask="causal")
    coarse, sage, fine = (forward_error(n, case) for n in ("int8.per_tensor", "int8", "int8.per_token"))
    assert coarse >= sage >= fine, (coarse, sage, fine)
    assert fine < 0.05, "8-bit scores stay close to attention"


def test_int8_matmul_paths_agree(monkeypatch):
    """torch._int_mm and the float32 emulation give the same integer products exactly."""
    from attnbench.impls import int8

    gen = torch.Generator().manual_seed(0)
    q8 = torch.randint(-127, 128, (2, 3, 40, 64), dtype=torch.int8, generator=gen)
    k8 = torch.randint(-127, 128, (2, 3, 24, 64), dtype=torch.int8, generator=gen)
    exact = (q8.to(torch.int64) @ k8.to(torch.int64).transpose(-2, -1)).to(torch.float32)
    assert torch.equal(int8.integer_scores(q8, k8), exact)
    monkeypatch.delattr(torch, "_int_mm")
    int8.int_mm_works.cache_clear()
    try:
        assert not int8.int_mm_works("cpu")
        assert torch.equal(int8.integer_scores(q8, k8), exact)
    finally:
        int8.int_mm_works.cache_clear()


@pytest.mark.parametrize("mask", ["none", "causal"])
def test_performer_error_falls_as_features_grow(mask):
    # FAVOR+'s variance grows as exp(|q + k|² x scale): on unit-variance inputs at head_dim 64 the
    # trend drowns in it, so q and k are scaled to the small norms a trained model's are.
    case = Case(1, 4, 4, 256, 256, 64, mask=mask)
    errors = [forward_error(name, case, qk_scale=0.25) for name in ("performer.m64", "performer", "performer.m1024")]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.05


def test_performer_causal_backward_is_finite():
    case = Case(1, 4, 2, 70, 100, 16, mask="causal", pass_="fwd+bwd")
    inputs = corr.make_inputs(case, 0)
    leaves = [t.detach().requires_grad_(True) for t in (inputs.q, inputs.k, inputs.v)]
    grads = torch.autograd.grad(IMPLS["performer"].build(case)(*leaves), leaves, inputs.grad_out)
    assert all(torch.isfinite(g).all() for g in grads)


# --- memory predictions ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "case"), [
    ("sliding_window", Case(1, 4, 4, 2048, 2048, 64, mask="sliding_window", window=128)),
    ("sliding_window", Case(1, 4, 2, 500, 700, 32, dtype=torch.bfloat16, mask="sliding_window", window=300,
                            pass_="fwd+bwd")),
    ("linformer", Case(1, 4, 2, 1024, 1024, 64)),
    ("linformer.r1024", Case(1, 2, 2, 512, 512, 64, pass_="fwd+bwd")),
    ("int8", Case(1, 4, 4, 1024, 1024, 64, mask="causal")),
    ("int8.per_token", Case(1, 4, 2, 512, 768, 64, dtype=torch.bfloat16, mask="sliding_window", window=100)),
    ("performer", Case(1, 4, 4, 1024, 1024, 64)),
    ("performer.m1024", Case(1, 4, 2, 700, 1000, 64, mask="causal")),
    ("performer", Case(1, 2, 2, 300, 300, 32, dtype=torch.bfloat16, mask="causal", pass_="fwd+bwd")),
    ("seed.self_attention_fixed", Case(1, 4, 4, 1024, 1024, 64)),
])
def test_memory_prediction_covers_the_measured_peak(name, case):
    """The budget skips a case by its prediction: it must not fall below what the call really takes."""
    from attnbench.measure.memory import call_peak_bytes, peak_bytes_cpu

    impl = IMPLS[name]
    inputs = corr.make_inputs(case, 0)
    q, k, v = (to_layout(t, impl.layout) for t in (inputs.q, inputs.k, inputs.v))
    fn = impl.build(case)
    if case.needs_backward:
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
        grad_out = to_layout(inputs.grad_out, impl.layout)

        def step():
            out = fn(q, k, v)
            out.backward(grad_out)
            return out
    else:
        def step():
            with torch.no_grad():
                return fn(q, k, v)
    step()
    q.grad = k.grad = v.grad = None
    resident = sum(t.numel() * t.element_size() for t in (q, k, v)) * (2 if case.needs_backward else 1)
    measured = peak_bytes_cpu(step) + resident
    predicted = call_peak_bytes(case, impl)  # the call alone, as measured here: the harness share is apart
    assert measured <= predicted < 4 * measured, (measured, predicted)
