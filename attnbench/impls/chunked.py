"""``chunked``: online-softmax attention over key/value blocks in plain PyTorch.

The memory-efficient algorithm (Rabe & Staats; FlashAttention's recurrence)
without a fused kernel: queries are taken in chunks, keys and values in
blocks, and a running max and sum rescale the partial results, so the forward
pass never holds more than ``q_block x kv_block`` scores per head. Blocks
that the mask hides entirely are skipped, the holes of a block_sparse
pattern too. Accumulation is in float32 for half-precision inputs.
"""

from __future__ import annotations

import torch

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation
from attnbench.masks import MASKS, dense_mask, visible_bounds

Q_BLOCK = 1024
KV_BLOCK = 256


def build(case: Case, q_block: int = Q_BLOCK, kv_block: int = KV_BLOCK):
    scale = case.softmax_scale
    allowed = dense_mask(case.mask, case.window, case.seq_q, case.seq_kv, device=case.device, block=case.block)
    # For each query chunk, the key blocks any of its rows can see: within the key range the rows
    # span (both ends rise with the row), blocks the mask hides entirely are skipped as well.
    chunks = []
    for q0 in range(0, case.seq_q, q_block):
        q1 = min(q0 + q_block, case.seq_q)
        lo = visible_bounds(case.mask, case.window, case.seq_q, case.seq_kv, q0)[0]
        hi = visible_bounds(case.mask, case.window, case.seq_q, case.seq_kv, q1 - 1)[1]
        blocks = [(k0, min(k0 + kv_block, hi)) for k0 in range(lo - lo % kv_block, hi, kv_block)]
        if allowed is not None:
            blocks = [(k0, k1) for k0, k1 in blocks if allowed[q0:q1, k0:k1].any()]
        chunks.append((q0, q1, blocks))

    def chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, heads_q, seq_q, dim = q.shape
        heads_kv = k.shape[1]
        group = heads_q // heads_kv
        acc_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        # Query head h uses key/value head h // group: view q as (B, Hkv, group, Sq, D).
        qg = q.view(batch, heads_kv, group, seq_q, dim)
        outputs = []
        for q0, q1, blocks in chunks:
            qc = qg[:, :, :, q0:q1].to(acc_dtype) * scale
            rows = q1 - q0
            running_max = torch.full((batch, heads_kv, group, rows, 1), float("-inf"), dtype=acc_dtype, device=q.device)
            running_sum = torch.zeros_like(running_max)
            acc = torch.zeros((batch, heads_kv, group, rows, dim), dtype=acc_dtype, device=q.device)
            for k0, k1 in blocks:
                kb = k[:, :, None, k0:k1].to(acc_dtype)
                vb = v[:, :, None, k0:k1].to(acc_dtype)
                scores = qc @ kb.transpose(-2, -1)
                if allowed is not None:
                    scores = scores.masked_fill(~allowed[q0:q1, k0:k1], float("-inf"))
                # The max only stabilises exp(); detached, as its gradient cancels.
                new_max = torch.maximum(running_max, scores.detach().amax(dim=-1, keepdim=True))
                # Rows that have seen no visible key yet keep a max of -inf: shift by 0 instead of NaN.
                shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
                probs = torch.exp(scores - shift)
                correction = torch.exp(running_max - shift)
                running_sum = running_sum * correction + probs.sum(dim=-1, keepdim=True)
                acc = acc * correction + probs @ vb
                running_max = new_max
            outputs.append(acc / running_sum)
        out = torch.cat(outputs, dim=3) if len(outputs) > 1 else outputs[0]
        return out.view(batch, heads_q, seq_q, dim).to(q.dtype)

    return chunked


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="chunked",
            build=build,
            description="Online-softmax attention over key/value blocks in plain PyTorch (memory O(seq x block)).",
            masks=frozenset(MASKS),
            gqa=True,
            backward=True,
            params={"q_block": Q_BLOCK, "kv_block": KV_BLOCK},
        )
    ]
