"""The conformance cases: what every implementation is checked on by the pytest kit, and the check adapters share.

A grid small enough to run in seconds on a CPU, wide enough to catch the usual
defects: batch > 1, GQA and MQA, seq_q < seq_kv (bottom-right causal), decoding
(seq_q = 1), sliding windows, every dtype, forward and backward. Packed batches
too: ragged ones (lengths that are no power of two, fewer queries than keys,
GQA, forward and backward) and paged ones (decode, mixed prefill and decode,
lengths that are not whole pages, the harness's shuffled block table). Each
implementation is checked only on what it declares; a case it declares but
cannot run must raise ``Unsupported`` with a reason.

Kernel adapters' own tests (plugins/attnbench-*/tests) use ``GPU_SHAPES`` and
``forward_backward_problem`` (``PACKED_GPU_SHAPES`` and ``packed_problem`` for
packed batches) to judge a built function directly.
"""

from __future__ import annotations

import torch

from attnbench.case import DTYPES, Case
from attnbench.implementation import AttentionFn, from_layout, to_layout
from attnbench.measure import correctness as corr
from attnbench.outcome import GRAD_NAMES

SHAPES = (
    # batch, heads_q, heads_kv, seq_q, seq_kv, head_dim
    (1, 4, 4, 128, 128, 64),
    (2, 8, 2, 64, 192, 32),   # GQA, shorter queries than keys
    (2, 8, 1, 1, 256, 64),    # MQA decoding step
    (1, 2, 2, 96, 96, 128),   # head_dim 128, a length that is no power of two
)
MASKS = (("none", None), ("causal", None), ("sliding_window", 32))
PASSES = ("fwd", "fwd+bwd")
RAGGED = (
    # heads_q, heads_kv, head_dim, seqlens_q, seqlens_kv
    (4, 4, 32, (37, 64, 5), (37, 64, 5)),       # self-attention, a sequence shorter than the window
    (8, 2, 32, (16, 1, 40), (48, 33, 40)),      # GQA, fewer queries than keys, a decoding row
    (2, 1, 64, (1, 70), (1, 70)),               # MQA, a one-token document
)
PAGED = (
    # heads_q, heads_kv, head_dim, seqlens_q, seqlens_kv, page_size
    (8, 2, 32, (1, 1, 1, 1), (37, 16, 70, 1), 16),   # decode over caches that are not whole pages
    (4, 1, 32, (20, 1, 3), (20, 45, 100), 16),       # mixed: a prefill, a decode, a speculative step
    (4, 4, 64, (7, 1), (130, 7), 64),                # chunked prefill over a long cache, page 64
)

GPU_SHAPES = {
    "plain": dict(batch=2, heads_q=4, heads_kv=4, seq_q=256, seq_kv=256, head_dim=64),
    "causal_cross": dict(batch=1, heads_q=4, heads_kv=4, seq_q=100, seq_kv=300, head_dim=64, mask="causal"),
    "gqa_window": dict(batch=1, heads_q=8, heads_kv=2, seq_q=256, seq_kv=256, head_dim=128, mask="sliding_window",
                       window=64),
    "decode_mqa": dict(batch=2, heads_q=8, heads_kv=1, seq_q=1, seq_kv=500, head_dim=64, mask="causal"),
}
"""Named shapes (``Case`` keywords, less dtype, device and pass) for a GPU kernel adapter's own tests:
equal lengths, bottom-right causal with fewer queries than keys, GQA under a window at head_dim 128,
an MQA decoding step."""

PACKED_GPU_SHAPES = {
    "ragged_causal": dict(batch=3, heads_q=4, heads_kv=4, seq_q=300, seq_kv=300, head_dim=64, mask="causal",
                          seqlens_q=(300, 17, 128), seqlens_kv=(300, 17, 128)),
    "ragged_gqa_window": dict(batch=3, heads_q=8, heads_kv=2, seq_q=100, seq_kv=300, head_dim=128,
                              mask="sliding_window", window=64, seqlens_q=(1, 100, 64), seqlens_kv=(257, 100, 300)),
    "paged_decode_p256": dict(batch=4, heads_q=8, heads_kv=1, seq_q=1, seq_kv=1000, head_dim=64, mask="causal",
                              seqlens_q=(1, 1, 1, 1), seqlens_kv=(500, 17, 256, 1000), page_size=256),
    "paged_mixed_p256": dict(batch=3, heads_q=8, heads_kv=2, seq_q=100, seq_kv=700, head_dim=128, mask="causal",
                             seqlens_q=(100, 1, 3), seqlens_kv=(300, 700, 50), page_size=256),
    "paged_decode_p16": dict(batch=2, heads_q=8, heads_kv=2, seq_q=1, seq_kv=100, head_dim=64, mask="causal",
                             seqlens_q=(1, 1), seqlens_kv=(40, 100), page_size=16),
}
"""Packed shapes (``Case`` keywords, less dtype, device and pass) for a GPU kernel adapter's own tests: ragged
self-attention, GQA under a window with fewer queries than keys, paged decode and a mixed prefill and decode batch
in pages of 256 (FlashAttention 2's multiple) and 16 (vLLM's default). Paged ones run forward only."""


