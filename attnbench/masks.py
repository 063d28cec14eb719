"""Mask semantics: which (query, key) pairs a case lets through.

One definition serves the reference, the built-in implementations and the
FLOP model, so that what is counted is exactly what is computed.

Positions are bottom-right aligned: query ``i`` of ``seq_q`` sits at key
position ``i + seq_kv - seq_q`` (FlashAttention's convention, and the one that
makes decoding with ``seq_q == 1`` see the whole cache).
"""

from __future__ import annotations

import torch

MASKS = ("none", "causal", "sliding_window")
"""Mask kinds a suite may name."""


def query_positions(seq_q: int, seq_kv: int) -> range:
    """Key-axis position of each query row under bottom-right alignment."""
    offset = seq_kv - seq_q
    return range(offset, offset + seq_q)


def visible_bounds(mask: str, window: int | None, seq_q: int, seq_kv: int, row: int) -> tuple[int, int]:
    """Half-open key range ``[lo, hi)`` that query ``row`` attends to."""
    if mask == "none":
        return 0, seq_kv
    pos = row + seq_kv - seq_q
    hi = max(0, min(pos + 1, seq_kv))
    if mask == "causal":
        return 0, hi
    if mask == "sliding_window":
        assert window is not None and window > 0
        return min(max(0, pos - window + 1), hi), hi
    raise ValueError(f"unknown mask {mask!r}")


def count_visible_pairs(mask: str, window: int | None, seq_q: int, seq_kv: int) -> int:
    """Exact number of unmasked (query, key) pairs for one (batch, head)."""
    if mask == "none":
        return seq_q * seq_kv
    total = 0
    for row in range(seq_q):
        lo, hi = visible_bounds(mask, window, seq_q, seq_kv, row)
        total += hi - lo
    return total


def dense_mask(mask: str, window: int | None, seq_q: int, seq_kv: int, device: str | torch.device = "cpu") -> torch.Tensor | None:
    """Boolean ``(seq_q, seq_kv)`` tensor, True where attention is allowed; None for no mask."""
    if mask == "none":
        return None
    q_pos = torch.arange(seq_kv - seq_q, seq_kv, device=device)[:, None]
    k_pos = torch.arange(seq_kv, device=device)[None, :]
    allowed = k_pos <= q_pos
    if mask == "sliding_window":
        assert window is not None and window > 0
        allowed &= k_pos > q_pos - window
    elif mask != "causal":
        raise ValueError(f"unknown mask {mask!r}")
    return allowed


def mask_mod(mask: str, window: int | None, seq_q: int, seq_kv: int):
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
    raise ValueError(f"unknown mask {mask!r}")
