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

Ragged batches (``ragged=True``) are one call on the packed tensors viewed as a
batch of one, ``(1, total, heads, head_dim)``, under a block-diagonal bias over
the sequences: ``BlockDiagonalMask.from_seqlens(seqlens_q, seqlens_kv)``, made
causal per sequence from the bottom right (``make_causal_from_bottomright``, i.e.
``BlockDiagonalCausalFromBottomRightMask``) or local
(``make_local_attention_from_bottomright(W)``). The bias is built from the case's
lengths at build time, so the call's ``cu_seqlens`` keywords are not read again.
GQA as for dense batches. Paged caches are not declared: xformers has paged
biases (``PagedBlockDiagonal*PaddedKeysMask``, k and v as a ``(1, pages x page_size,
...)`` pool), but which of its kernels take them, at which page sizes, is not
verified here without a GPU.

ALiBi (``score_mods={"alibi"}``) on dense batches is a float tensor bias: ``alibi_bias`` builds
``-slope_h * |pos_q - pos_k|`` (positions bottom-right aligned) from the call's ``alibi_slopes=``,
with ``-inf`` where the case's mask hides a key, in q's dtype, ``(1, heads_q, seq_q, seq_kv)``
expanded over the batch (``(1, heads_kv, group, ...)`` for BMGHK); its rows are padded to a
multiple of 8 and sliced, as xformers' ``_check_bias_alignment`` asks of a tensor bias. xformers'
own bias classes have no ALiBi, and a block-diagonal bias takes no tensor beside it, so a ragged
ALiBi case is ``Unsupported`` (a dense ``total_q x total_kv`` bias is not built). The bias is built
once per slopes tensor (cached on its storage and version), outside the timed steps after the first.

Unverified here: the ragged path is written from xformers' ``attn_bias.py``, and the ALiBi tensor
bias (its dtype, the batch broadcast by a stride-0 expand, which kernels take it backward) from
its ``fmha`` checks; neither has run on a GPU with xformers installed; their CUDA tests do.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from attnbench import Case, Implementation, Unsupported, hookimpl
from attnbench.masks import dense_mask
from attnbench.measure.correctness import make_inputs
from attnbench.variants import alibi_distance

PROBE_SEQ = 64
BIAS_ALIGNMENT = 8
"""A tensor bias's rows start at a multiple of this many elements (xformers: 128 bits for 16-bit dtypes)."""


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


def packed_bias(case: Case):
    """The block-diagonal xformers bias of a ragged case: its sequences, each under the case's mask."""
    from xformers.ops.fmha import attn_bias

    diagonal = attn_bias.BlockDiagonalMask.from_seqlens(list(case.seqlens_q), list(case.seqlens_kv))
    try:
        if case.mask == "causal":
            return diagonal.make_causal_from_bottomright()
        if case.mask == "sliding_window":
            return diagonal.make_local_attention_from_bottomright(case.window)
    except AttributeError as exc:  # releases before the bottom-right block-diagonal biases
        raise Unsupported(f"this xformers has no bottom-right block-diagonal bias for mask {case.mask}: {exc}") from None
    return diagonal


