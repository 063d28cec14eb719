"""attnbench adapter for xformers: ``xformers.ops.memory_efficient_attention`` as ``xformers``.

Inputs are ``(batch, seq, heads, head_dim)`` (``layout="bshd"``, xformers'
BMHK). Masks are xformers' attention biases, both bottom-right aligned as
attnbench's are: ``LowerTriangularFromBottomRightMask`` for causal,
``LowerTriangularFromBottomRightLocalAttentionMask(W)`` for a sliding window
of ``W`` keys (a query sees the keys fewer than ``W`` positions back).
GQA and MQA use xformers' 5-D BMGHK layout: G is the key/value heads, H the
query heads of each, and k and v are expanded along H without a copy.
xformers picks its kernel (cutlass, FlashAttention, ...) per call; ``build``
runs a short probe of the case and reports xformers' own reasons as
``Unsupported`` when no kernel takes it.
"""

from __future__ import annotations

import torch

from attnbench import Case, Implementation, Unsupported, hookimpl

PROBE_SEQ = 64


def _xformers_ops():
    try:
        import xformers.ops as xops
    except ImportError as exc:
        raise Unsupported(f"xformers is not importable: {exc}") from None
    return xops


def attention_bias(case: Case):
    """The xformers attention bias for the case's mask (None for no mask)."""
    from xformers.ops.fmha import attn_bias

    if case.mask == "causal":
        return attn_bias.LowerTriangularFromBottomRightMask()
    if case.mask == "sliding_window":
        return attn_bias.LowerTriangularFromBottomRightLocalAttentionMask(case.window)
    return None


def _call(xops, case: Case):
    bias, scale, group = attention_bias(case), case.softmax_scale, case.group_size

    def xformers_attention(q, k, v):
        if group == 1:
            return xops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)
        batch, seq_q, heads_q, dim = q.shape
        seq_kv, heads_kv = k.shape[1], k.shape[2]
        # BMGHK: query head h = g * group + i uses key/value head g, as attnbench pairs them.
        q5 = q.view(batch, seq_q, heads_kv, group, dim)
        k5, v5 = (t.view(batch, seq_kv, heads_kv, 1, dim).expand(-1, -1, -1, group, -1) for t in (k, v))
        out = xops.memory_efficient_attention(q5, k5, v5, attn_bias=bias, scale=scale)
        return out.reshape(batch, seq_q, heads_q, dim)

    return xformers_attention


def _probe(fn, case: Case) -> None:
    """Run the case at short lengths (keeping seq_q <= seq_kv as it is) so an unsupported one fails in build."""
    seq_q = min(case.seq_q, PROBE_SEQ)
    seq_kv = seq_q + min(case.seq_kv - case.seq_q, PROBE_SEQ) if case.seq_kv >= case.seq_q else min(case.seq_kv, PROBE_SEQ)
    gen = torch.Generator(device=case.device).manual_seed(0)
    q = torch.randn(1, seq_q, case.heads_q, case.head_dim, device=case.device, dtype=case.dtype, generator=gen)
    k, v = (torch.randn(1, seq_kv, case.heads_kv, case.head_dim, device=case.device, dtype=case.dtype, generator=gen)
            for _ in range(2))
    for t in (q, k, v):
        t.requires_grad_(case.needs_backward)
    try:
        out = fn(q, k, v)
        if case.needs_backward:
            out.sum().backward()
    except NotImplementedError as exc:
        # "No operator found for `memory_efficient_attention_forward` with inputs: ... because: ..."
        raise Unsupported(" ".join(str(exc).split())[:400]) from None


def build(case: Case):
    xops = _xformers_ops()
    if case.device != "cuda" or not torch.cuda.is_available():
        raise Unsupported("xformers' memory_efficient_attention kernels run on CUDA only")
    fn = _call(xops, case)
    _probe(fn, case)
    return fn


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="xformers",
            build=build,
            description="xformers.ops.memory_efficient_attention, bottom-right causal and local-attention biases, "
            "GQA through BMGHK.",
            devices=frozenset({"cuda"}),
            masks=frozenset({"none", "causal", "sliding_window"}),
            gqa=True,
            backward=True,
            layout="bshd",
        )
    ]
