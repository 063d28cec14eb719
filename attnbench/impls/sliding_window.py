"""``sliding_window``: exact local attention that computes only the band of a sliding window.

Queries are cut into blocks of ``query_block`` rows. The keys a block can see
under a window ``W`` are ``query_block + W - 1`` consecutive positions, and
``unfold`` gives every block its span of k and v as a strided view of the
(padded) keys, so all blocks are one batched matmul, softmax, matmul over
``query_block x (query_block + W - 1)`` scores: O(seq x window) work and
memory instead of the O(seq_q x seq_kv) of a masked dense matmul. The band
inside each block's scores is the same for every block, so a single
``(blocks, query_block, span)`` mask covers them all (plus the keys before
position 0 the first blocks reach). Accumulation is in float32 for
half-precision inputs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation
from attnbench.measure.memory import accumulation_itemsize

QUERY_BLOCK = 64
"""Rows per block. Each row then scores window + 63 keys. Smaller blocks waste less of the span
but make smaller matmuls; on a 2-core CPU, 64 rows were fastest or within noise of it among
16 to 512 at windows of 64 to 1024."""


def build(case: Case, query_block: int = QUERY_BLOCK):
    seq_q, seq_kv, scale = case.seq_q, case.seq_kv, case.softmax_scale
    # Keys before position 0 do not exist: a window wider than the keys is causal attention.
    window = min(case.window, seq_kv)
    rows = min(query_block, seq_q)
    blocks = -(-seq_q // rows)
    span = rows + window - 1
    # Block b's rows sit at positions start_b + r, start_b = b * rows + offset; its span holds
    # positions start_b - (window - 1) + j, j < span. Row r sees j in [r, r + window - 1].
    offset = seq_kv - seq_q
    first = offset - (window - 1)
    pad_front = max(0, -first)
    pad_back = max(0, first + blocks * rows + window - 1 - seq_kv)
    r = torch.arange(rows, device=case.device)[:, None]
    j = torch.arange(span, device=case.device)[None, :]
    band = (j >= r) & (j <= r + window - 1)
    key_pos = first + torch.arange(blocks, device=case.device)[:, None, None] * rows + j
    query_row = torch.arange(blocks, device=case.device)[:, None, None] * rows + r
    # Padding rows past seq_q keep their whole band (zero keys included) so no softmax row is empty:
    # an all -inf row would be NaN, and NaN would reach dk and dv in backward.
    visible = band & ((key_pos >= 0) | (query_row >= seq_q))
    hidden = ~visible[:, None]  # (blocks, 1, rows, span): broadcast over the query heads of a group

    def sliding_window(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, heads_q, _, dim = q.shape
        heads_kv = k.shape[1]
        group = heads_q // heads_kv
        acc_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        pad_q = blocks * rows - seq_q
        # (B, Hkv, group, blocks, rows, D) -> (B, Hkv, blocks, group, rows, D): a group shares its kv spans.
        qb = F.pad(q.to(acc_dtype) * scale, (0, 0, 0, pad_q)).view(batch, heads_kv, group, blocks, rows, dim)
        qb = qb.transpose(2, 3)
        spans = []
        for t in (k, v):
            t = F.pad(t.to(acc_dtype)[:, :, max(0, first):], (0, 0, pad_front, pad_back))
            # unfold: (B, Hkv, blocks, D, span) views of overlapping windows, step `rows`.
            spans.append(t.unfold(2, span, rows).transpose(-2, -1).unsqueeze(3))
        k_spans, v_spans = spans
        # In place: matmul's backward does not need its output.
        scores = (qb @ k_spans.transpose(-2, -1)).masked_fill_(hidden, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v_spans
        out = out.transpose(2, 3).reshape(batch, heads_q, blocks * rows, dim)[:, :, :seq_q]
        return out.to(q.dtype)

    return sliding_window


def workspace_bytes(case: Case, query_block: int = QUERY_BLOCK) -> int:
    """Memory above the inputs, in the accumulation dtype: the banded scores and probabilities (three in backward).

    Plus the padded, scaled queries, the padded keys and values and the key
    and value spans matmul copies out of their overlapping views (once per
    query head of a group), and the boolean band mask, doubled for backward's
    saved tensors and gradients.
    """
    acc = accumulation_itemsize(case)
    bwd = case.needs_backward
    rows = min(query_block, case.seq_q)
    blocks = -(-case.seq_q // rows)
    span = rows + min(case.window, case.seq_kv) - 1
    scores = case.batch * case.heads_q * blocks * rows * span * (3 if bwd else 2)
    queries = 3 * case.batch * case.heads_q * blocks * rows * case.head_dim
    spans = 2 * case.batch * case.heads_q * blocks * span * case.head_dim
    padded_kv = 2 * case.batch * case.heads_kv * (blocks * rows + span) * case.head_dim
    return (scores + (queries + spans + padded_kv) * (2 if bwd else 1)) * acc + 2 * blocks * rows * span


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="sliding_window",
            build=build,
            description="Exact sliding-window attention over banded blocks (unfold + batched matmul): O(seq x window).",
            masks=frozenset({"sliding_window"}),
            gqa=True,
            backward=True,
            params={"query_block": QUERY_BLOCK},
            memory=functools.partial(workspace_bytes, query_block=QUERY_BLOCK),
        )
    ]
