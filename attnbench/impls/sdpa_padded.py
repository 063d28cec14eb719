"""``sdpa.padded``: the dense SDPA kernel on a ragged batch padded to its longest sequence.

What a ragged kernel saves is what this one spends: every sequence is padded
with zeros to the batch's longest (queries to ``seq_q``, keys and values to
``seq_kv``), one ``(batch, 1, seq_q, seq_kv)`` boolean mask hides the padding
and applies the case's mask bottom-right aligned per sequence, and one dense
SDPA call computes the whole padded batch. A paged cache is gathered through
the block table into the padded keys and values. The scatter into the padded
tensors and the gather of the real rows back are single ``index_put`` and
``index_select`` calls on index tensors built in ``build``, so autograd flows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation, Unsupported
from attnbench.impls.sdpa import dispatched_workspace_bytes, math_workspace_bytes
from attnbench.masks import MASKS, dense_mask
from attnbench.measure.memory import accumulation_itemsize, resident_bytes
from attnbench.packing import gather_pages, token_positions

DENSE = "dense batch: sdpa.padded is sdpa on a batch with nothing to pad"


def padded_case(case: Case) -> Case:
    """The dense, unmasked case SDPA computes: the batch padded to its longest query and key lengths."""
    return Case(batch=case.batch, heads_q=case.heads_q, heads_kv=case.heads_kv, seq_q=case.seq_q,
                seq_kv=case.seq_kv, head_dim=case.head_dim, head_dim_v=case.head_dim_v, dtype=case.dtype,
                device=case.device, scale=case.scale, pass_=case.pass_)


def padded_mask(case: Case) -> torch.Tensor:
    """``(batch, 1, seq_q, seq_kv)``, True where attention is allowed: each sequence's own mask over its
    real keys, and key 0 for padded query rows, so that no row sees nothing (no NaN, gradients included)."""
    allowed = torch.zeros(case.batch, 1, case.seq_q, case.seq_kv, dtype=torch.bool)
    for i, (lq, lkv) in enumerate(zip(case.seqlens_q, case.seqlens_kv)):
        inner = dense_mask(case.mask, case.window, lq, lkv, block=case.block)
        allowed[i, 0, :lq, :lkv] = True if inner is None else inner
        allowed[i, 0, lq:, 0] = True
    return allowed.to(case.device)


def padded_alibi_terms(case: Case, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ALiBi over the padded batch: ``padded_mask`` as 0 / -inf and each sequence's distances, positions
    bottom-right aligned in it, both ``(batch, 1, seq_q, seq_kv)`` in the case's dtype."""
    rows = torch.arange(case.seq_q, device=case.device)
    shift = torch.tensor(case.seqlens_kv, device=case.device) - torch.tensor(case.seqlens_q, device=case.device)
    aligned = rows[None, :] + shift[:, None]
    distance = (aligned[:, :, None] - torch.arange(case.seq_kv, device=case.device)[None, None, :]).abs()
    hidden = torch.zeros(allowed.shape, dtype=case.dtype, device=case.device).masked_fill_(~allowed, float("-inf"))
    return hidden, distance[:, None].to(case.dtype)


def build(case: Case):
    if not case.packed:
        raise Unsupported(DENSE)
    batch, max_q, max_kv = case.batch, case.seq_q, case.seq_kv
    q_seq, q_pos = token_positions(case.seqlens_q, case.device)
    kv_seq, kv_pos = token_positions(case.seqlens_kv, case.device)
    # Each packed token's row in the padded tensors, flattened over (batch, position).
    q_rows = q_seq * max_q + q_pos
    kv_rows = kv_seq * max_kv + kv_pos
    mask = padded_mask(case)
    kwargs = {"attn_mask": mask, "scale": case.scale, "enable_gqa": case.gqa}
    paged = case.paged
    # ALiBi: the slopes come with each call, which makes the (batch, heads_q, seq_q, seq_kv) bias from them.
    hidden, distance = padded_alibi_terms(case, mask) if case.bias == "alibi" else (None, None)

    def pad(t: torch.Tensor, rows: torch.Tensor, length: int) -> torch.Tensor:
        padded = t.new_zeros(batch * length, *t.shape[1:]).index_put((rows,), t)
        return padded.view(batch, length, *t.shape[1:]).transpose(1, 2)

    def padded(q, k, v, *, cu_seqlens_q=None, cu_seqlens_kv=None, max_seqlen_q=None, max_seqlen_kv=None,
               block_table=None, seqlens_kv=None, alibi_slopes=None):
        if paged:
            k, v = (gather_pages(t, block_table, kv_seq, kv_pos) for t in (k, v))
        call = kwargs
        if hidden is not None:
            bias = torch.addcmul(hidden, alibi_slopes.to(hidden.dtype).neg().view(1, -1, 1, 1), distance)
            call = {**kwargs, "attn_mask": bias}
        out = F.scaled_dot_product_attention(pad(q, q_rows, max_q), pad(k, kv_rows, max_kv), pad(v, kv_rows, max_kv),
                                             **call)
        return out.transpose(1, 2).reshape(batch * max_q, q.shape[1], v.shape[-1]).index_select(0, q_rows)

    return padded


def workspace_bytes(case: Case) -> int:
    """SDPA on the padded batch: its padded q, k, v and output (and their gradients), the mask, SDPA's workspace.

    The padded tensors are ``resident_bytes`` of the padded dense case, and SDPA's workspace is ``sdpa``'s model
    of it. The boolean mask is ``batch x seq_q x seq_kv``, and torch converts it to an additive one on every call
    (counted in the accumulation dtype, its key axis padded to 16 as the memory-efficient kernel does). A paged
    cache adds the keys and values gathered from the pool before they are padded. On CUDA a mask rules out the
    flash kernel, and not every torch's memory-efficient kernel takes GQA: there GQA is counted as math. ALiBi
    adds its terms, held, and the bias each call makes from its slopes.
    """
    if not case.packed:
        return 0
    dense = padded_case(case)
    padded_kv = -(-case.seq_kv // 16) * 16
    mask = case.batch * case.seq_q * (case.seq_kv + padded_kv * accumulation_itemsize(case))
    gathered = case.total_kv * case.heads_kv * (case.head_dim + case.value_dim) * case.dtype.itemsize if case.paged else 0
    kernel = math_workspace_bytes if case.device == "cuda" and case.gqa else dispatched_workspace_bytes
    total = resident_bytes(dense) + kernel(dense) + mask + gathered
    if case.bias == "alibi":
        # The mask as 0 / -inf and the distances, held; each call's bias and its conversion.
        area = case.batch * case.seq_q * case.seq_kv
        total += 2 * area * case.dtype.itemsize + area * case.heads_q * (case.dtype.itemsize + accumulation_itemsize(case))
    return total


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="sdpa.padded",
            build=build,
            description=("SDPA on a ragged batch padded to its longest sequence, one boolean mask hiding the padding "
                         "(paged caches gathered first): what a ragged kernel saves over padding. Packed batches only. ALiBi as "
                         "a float bias from each call's slopes."),
            masks=frozenset(MASKS),
            gqa=True,
            backward=True,
            dense=False,
            ragged=True,
            paged=True,
            head_dim_v=True,
            score_mods=frozenset({"alibi"}),
            memory=workspace_bytes,
        )
    ]