def conformance_cases(device: str = "cpu") -> list[Case]:
    """Every shape x dtype x mask x pass of the conformance grid on ``device``."""
    cases = []
    for batch, heads_q, heads_kv, seq_q, seq_kv, head_dim in SHAPES:
        for dtype in DTYPES:
            for mask, window in MASKS:
                for pass_ in PASSES:
                    cases.append(Case(batch, heads_q, heads_kv, seq_q, seq_kv, head_dim, dtype=dtype, device=device,
                                      mask=mask, window=window, pass_=pass_))
    return cases + packed_cases(device)


def packed_cases(device: str = "cpu") -> list[Case]:
    """The ragged shapes x dtype x mask x pass, and the paged shapes x dtype x mask (forward only), on ``device``."""
    cases = []
    for dtype in DTYPES:
        for mask, window in MASKS:
            for heads_q, heads_kv, head_dim, lengths_q, lengths_kv in RAGGED:
                for pass_ in PASSES:
                    cases.append(Case(len(lengths_q), heads_q, heads_kv, max(lengths_q), max(lengths_kv), head_dim,
                                      dtype=dtype, device=device, mask=mask, window=window, pass_=pass_,
                                      seqlens_q=lengths_q, seqlens_kv=lengths_kv))
            for heads_q, heads_kv, head_dim, lengths_q, lengths_kv, page_size in PAGED:
                cases.append(Case(len(lengths_q), heads_q, heads_kv, max(lengths_q), max(lengths_kv), head_dim,
                                  dtype=dtype, device=device, mask=mask, window=window, seqlens_q=lengths_q,
                                  seqlens_kv=lengths_kv, page_size=page_size))
    return cases


def forward_backward_problem(fn: AttentionFn, case: Case, layout: str = "bhsd", seed: int = 0) -> str | None:
    """Why ``fn`` (what ``build(case)`` returned) fails attnbench's rule forward and backward, or None.

    For an adapter's own tests: one call on ``seed``'s inputs in ``layout``;
    its output and dQ, dK, dV are judged against float64 with the default
    tolerance, as ``attnbench run`` judges them. ``case`` must run backward.
    """
    if not case.needs_backward:
        raise ValueError(f"forward_backward_problem needs a case with backward, not pass {case.pass_}")
    inputs = corr.make_inputs(case, seed)
    expected = corr.math_attention_grads(inputs, case, dtype=torch.float64)
    baseline = corr.math_attention_grads(inputs, case, dtype=case.dtype)
    leaves = [to_layout(t, layout).detach().requires_grad_(True) for t in (inputs.q, inputs.k, inputs.v)]
    out = fn(*leaves)
    problem = corr.output_problem(out, case, like=leaves[0])
    if problem:
        return problem
    grads = torch.autograd.grad(out, leaves, to_layout(inputs.grad_out, layout))
    got = [from_layout(t, layout) for t in (out.detach(), *grads)]
    for what, g, e, b in zip(GRAD_NAMES, got, expected, baseline):
        reason = corr.judge(corr.error_metrics(g, e), corr.error_metrics(b, e), case.dtype_name, corr.Tolerance())
        if reason:
            return f"{what}: {reason}"
    return None


def packed_problem(fn: AttentionFn, case: Case, seed: int = 0) -> str | None:
    """Why ``fn`` (what ``build(case)`` returned for a packed case) fails attnbench's rule, or None.

    For an adapter's own tests: one call on ``seed``'s packed inputs with the case's call keywords
    (the harness's shuffled block table for a paged case), judged per sequence against float64 as
    ``attnbench run`` judges it: the output, and dQ, dK, dV when the case runs backward.
    """
    if not case.packed:
        raise ValueError("packed_problem is for packed cases (seqlens_q/seqlens_kv or page_size set)")
    inputs = corr.make_inputs(case, seed)
    expected = corr.reference_outputs(inputs, case, dtype=torch.float64)
    baseline = corr.reference_outputs(inputs, case, dtype=case.dtype)
    leaves = [t.detach().requires_grad_(case.needs_backward) for t in (inputs.q, inputs.k, inputs.v)]
    out = fn(*leaves, **inputs.keywords)
    problem = corr.output_problem(out, case, like=leaves[0])
    if problem:
        return problem
    got = [out.detach()]
    if case.needs_backward:
        got += torch.autograd.grad(out, leaves, inputs.grad_out)
    for what, g, e, b in zip(GRAD_NAMES, got, expected, baseline):
        reason = corr.judge(corr.error_metrics(g, e), corr.error_metrics(b, e), case.dtype_name, corr.Tolerance())
        if reason:
            return f"{what}: {reason}"
    return None
