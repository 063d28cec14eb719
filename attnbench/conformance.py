"""The conformance cases: what every implementation is checked on by the pytest kit, and the check adapters share.

A grid small enough to run in seconds on a CPU, wide enough to catch the usual
defects: batch > 1, GQA and MQA, seq_q < seq_kv (bottom-right causal), decoding
(seq_q = 1), sliding windows, every float dtype, forward and backward. Packed batches
too: ragged ones (lengths that are no power of two, fewer queries than keys,
GQA, forward and backward) and paged ones (decode, mixed prefill and decode,
lengths that are not whole pages, the harness's shuffled block table).

Variant cases (``variant_cases``): a value head dim narrower and wider than q's
and DeepSeek's 192/128, a softcap that bites, ALiBi, sinks and their
combinations, causal and unmasked, forward and backward, dense and packed; and
fp8 inputs, forward only. An implementation is given the variant and fp8 cases
of the variants and dtypes it declares (``cases_for``), and checked on every case
only where it declares the rest; a case it declares but cannot run must raise
``Unsupported`` with a reason.

Kernel adapters' own tests (plugins/attnbench-*/tests) use ``GPU_SHAPES``,
``PACKED_GPU_SHAPES`` and ``VARIANT_GPU_SHAPES`` with ``call_problem`` (or
``forward_backward_problem`` and ``packed_problem``) to judge a built function directly.
"""

from __future__ import annotations

import torch

from attnbench.case import FLOAT_DTYPES, FP8_DTYPES, Case, dtype_name
from attnbench.implementation import AttentionFn, Implementation, from_layout, to_layout
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

