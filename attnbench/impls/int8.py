"""``int8``: SageAttention-style attention with Q·Kᵀ in int8 (approximate).

As SageAttention (Zhang et al., 2024) does it:

1. Smooth K: subtract its mean over the sequence. Every score of a query row
   shifts by the same ``q · mean``, which softmax ignores, while K's
   channel-wise outliers, which would stretch its quantization scale, go.
2. Quantize Q (times the softmax scale) and K to int8 per block of tokens:
   each block's scale is its max ``|x| / 127``, so one outlier costs only
   its own block's resolution.
3. Multiply in integers: ``torch._int_mm`` (int8 x int8 -> int32) where this
   torch has it for the device, else the same products summed in float32,
   which is exact since ``127² x head_dim < 2²⁴`` for ``head_dim <= 1040``.
4. Dequantize with the outer product of the block scales; the mask, the
   softmax and P·V are in the input precision.

``q_block`` and ``k_block`` trade error for scale storage and work: smaller
blocks follow the data more closely. ``int8`` uses SageAttention's 128 and
64; ``int8.per_token`` gives every token its own scale (the finest);
``int8.per_tensor`` one scale per head for all of Q or K (the coarsest).
Forward only, as SageAttention: quantization has no useful gradient.
"""

from __future__ import annotations

import functools
import math

import torch

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation, Unsupported
from attnbench.masks import MASKS, dense_mask
from attnbench.measure.memory import dense_mask_bytes, kv_repeated_elements, score_elements

VARIANTS = {
    "int8": (128, 64),
    "int8.per_token": (1, 1),
    "int8.per_tensor": (None, None),
}
"""Name -> (q_block, k_block) in tokens; None: one block spanning the whole sequence."""
INT8_MAX = 127
EXACT_FLOAT32_HEAD_DIM = (2**24) // INT8_MAX**2


def quantize_per_block(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per block of ``block`` tokens (dim -2); returns the int8 tensor and each token's scale (float32)."""
    seq = x.shape[-2]
    pad = -seq % block
    xf = torch.nn.functional.pad(x.float(), (0, 0, 0, pad))
    blocks = xf.unflatten(-2, (-1, block))
    scale = blocks.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / INT8_MAX
    quantized = torch.round(blocks / scale).to(torch.int8).flatten(-3, -2)[..., :seq, :]
    token_scale = scale.expand(*scale.shape[:-2], block, 1).flatten(-3, -2)[..., :seq, :]
    return quantized, token_scale


@functools.cache
def int_mm_works(device: str) -> bool:
    """Whether ``torch._int_mm`` runs on ``device`` in this torch (it is private, and absent from older builds)."""
    try:
        a = torch.ones(32, 32, dtype=torch.int8, device=device)
        return bool((torch._int_mm(a, a) == 32).all())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def integer_scores(q8: torch.Tensor, k8: torch.Tensor) -> torch.Tensor:
    """Exact int8 Q·Kᵀ per (batch, kv head) as float32: ``(B, Hkv, R, D) x (B, Hkv, S, D) -> (B, Hkv, R, S)``."""
    if int_mm_works(q8.device.type):
        batch, heads = q8.shape[:2]
        out = torch.empty(*q8.shape[:-1], k8.shape[-2], dtype=torch.int32, device=q8.device)
        for b in range(batch):
            for h in range(heads):
                torch._int_mm(q8[b, h], k8[b, h].t(), out=out[b, h])
        return out.float()
    return q8.float() @ k8.float().transpose(-2, -1)


def build(case: Case, q_block: int | None, k_block: int | None):
    if case.head_dim > EXACT_FLOAT32_HEAD_DIM and not int_mm_works(case.device):
        raise Unsupported(f"head_dim {case.head_dim} > {EXACT_FLOAT32_HEAD_DIM}: without torch._int_mm on "
                          f"{case.device} the int8 products would not sum exactly in float32")
    scale = case.softmax_scale
    group = case.group_size
    q_block = q_block or case.seq_q
    k_block = k_block or case.seq_kv
    allowed = dense_mask(case.mask, case.window, case.seq_q, case.seq_kv, device=case.device, block=case.block)
    hidden = None if allowed is None else ~allowed

    def int8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, heads_q, seq_q, dim = q.shape
        heads_kv = k.shape[1]
        k = k - k.mean(dim=-2, keepdim=True)
        q8, q_scale = quantize_per_block(q * scale, q_block)
        k8, k_scale = quantize_per_block(k, k_block)
        # A kv head's query heads stacked as rows: one integer matmul per (batch, kv head).
        rows = (batch, heads_kv, group * seq_q)
        scores = integer_scores(q8.reshape(*rows, dim), k8)
        scores = scores * q_scale.reshape(*rows, 1) * k_scale.transpose(-2, -1)
        scores = scores.view(batch, heads_q, seq_q, -1).to(q.dtype)
        if hidden is not None:
            scores.masked_fill_(hidden, float("-inf"))
        if group > 1:
            v = v.repeat_interleave(group, dim=1)
        return torch.softmax(scores, dim=-1) @ v

    return int8


def workspace_bytes(case: Case) -> int:
    """Memory above the inputs: the scores as int32 and float32 and two float32 rescaled copies at once.

    Plus the input-dtype scores and probabilities, the boolean mask and its
    negation, float32 copies of q and k while they are quantized, and v
    repeated to the query heads under GQA.
    """
    scores = score_elements(case)
    elem = case.dtype.itemsize
    qk = math.prod(case.q_shape) + math.prod(case.kv_shape)
    mask = 2 * dense_mask_bytes(case)
    repeated_v = kv_repeated_elements(case) * elem
    return scores * (8 + 2 * elem) + 6 * qk * 4 + mask + repeated_v


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    def blocks(size: int | None) -> int | str:
        return "whole sequence" if size is None else size

    return [
        Implementation(
            name=name,
            build=functools.partial(build, q_block=q_block, k_block=k_block),
            description="SageAttention-style int8 Q·Kᵀ: K smoothed by its mean, Q and K quantized per block "
            f"(Q {blocks(q_block)}, K {blocks(k_block)} tokens), integer matmul, softmax and P·V in the input "
            "dtype; finer blocks, lower error.",
            masks=frozenset(MASKS),
            gqa=True,
            exact=False,
            params={"q_block": blocks(q_block), "k_block": blocks(k_block), "smooth_k": True},
            memory=workspace_bytes,
        )
        for name, (q_block, k_block) in VARIANTS.items()
    ]
