"""The conformance cases: what every implementation is checked on by the pytest kit.

A grid small enough to run in seconds on a CPU, wide enough to catch the usual
defects: batch > 1, GQA and MQA, seq_q < seq_kv (bottom-right causal), decoding
(seq_q = 1), sliding windows, every dtype, forward and backward. Each
implementation is checked only on what it declares; a case it declares but
cannot run must raise ``Unsupported`` with a reason.
"""

from __future__ import annotations

from attnbench.case import DTYPES, Case

SHAPES = (
    # batch, heads_q, heads_kv, seq_q, seq_kv, head_dim
    (1, 4, 4, 128, 128, 64),
    (2, 8, 2, 64, 192, 32),   # GQA, shorter queries than keys
    (2, 8, 1, 1, 256, 64),    # MQA decoding step
    (1, 2, 2, 96, 96, 128),   # head_dim 128, a length that is no power of two
)
MASKS = (("none", None), ("causal", None), ("sliding_window", 32))
PASSES = ("fwd", "fwd+bwd")


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
