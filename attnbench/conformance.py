"""The conformance cases: what every implementation is checked on by the pytest kit, and the check adapters share.

A grid small enough to run in seconds on a CPU, wide enough to catch the usual
defects: batch > 1, GQA and MQA, seq_q < seq_kv (bottom-right causal), decoding
(seq_q = 1), sliding windows, every dtype, forward and backward. Each
implementation is checked only on what it declares; a case it declares but
cannot run must raise ``Unsupported`` with a reason.

Kernel adapters' own tests (plugins/attnbench-*/tests) use ``GPU_SHAPES`` and
``forward_backward_problem`` to judge a built function directly.
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


def conformance_cases(device: str = "cpu") -> list[Case]:
    """Every shape x dtype x mask x pass of the conformance grid on ``device``."""
    cases = []
    for batch, heads_q, heads_kv, seq_q, seq_kv, head_dim in SHAPES:
        for dtype in DTYPES:
            for mask, window in MASKS:
                for pass_ in PASSES:
                    cases.append(Case(batch, heads_q, heads_kv, seq_q, seq_kv, head_dim, dtype=dtype, device=device,
                                      mask=mask, window=window, pass_=pass_))
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