def alibi_bias(case: Case, slopes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The ALiBi bias of a dense case as xformers takes a tensor bias: ``(batch, heads_q, seq_q, seq_kv)``
    (``(batch, heads_kv, group, seq_q, seq_kv)`` under GQA) in ``dtype``, ``-slope_h * |pos_q - pos_k|``
    bottom-right aligned and ``-inf`` where the mask hides a key; rows padded to ``BIAS_ALIGNMENT``
    and sliced, the batch a stride-0 expand."""
    padded = -(-case.seq_kv // BIAS_ALIGNMENT) * BIAS_ALIGNMENT
    values = -slopes.float()[:, None, None] * alibi_distance(case, torch.float32).to(slopes.device)
    allowed = dense_mask(case.mask, case.window, case.seq_q, case.seq_kv, device=slopes.device)
    if allowed is not None:
        values = values.masked_fill(~allowed, float("-inf"))
    storage = torch.zeros(1, case.heads_q, case.seq_q, padded, dtype=dtype, device=slopes.device)
    bias = storage[..., : case.seq_kv]
    bias.copy_(values)
    if case.gqa:
        bias = bias.view(1, case.heads_kv, case.group_size, case.seq_q, case.seq_kv)
    return bias.expand(case.batch, *bias.shape[1:])


def _attend(xops, q, k, v, bias, scale: float, group: int):
    """memory_efficient_attention on bshd tensors, GQA through BMGHK."""
    if group == 1:
        return xops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)
    batch, seq_q, heads_q, dim = q.shape
    seq_kv, heads_kv = k.shape[1], k.shape[2]
    # BMGHK: query head h = g * group + i uses key/value head g, as attnbench pairs them.
    q5 = q.view(batch, seq_q, heads_kv, group, dim)
    k5, v5 = (t.view(batch, seq_kv, heads_kv, 1, dim).expand(-1, -1, -1, group, -1) for t in (k, v))
    out = xops.memory_efficient_attention(q5, k5, v5, attn_bias=bias, scale=scale)
    return out.reshape(batch, seq_q, heads_q, dim)


def _call(xops, case: Case):
    scale, group = case.softmax_scale, case.group_size
    if not case.packed:
        if case.bias == "alibi":
            return _alibi_call(xops, case)
        bias = attention_bias(case)
        return lambda q, k, v: _attend(xops, q, k, v, bias, scale, group)
    if case.bias == "alibi":
        raise Unsupported("xformers' block-diagonal biases take no tensor bias beside them, so ragged ALiBi is not "
                          "run (a dense total_q x total_kv bias is not built)")
    bias = packed_bias(case)

    def xformers_varlen(q, k, v, **_keywords):
        # The sequences are in the bias; the packed rows are a batch of one.
        return _attend(xops, q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), bias, scale, group).squeeze(0)

    return xformers_varlen


def _alibi_call(xops, case: Case):
    """A dense ALiBi case: the tensor bias from the call's slopes, rebuilt only when they change."""
    cache: dict = {}

    def xformers_alibi(q, k, v, *, alibi_slopes):
        key = (alibi_slopes.data_ptr(), alibi_slopes._version, q.dtype)
        if cache.get("key") != key:
            cache.update(key=key, bias=alibi_bias(case, alibi_slopes, q.dtype))
        return _attend(xops, q, k, v, cache["bias"], case.softmax_scale, case.group_size)

    return xformers_alibi


def probe_case(case: Case) -> Case:
    """The case at short lengths, each sequence's queries and keys cut as the dense probe cuts them."""

    def cut(seq_q: int, seq_kv: int) -> tuple[int, int]:
        short_q = min(seq_q, PROBE_SEQ)
        return short_q, short_q + min(seq_kv - seq_q, PROBE_SEQ) if seq_kv >= seq_q else min(seq_kv, PROBE_SEQ)

    if not case.packed:
        seq_q, seq_kv = cut(case.seq_q, case.seq_kv)
        return replace(case, batch=1, seq_q=seq_q, seq_kv=seq_kv)
    lengths = [cut(lq, lkv) for lq, lkv in zip(case.seqlens_q, case.seqlens_kv)]
    seqlens_q, seqlens_kv = tuple(n for n, _ in lengths), tuple(n for _, n in lengths)
    return replace(case, seq_q=max(seqlens_q), seq_kv=max(seqlens_kv), seqlens_q=seqlens_q, seqlens_kv=seqlens_kv)


def _probe(xops, case: Case) -> None:
    """Run the case at short lengths (``probe_case``) so that an unsupported one fails in build."""
    small = probe_case(case)
    inputs = make_inputs(small, 0)
    q, k, v = (t if small.packed else t.transpose(1, 2).contiguous() for t in (inputs.q, inputs.k, inputs.v))
    for t in (q, k, v):
        t.requires_grad_(case.needs_backward)
    try:
        out = _call(xops, small)(q, k, v, **inputs.keywords)
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
    _probe(xops, case)
    return fn


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="xformers",
            build=build,
            description="xformers.ops.memory_efficient_attention, bottom-right causal and local-attention biases, "
            "GQA through BMGHK; ragged batches under block-diagonal biases; ALiBi as a tensor bias (dense batches).",
            devices=frozenset({"cuda"}),
            masks=frozenset({"none", "causal", "sliding_window"}),
            gqa=True,
            backward=True,
            ragged=True,
            score_mods=frozenset({"alibi"}),
            layout="bshd",
        )
    ]
