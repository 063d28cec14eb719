"""Packed (ragged) and paged batches: the call conventions, the harness's page tables, and per-sequence views.

Ragged call (FlashAttention's varlen convention): q is ``(total_q, heads_q, head_dim)``,
k and v ``(total_kv, heads_kv, head_dim)``, sequence after sequence, and the callable is
called ``fn(q, k, v, cu_seqlens_q=, cu_seqlens_kv=, max_seqlen_q=, max_seqlen_kv=)`` with
int32 cumulative offsets (length batch + 1) on the case's device.

Paged call (FlashAttention's kvcache convention): k and v are page pools
``(num_pages, page_size, heads_kv, head_dim)`` and the callable is called
``fn(q, k_cache, v_cache, block_table=, seqlens_kv=, cu_seqlens_q=, max_seqlen_q=)``
with ``block_table`` int32 ``(batch, max_pages_per_seq)`` (sequence ``i``'s key ``j``
is in page ``block_table[i, j // page_size]`` at slot ``j % page_size``) and
``seqlens_kv`` int32 ``(batch,)``. The harness assigns pages at random from the
trial's seed, so a kernel that ignores the table reads the wrong keys; table entries
past a sequence's last page are 0 and must not be read.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate

import torch

from attnbench.case import Case

RAGGED_KEYWORDS = ("cu_seqlens_q", "cu_seqlens_kv", "max_seqlen_q", "max_seqlen_kv")
PAGED_KEYWORDS = ("block_table", "seqlens_kv", "cu_seqlens_q", "max_seqlen_q")


def offsets(lengths: tuple[int, ...]) -> list[int]:
    """Cumulative offsets ``[0, l0, l0 + l1, ...]`` (batch + 1 entries)."""
    return [0, *accumulate(lengths)]


def cu_seqlens(lengths: tuple[int, ...], device: str | torch.device) -> torch.Tensor:
    """``offsets`` as the int32 tensor the varlen convention passes."""
    return torch.tensor(offsets(lengths), dtype=torch.int32, device=device)


def block_table(case: Case, seed: int) -> torch.Tensor:
    """A random assignment of the pool's pages to the batch's sequences: int32 ``(batch, max_pages)`` on the CPU.

    Every page of the pool is used exactly once. The assignment is never the one
    that lays sequences out page after page in order, so that a kernel that reads
    pages in pool order instead of through the table comes out wrong.
    """
    if not case.paged:
        raise ValueError("block_table is for paged cases (page_size set)")
    pages = case.pages_per_sequence
    gen = torch.Generator().manual_seed(seed + 104729)
    order = torch.randperm(case.num_pages, generator=gen)
    if case.num_pages > 1 and torch.equal(order, torch.arange(case.num_pages)):
        order = order.roll(1)
    table = torch.zeros(case.batch, max(pages), dtype=torch.int32)
    for i, (start, stop) in enumerate(zip(offsets(pages), offsets(pages)[1:])):
        table[i, : stop - start] = order[start:stop].to(torch.int32)
    return table


def call_keywords(case: Case, seed: int) -> dict:
    """The keywords a packed case's callable is called with, on the case's device: empty for a dense case."""
    if not case.packed:
        return {}
    cu_q = cu_seqlens(case.seqlens_q, case.device)
    if case.paged:
        return {"block_table": block_table(case, seed).to(case.device),
                "seqlens_kv": torch.tensor(case.seqlens_kv, dtype=torch.int32, device=case.device),
                "cu_seqlens_q": cu_q, "max_seqlen_q": case.seq_q}
    return {"cu_seqlens_q": cu_q, "cu_seqlens_kv": cu_seqlens(case.seqlens_kv, case.device),
            "max_seqlen_q": case.seq_q, "max_seqlen_kv": case.seq_kv}


def token_positions(lengths: tuple[int, ...], device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each packed token, its sequence and its position within it: two int64 ``(sum(lengths),)`` tensors."""
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(sum(lengths)) - torch.tensor(offsets(lengths)[:-1])[seq]
    return seq.to(device), pos.to(device)


def gather_pages(pool: torch.Tensor, block_table: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The packed rows ``(len(seq), heads, head_dim)`` of a page pool ``(num_pages, page_size, heads, head_dim)``:
    the row of sequence ``seq[t]`` at position ``pos[t]``, read through ``block_table`` (one index_select)."""
    page_size = pool.shape[1]
    slot = block_table[seq, pos // page_size].long() * page_size + pos % page_size
    return pool.reshape(-1, *pool.shape[2:]).index_select(0, slot)


def sequence_kv(case: Case, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor | None, i: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence ``i``'s keys and values ``(seq_kv_i, heads_kv, head_dim)``: a slice of the packed ones, or
    its pages gathered from the pools through ``table``."""
    length = case.seqlens_kv[i]
    if not case.paged:
        start = offsets(case.seqlens_kv)[i]
        return k[start:start + length], v[start:start + length]
    pages = table[i, : case.pages_per_sequence[i]].long()
    return (k[pages].reshape(-1, case.heads_kv, case.head_dim)[:length],
            v[pages].reshape(-1, case.heads_kv, case.value_dim)[:length])


def sequence_views(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor | None = None):
    """``(sequence case, q_i, k_i, v_i)`` for each sequence, q/k/v as dense bhsd ``(1, heads, len, head_dim)``.

    ``q`` is packed; ``k``, ``v`` packed or page pools read through ``table``. Slices are
    views and gathered pages copies; autograd flows through both.
    """
    starts = offsets(case.seqlens_q)
    for i, sequence in enumerate(case.sequences()):
        qi = q[starts[i]:starts[i + 1]]
        ki, vi = sequence_kv(case, k, v, table, i)
        yield sequence, *(t.transpose(0, 1).unsqueeze(0) for t in (qi, ki, vi))


def unpad(t: torch.Tensor) -> torch.Tensor:
    """A dense bhsd ``(1, heads, len, head_dim)`` result back as packed rows ``(len, heads, head_dim)``."""
    return t.squeeze(0).transpose(0, 1)


def per_sequence(case: Case, build_dense: Callable[[Case], Callable]) -> Callable:
    """A packed case's callable from a dense implementation's ``build``: one dense call per sequence.

    The dense function is built once per distinct sequence shape, outside the timed
    region; each call slices (or, paged, gathers) each sequence's q, k and v, calls it,
    and concatenates the outputs in sequence order. Differentiable when the dense one is.
    A variant's keywords go to each sequence's call (fp8 descales: the sequence's row).
    """
    built: dict[Case, Callable] = {}
    for sequence in case.sequences():
        if sequence not in built:
            built[sequence] = build_dense(sequence)

    def packed(q, k, v, *, cu_seqlens_q=None, cu_seqlens_kv=None, max_seqlen_q=None, max_seqlen_kv=None,
               block_table=None, seqlens_kv=None, **variant_keywords):
        views = sequence_views(case, q, k, v, block_table)
        outs = [unpad(built[sequence](qi, ki, vi, **_sequence_keywords(variant_keywords, i)))
                for i, (sequence, qi, ki, vi) in enumerate(views)]
        return torch.cat(outs)

    return packed


def _sequence_keywords(keywords: dict, i: int) -> dict:
    """Variant keywords for sequence ``i`` of a packed batch as a dense batch-1 call takes them: per-sequence
    descales ``(batch, heads_kv)`` become their row ``(1, heads_kv)``, per-head values stay."""
    return {name: value[i:i + 1] if name.endswith("_descale") else value for name, value in keywords.items()}
