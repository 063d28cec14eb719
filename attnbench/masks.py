"""Mask semantics: which (query, key) pairs a case lets through.

One definition serves the reference, the built-in implementations and the
FLOP model, so that what is counted is exactly what is computed.

Positions are bottom-right aligned: query ``i`` of ``seq_q`` sits at key
position ``i + seq_kv - seq_q`` (FlashAttention's convention, and the one that
makes decoding with ``seq_q == 1`` see the whole cache).

``block_sparse`` is causal attention thinned to whole blocks of ``block``
positions. A query at position ``p`` lies in block ``p // block``; key block
``kb`` is visible ``d = p // block - kb`` blocks back when ``d`` is 0 (its own
block, up to ``p``), a power of two (1, 2, 4, 8, ...: the previous block and
LogSparse-style blocks at doubling distances), or when ``kb == 0`` (a global
first block, as BigBird's global tokens and attention sinks). A row sees
O(block x log(seq / block)) keys, and the hull of what it sees is causal's
``[0, p]``.
"""

from __future__ import annotations

import torch

MASKS = ("none", "causal", "sliding_window", "block_sparse")
"""Mask kinds a suite may name."""


def query_positions(seq_q: int, seq_kv: int) -> range:
    """Key-axis position of each query row under bottom-right alignment."""
    offset = seq_kv - seq_q
    return range(offset, offset + seq_q)


def visible_bounds(mask: str, window: int | None, seq_q: int, seq_kv: int, row: int) -> tuple[int, int]:
    """Smallest half-open key range ``[lo, hi)`` holding every key query ``row`` attends to.

    Exactly the visible keys for none, causal and sliding_window; block_sparse
    leaves holes inside the range. Both ends never decrease from row to row.
    """
    if mask == "none":
        return 0, seq_kv
    pos = row + seq_kv - seq_q
    hi = max(0, min(pos + 1, seq_kv))
    if mask in ("causal", "block_sparse"):
        return 0, hi
    if mask == "sliding_window":
        assert window is not None and window > 0
        return min(max(0, pos - window + 1), hi), hi
    raise ValueError(f"unknown mask {mask!r}")


def count_visible_pairs(mask: str, window: int | None, seq_q: int, seq_kv: int, *, block: int | None = None) -> int:
    """Exact number of unmasked (query, key) pairs for one (batch, head)."""
    if mask == "none":
        return seq_q * seq_kv
    if mask == "block_sparse":
        return sum(_block_sparse_row_count(pos, _block_size(block)) for pos in query_positions(seq_q, seq_kv))
    total = 0
    for row in range(seq_q):
        lo, hi = visible_bounds(mask, window, seq_q, seq_kv, row)
        total += hi - lo
    return total


def _block_sparse_row_count(pos: int, block: int) -> int:
    """Keys a query at ``pos`` sees: its own block up to itself, whole blocks at power-of-two distances, block 0."""
    own = pos // block
    count = pos - own * block + 1
    distance = 1
    while distance <= own:
        count += block
        distance *= 2
    # Block 0 is counted above when its distance is a power of two (or 0), else it is added here.
    if own > 0 and own & (own - 1):
        count += block
    return count


def dense_mask(
    mask: str, window: int | None, seq_q: int, seq_kv: int, device: str | torch.device = "cpu", *, block: int | None = None
) -> torch.Tensor | None:
    """Boolean ``(seq_q, seq_kv)`` tensor, True where attention is allowed; None for no mask."""
    return mask_tile(mask, window, seq_q, seq_kv, (0, seq_q), (0, seq_kv), device, block=block)


def mask_tile(
    mask: str, window: int | None, seq_q: int, seq_kv: int, rows: tuple[int, int], keys: tuple[int, int],
    device: str | torch.device = "cpu", *, block: int | None = None,
) -> torch.Tensor | None:
    """``dense_mask(...)[rows[0]:rows[1], keys[0]:keys[1]]`` without building the whole mask; None for no mask."""
    if mask == "none":
        return None
    offset = seq_kv - seq_q
    q_pos = torch.arange(rows[0] + offset, rows[1] + offset, device=device)[:, None]
    k_pos = torch.arange(keys[0], keys[1], device=device)[None, :]
    allowed = k_pos <= q_pos
    if mask == "sliding_window":
        assert window is not None and window > 0
        allowed &= k_pos > q_pos - window
    elif mask == "block_sparse":
        allowed &= _block_sparse_allowed(q_pos, k_pos, _block_size(block))
    elif mask != "causal":
        raise ValueError(f"unknown mask {mask!r}")
    return allowed


def _block_sparse_allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, block: int) -> torch.Tensor:
    """The block pattern, causality aside: block distance 0 or a power of two, or key block 0.

    Integer tensor ops only, so the same expression serves ``dense_mask`` and FlexAttention's ``mask_mod``.
    """
    distance = q_pos // block - k_pos // block
    # d & (d - 1) == 0 holds for d = 0 and powers of two (negative distances are in the future, hidden anyway).
    return ((distance & (distance - 1)) == 0) | (k_pos < block)


def _block_size(block: int | None) -> int:
    if block is None or block < 1:
        raise ValueError(f"mask block_sparse needs a positive block size, got {block!r}")
    return block


def mask_mod(mask: str, window: int | None, seq_q: int, seq_kv: int, *, block: int | None = None):
    """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for the same mask; None for no mask."""
    offset = seq_kv - seq_q
    if mask == "none":
        return None
    if mask == "causal":
        def causal(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx + offset
        return causal
    if mask == "sliding_window":
        def sliding(b, h, q_idx, kv_idx):
            pos = q_idx + offset
            return (kv_idx <= pos) & (kv_idx > pos - window)
        return sliding
    if mask == "block_sparse":
        size = _block_size(block)

        def block_sparse(b, h, q_idx, kv_idx):
            pos = q_idx + offset
            return (kv_idx <= pos) & _block_sparse_allowed(pos, kv_idx, size)
        return block_sparse
    raise ValueError(f"unknown mask {mask!r}")
