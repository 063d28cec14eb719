"""``block_sparse``: FlexAttention over a block mask built straight from the block_sparse layout.

``flex`` derives its block mask by evaluating the mask function on every
(query, key) pair, in tiles of 128. Here the tiles are the pattern's own
blocks and the layout is written down from the pattern (see
``attnbench.masks``): per query block, the diagonal block is partial (causal
inside, the mask function applied), the blocks 1, 2, 4, ... back and block 0
are full (no mask function at all), the rest are never visited. Building it
costs O(blocks x log blocks), not O(seq_q x seq_kv). Query tiles line up with
pattern blocks only when ``seq_kv - seq_q`` is a multiple of the block;
other cases are ``Unsupported`` (``flex`` runs them).
"""

from __future__ import annotations

import torch

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation, Unsupported
from attnbench.impls.flex import _compile_now, _compiled_flex_attention
from attnbench.masks import mask_mod


def block_layout(case: Case) -> tuple[list[list[int]], list[list[int]]]:
    """Per query tile, the partial and the full key blocks of the case's block_sparse pattern."""
    size = case.block
    offset_blocks = (case.seq_kv - case.seq_q) // size
    partial, full = [], []
    for tile in range(-(-case.seq_q // size)):
        own = tile + offset_blocks
        behind = {own - distance for distance in _powers_of_two_up_to(own)}
        if own > 0:
            behind.add(0)
        partial.append([own])
        full.append(sorted(behind))
    return partial, full


def _powers_of_two_up_to(limit: int) -> list[int]:
    out, distance = [], 1
    while distance <= limit:
        out.append(distance)
        distance *= 2
    return out


def _indices(rows: list[list[int]], columns: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockMask's (num_blocks, indices) for per-row block lists, shaped (1, 1, rows[, columns])."""
    counts = torch.tensor([len(r) for r in rows], dtype=torch.int32, device=device)
    indices = torch.zeros(len(rows), columns, dtype=torch.int32, device=device)
    for i, r in enumerate(rows):
        indices[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
    return counts[None, None], indices[None, None]


def build(case: Case):
    from torch.nn.attention.flex_attention import BlockMask

    if (case.seq_kv - case.seq_q) % case.block:
        raise Unsupported(
            f"seq_kv - seq_q ({case.seq_kv - case.seq_q}) is not a multiple of the block ({case.block}), so query "
            "tiles would straddle pattern blocks (flex runs this case)"
        )
    if case.needs_backward and case.device == "cpu":
        raise Unsupported(f"FlexAttention has no CPU backward (torch {torch.__version__})")
    partial, full = block_layout(case)
    columns = -(-case.seq_kv // case.block)
    block_mask = BlockMask.from_kv_blocks(
        *_indices(partial, columns, case.device),
        *_indices(full, columns, case.device),
        BLOCK_SIZE=case.block,
        mask_mod=mask_mod(case.mask, case.window, case.seq_q, case.seq_kv, block=case.block),
        seq_lengths=(case.seq_q, case.seq_kv),
    )
    flex_attention = _compiled_flex_attention()
    kwargs = {"block_mask": block_mask, "scale": case.scale, "enable_gqa": case.gqa}

    def block_sparse(q, k, v):
        return flex_attention(q, k, v, **kwargs)

    _compile_now(case, block_sparse)
    return block_sparse


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="block_sparse",
            build=build,
            description="FlexAttention with a block mask written from the block_sparse layout, tiles = pattern blocks.",
            masks=frozenset({"block_sparse"}),
            gqa=True,
            backward=True,
        )
    ]
