"""Case: one attention workload, and the FLOP and byte model that goes with its shape."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from attnbench.masks import MASKS, count_visible_pairs

PASSES = ("fwd", "bwd", "fwd+bwd")
"""What a case times: the forward call, the backward call alone, or both."""

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""Dtypes a suite may name, by their torch names."""

BACKWARD_FLOP_FACTOR = 2.5
"""Backward FLOPs per forward FLOP: dV, dP, dS->dQ, dK (4 matmuls) plus the
recomputed QK^T (1) against the forward's 2 matmuls, as FlashAttention counts."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Case:
    """One attention workload.

    q is ``(batch, heads_q, seq_q, head_dim)``; k and v are
    ``(batch, heads_kv, seq_kv, head_dim)``; the output has q's shape.
    ``heads_q`` a multiple of ``heads_kv`` gives GQA (MQA when ``heads_kv == 1``).
    Masks are bottom-right aligned (see ``attnbench.masks``); ``window`` belongs
    to sliding_window and ``block`` to block_sparse, and is None otherwise.
    ``scale`` None means ``1/sqrt(head_dim)``.
    """

    batch: int
    heads_q: int
    heads_kv: int
    seq_q: int
    seq_kv: int
    head_dim: int
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    mask: str = "none"
    window: int | None = None
    block: int | None = None
    scale: float | None = None
    pass_: str = "fwd"

    def __post_init__(self) -> None:
        if isinstance(self.dtype, str):
            object.__setattr__(self, "dtype", _parse_dtype(self.dtype))
        for name in ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.heads_q % self.heads_kv:
            raise ValueError(f"heads_q ({self.heads_q}) must be a multiple of heads_kv ({self.heads_kv})")
        if self.dtype not in DTYPES.values():
            raise ValueError(f"dtype {self.dtype} is not one of {', '.join(DTYPES)}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device {self.device!r} is not one of cpu, cuda")
        if self.mask not in MASKS:
            raise ValueError(f"mask {self.mask!r} is not one of {', '.join(MASKS)}")
        if self.mask == "sliding_window":
            if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
                raise ValueError(f"mask sliding_window needs a positive integer window, got {self.window!r}")
        elif self.window is not None:
            raise ValueError(f"window is only meaningful with mask sliding_window, not {self.mask!r}")
        if self.mask == "block_sparse":
            if isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 1:
                raise ValueError(f"mask block_sparse needs a positive integer block, got {self.block!r}")
        elif self.block is not None:
            raise ValueError(f"block is only meaningful with mask block_sparse, not {self.mask!r}")
        if self.mask != "none" and self.seq_q > self.seq_kv:
            raise ValueError(
                f"mask {self.mask} with seq_q ({self.seq_q}) > seq_kv ({self.seq_kv}) leaves query rows "
                "that see no key (masks are bottom-right aligned)"
            )
        if self.scale is not None and not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive finite number or null, got {self.scale!r}")
        if self.pass_ not in PASSES:
            raise ValueError(f"pass {self.pass_!r} is not one of {', '.join(PASSES)}")

    # --- derived properties -------------------------------------------------
    @property
    def causal(self) -> bool:
        """True for any mask that hides future keys (all but none)."""
        return self.mask != "none"

    @property
    def gqa(self) -> bool:
        """True when several query heads share one key/value head."""
        return self.heads_q != self.heads_kv

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.heads_q // self.heads_kv

    @property
    def softmax_scale(self) -> float:
        """The scale applied to QK^T: ``scale`` or ``1/sqrt(head_dim)``."""
        return float(self.scale) if self.scale is not None else 1.0 / math.sqrt(self.head_dim)

    @property
    def needs_backward(self) -> bool:
        """True when the case runs a backward pass."""
        return self.pass_ != "fwd"

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def q_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads_q, self.seq_q, self.head_dim)

    @property
    def kv_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.heads_kv, self.seq_kv, self.head_dim)

    # --- FLOP and byte model -------------------------------------------------
    def visible_pairs(self) -> int:
        """Unmasked (query, key) pairs over all batches and query heads."""
        return self.batch * self.heads_q * count_visible_pairs(self.mask, self.window, self.seq_q, self.seq_kv, block=self.block)

    def forward_flops(self) -> int:
        """Useful forward FLOPs: QK^T and PV, 2 x head_dim each, per unmasked pair."""
        return 4 * self.head_dim * self.visible_pairs()

    def flops(self) -> float:
        """Useful FLOPs of what this case times (forward, backward, or both)."""
        fwd = self.forward_flops()
        return {"fwd": fwd, "bwd": BACKWARD_FLOP_FACTOR * fwd, "fwd+bwd": (1 + BACKWARD_FLOP_FACTOR) * fwd}[self.pass_]

    def io_bytes(self) -> int:
        """Minimum bytes moved to and from memory by an ideal fused kernel.

        Forward reads q, k, v and writes o. Backward reads q, k, v, o, dO and
        writes dQ, dK, dV (the per-row softmax statistics are negligible).
        """
        elem = torch.finfo(self.dtype).bits // 8
        q = math.prod(self.q_shape) * elem
        kv = math.prod(self.kv_shape) * elem
        fwd = 2 * q + 2 * kv
        bwd = 4 * q + 4 * kv
        return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[self.pass_]

    # --- naming and serialisation -------------------------------------------
    def label(self) -> str:
        """Short human label, e.g. ``B2 H8/2 512x1024 D64 bfloat16 causal fwd``."""
        heads = f"H{self.heads_q}" if not self.gqa else f"H{self.heads_q}/{self.heads_kv}"
        seq = f"{self.seq_q}" if self.seq_q == self.seq_kv else f"{self.seq_q}x{self.seq_kv}"
        mask = {"sliding_window": f"window{self.window}", "block_sparse": f"block_sparse{self.block}"}.get(self.mask, self.mask)
        scale = "" if self.scale is None else f" scale{self.scale:g}"
        return f"B{self.batch} {heads} N{seq} D{self.head_dim} {self.dtype_name} {mask}{scale} {self.pass_}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields by name; ``pass_`` is written as ``pass``.

        ``block`` is written only for block_sparse cases, so every other case keeps
        the keys (and the journal keys of resumed runs) it had before the field existed.
        """
        out = asdict(self)
        out["dtype"] = self.dtype_name
        out["pass"] = out.pop("pass_")
        if self.block is None:
            del out["block"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        """Inverse of ``to_dict``; unknown keys are an error."""
        data = dict(data)
        if "pass" in data:
            data["pass_"] = data.pop("pass")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown case field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


def _parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}") from None
