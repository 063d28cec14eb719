"""attnbench adapter for ``local-attention``: its ``LocalAttention`` module as ``local_attention``.

``LocalAttention`` cuts the sequence into buckets of ``window_size`` and lets
each query look at its own bucket and ``look_backward`` buckets before it;
with ``exact_windowsize=True`` it also hides keys more than
``window_size x look_backward`` positions back. attnbench's sliding window
``W`` (keys ``p - W + 1 .. p``) is therefore ``window_size = W - 1`` with one
bucket of look-back (``W = 1``: buckets of 1, no look-back). A window that
reaches the start of the sequence is causal attention: one bucket holding the
whole sequence. ``autopad`` pads the sequence to whole buckets with zero keys,
which come after every real query and stay hidden.

The module attends within one sequence (q and k of the same length, as many
key as query heads), computes in the input dtype, and is differentiable. Its
rotary embeddings are off (they are on only when given ``dim``).
"""

from __future__ import annotations

import torch

from attnbench import Case, Implementation, Unsupported, hookimpl


def local_attention_module(case: Case):
    """The ``LocalAttention`` that computes the case's mask exactly."""
    try:
        from local_attention import LocalAttention
    except ImportError as exc:
        raise Unsupported(f"local-attention is not importable: {exc}") from None
    if case.mask == "causal" or case.window >= case.seq_kv:
        return LocalAttention(window_size=case.seq_kv, causal=True, look_backward=0, scale=case.softmax_scale)
    if case.window == 1:
        return LocalAttention(window_size=1, causal=True, look_backward=0, scale=case.softmax_scale)
    return LocalAttention(window_size=case.window - 1, causal=True, look_backward=1, exact_windowsize=True,
                          autopad=True, scale=case.softmax_scale)


def build(case: Case):
    module = local_attention_module(case).to(case.device)
    return lambda q, k, v: module(q, k, v)


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="local_attention",
            build=build,
            description="local-attention's LocalAttention (lucidrains): buckets with one bucket of look-back and "
            "an exact window mask, in plain PyTorch.",
            dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
            masks=frozenset({"causal", "sliding_window"}),
            gqa=False,
            cross=False,
            backward=True,
        )
    ]