VARIANT_MASKS = (("none", None), ("causal", None))
SCORE_VARIANTS = (
    dict(softcap=2.0),                            # bites: unit-sized inputs give scores beyond +-2
    dict(bias="alibi"),
    dict(sinks=True),
    dict(softcap=2.0, bias="alibi"),              # FlashAttention 2's pair
    dict(softcap=2.0, bias="alibi", sinks=True),
)
"""Score variants, each on ``VARIANT_SHAPE``: on its own and combined."""
VARIANT_SHAPE = (2, 8, 2, 48, 80, 64)
"""batch, heads_q, heads_kv, seq_q, seq_kv, head_dim of the score variants: GQA, fewer queries than keys."""
VALUE_DIMS = (
    # batch, heads_q, heads_kv, seq_q, seq_kv, head_dim, head_dim_v
    (2, 4, 2, 40, 72, 48, 32),     # v narrower than q and k, as MLA's 192/128 at a small size
    (1, 4, 4, 64, 64, 32, 48),     # v wider than q and k
    (1, 2, 1, 32, 96, 192, 128),   # DeepSeek-V3's prefill head dims
)
PACKED_VARIANTS = (
    # heads_q, heads_kv, head_dim, seqlens_q, seqlens_kv, page_size, variant
    (8, 2, 32, (16, 1, 40), (48, 33, 40), None, dict(softcap=2.0, bias="alibi")),
    (4, 4, 32, (37, 64, 5), (37, 64, 5), None, dict(sinks=True)),
    (8, 2, 48, (16, 1, 40), (48, 33, 40), None, dict(head_dim_v=32)),
    (8, 2, 64, (1, 1, 1), (300, 17, 40), 256, dict(softcap=2.0, bias="alibi")),  # pages FlashAttention 2 takes
    (8, 2, 32, (1, 1, 1, 1), (37, 16, 70, 1), 16, dict(sinks=True)),
)
FP8_EXTRA = (
    # batch, heads_q, heads_kv, seq_q, seq_kv, head_dim, variant (forward only, fp8 on top)
    (2, 8, 2, 48, 80, 64, dict(softcap=2.0)),
    (1, 2, 1, 32, 96, 192, dict(head_dim_v=128)),
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

VARIANT_GPU_SHAPES = {
    "softcap_causal_cross": dict(batch=2, heads_q=8, heads_kv=2, seq_q=200, seq_kv=300, head_dim=128, mask="causal",
                                 softcap=2.0),
    "alibi_causal_cross": dict(batch=2, heads_q=8, heads_kv=2, seq_q=200, seq_kv=300, head_dim=64, mask="causal",
                               bias="alibi"),
    "softcap_alibi": dict(batch=1, heads_q=4, heads_kv=4, seq_q=256, seq_kv=256, head_dim=64, softcap=2.0,
                          bias="alibi"),
    "sinks_window": dict(batch=1, heads_q=8, heads_kv=2, seq_q=256, seq_kv=256, head_dim=64, mask="sliding_window",
                         window=64, sinks=True),
    "mla_192_128": dict(batch=1, heads_q=16, heads_kv=16, seq_q=256, seq_kv=256, head_dim=192, head_dim_v=128,
                        mask="causal"),
    "ragged_softcap_alibi": dict(batch=3, heads_q=8, heads_kv=2, seq_q=100, seq_kv=300, head_dim=64, mask="causal",
                                 seqlens_q=(1, 100, 64), seqlens_kv=(257, 100, 300), softcap=2.0, bias="alibi"),
    "paged_decode_softcap_p256": dict(batch=2, heads_q=8, heads_kv=2, seq_q=1, seq_kv=600, head_dim=64,
                                      mask="causal", seqlens_q=(1, 1), seqlens_kv=(600, 17), page_size=256,
                                      softcap=2.0),
}
"""Variant shapes (``Case`` keywords, less dtype, device and pass) for a GPU kernel adapter's own tests: a biting
softcap, ALiBi, both, sinks under a window, DeepSeek's 192/128, and softcap and ALiBi on ragged and paged batches.
Paged ones run forward only; with an fp8 dtype, all run forward only."""


def conformance_cases(device: str = "cpu") -> list[Case]:
    """Every shape x float dtype x mask x pass of the conformance grid on ``device``, its packed cases, and
    every variant and fp8 case (``cases_for`` keeps those an implementation declares)."""
    cases = []
    for batch, heads_q, heads_kv, seq_q, seq_kv, head_dim in SHAPES:
        for dtype in FLOAT_DTYPES.values():
            for mask, window in MASKS:
                for pass_ in PASSES:
                    cases.append(Case(batch, heads_q, heads_kv, seq_q, seq_kv, head_dim, dtype=dtype, device=device,
                                      mask=mask, window=window, pass_=pass_))
    return cases + packed_cases(device) + variant_cases(device)


def packed_cases(device: str = "cpu") -> list[Case]:
    """The ragged shapes x float dtype x mask x pass, and the paged shapes x float dtype x mask (forward only)."""
    cases = []
    for dtype in FLOAT_DTYPES.values():
        for mask, window in MASKS:
            for heads_q, heads_kv, head_dim, lengths_q, lengths_kv in RAGGED:
                for pass_ in PASSES:
                    cases.append(_packed(heads_q, heads_kv, head_dim, lengths_q, lengths_kv, None, dtype=dtype,
                                         device=device, mask=mask, window=window, pass_=pass_))
            for heads_q, heads_kv, head_dim, lengths_q, lengths_kv, page_size in PAGED:
                cases.append(_packed(heads_q, heads_kv, head_dim, lengths_q, lengths_kv, page_size, dtype=dtype,
                                     device=device, mask=mask, window=window))
    return cases


def variant_cases(device: str = "cpu") -> list[Case]:
    """The variant cases: score variants and value head dims x float dtype x mask (none, causal) x pass, dense
    and packed (paged forward only), then fp8 inputs (forward only) on the dense grid's shapes and masks, on a
    variant or two, and on a ragged and a paged batch."""
    cases = []
    batch, heads_q, heads_kv, seq_q, seq_kv, head_dim = VARIANT_SHAPE
    for dtype in FLOAT_DTYPES.values():
        for mask, window in VARIANT_MASKS:
            for pass_ in PASSES:
                common = dict(dtype=dtype, device=device, mask=mask, window=window, pass_=pass_)
                cases += [Case(batch, heads_q, heads_kv, seq_q, seq_kv, head_dim, **variant, **common)
                          for variant in SCORE_VARIANTS]
                cases += [Case(*shape, head_dim_v=head_dim_v, **common) for *shape, head_dim_v in VALUE_DIMS]
                cases += [_packed(*shape, page_size, **variant, **common)
                          for *shape, page_size, variant in PACKED_VARIANTS if page_size is None]
            cases += [_packed(*shape, page_size, **variant, dtype=dtype, device=device, mask=mask, window=window)
                      for *shape, page_size, variant in PACKED_VARIANTS if page_size is not None]
    for dtype in FP8_DTYPES.values():
        for mask, window in MASKS:
            common = dict(dtype=dtype, device=device, mask=mask, window=window)
            cases += [Case(*shape, **common) for shape in SHAPES]
            if mask == "sliding_window":
                continue
            cases += [Case(*shape, **variant, **common) for *shape, variant in FP8_EXTRA]
            cases.append(_packed(*RAGGED[1], None, **common))
            cases.append(_packed(*PAGED[1], **common))
    return cases


def _packed(heads_q: int, heads_kv: int, head_dim: int, lengths_q: tuple[int, ...], lengths_kv: tuple[int, ...],
            page_size: int | None, **fields) -> Case:
    return Case(len(lengths_q), heads_q, heads_kv, max(lengths_q), max(lengths_kv), head_dim, seqlens_q=lengths_q,
                seqlens_kv=lengths_kv, page_size=page_size, **fields)


def is_variant(case: Case) -> bool:
    """True for a case of ``variant_cases``: a score variant, a value head dim of its own, or fp8 inputs."""
    return bool(case.score_mods) or case.value_dim != case.head_dim or case.fp8


def declares_variants(impl: Implementation, case: Case) -> bool:
    """Whether ``impl`` declares the case's variants (score mods, value head dim) and its dtype."""
    return (case.score_mods <= impl.score_mods and (impl.head_dim_v or case.value_dim == case.head_dim)
            and case.dtype in impl.dtypes)


def cases_for(impl: Implementation, device: str = "cpu") -> list[Case]:
    """The conformance grid as ``impl`` is checked on it: every plain case (undeclared ones are skipped with the
    reason), and the variant and fp8 cases of only the variants and dtypes it declares."""
    return [case for case in conformance_cases(device) if not is_variant(case) or declares_variants(impl, case)]


# --- checks for an adapter's own tests ---------------------------------------------------------------


def call_problem(fn: AttentionFn, case: Case, layout: str = "bhsd", seed: int = 0) -> str | None:
    """Why ``fn`` (what ``build(case)`` returned) fails attnbench's rule on the case, or None.

    For an adapter's own tests: one call on ``seed``'s inputs (dense ones in ``layout``; packed ones in theirs)
    with the case's call keywords (offsets, the shuffled block table, ALiBi slopes, sinks, fp8 descales), judged
    against float64 with the default tolerance as ``attnbench run`` judges it: the output, and dQ, dK, dV when
    the case runs backward.
    """
    inputs = corr.make_inputs(case, seed)
    expected = corr.reference_outputs(inputs, case, dtype=torch.float64)
    baseline = corr.reference_outputs(inputs, case, dtype=case.dtype)
    dense = not case.packed
    leaves = [(to_layout(t, layout) if dense else t).detach().requires_grad_(case.needs_backward)
              for t in (inputs.q, inputs.k, inputs.v)]
    out = fn(*leaves, **inputs.keywords)
    problem = corr.output_problem(out, case, like=leaves[0])
    if problem:
        return problem
    got = [out.detach()]
    if case.needs_backward:
        grad_out = to_layout(inputs.grad_out, layout) if dense else inputs.grad_out
        got += torch.autograd.grad(out, leaves, grad_out)
    if dense:
        got = [from_layout(t, layout) for t in got]
    for what, g, e, b in zip(GRAD_NAMES, got, expected, baseline):
        reason = corr.judge(corr.error_metrics(g, e), corr.error_metrics(b, e), dtype_name(case.out_dtype),
                            corr.Tolerance())
        if reason:
            return f"{what}: {reason}"
    return None


def forward_backward_problem(fn: AttentionFn, case: Case, layout: str = "bhsd", seed: int = 0) -> str | None:
    """``call_problem`` for a case that runs backward (the output and dQ, dK, dV)."""
    if not case.needs_backward:
        raise ValueError(f"forward_backward_problem needs a case with backward, not pass {case.pass_}")
    return call_problem(fn, case, layout, seed)


def packed_problem(fn: AttentionFn, case: Case, seed: int = 0) -> str | None:
    """``call_problem`` for a packed case (its per-sequence reference; the harness's shuffled block table)."""
    if not case.packed:
        raise ValueError("packed_problem is for packed cases (seqlens_q/seqlens_kv or page_size set)")
    return call_problem(fn, case, seed=seed)


def gpu_variant_case(name: str, dtype: torch.dtype, pass_: str = "fwd+bwd") -> Case:
    """``VARIANT_GPU_SHAPES[name]`` on CUDA in ``dtype``; forward only where it is paged or fp8."""
    shape = VARIANT_GPU_SHAPES[name]
    forward_only = "page_size" in shape or dtype in FP8_DTYPES.values()
    return Case(**shape, dtype=dtype, device="cuda", pass_="fwd" if forward_only else pass_)
