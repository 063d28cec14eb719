"""``chunked``: online-softmax attention over key/value blocks in plain PyTorch.

The memory-efficient algorithm (Rabe & Staats; FlashAttention's recurrence)
without a fused kernel: queries are taken in chunks, keys and values in
blocks, and a running max and sum rescale the partial results, so the forward
pass never holds more than ``q_block x kv_block`` scores per head. Blocks
that the mask hides entirely are skipped, the holes of a block_sparse
pattern too, and only blocks the mask cuts through are masked. Accumulation
is in float32 for half-precision inputs. Ragged and paged batches run a
sequence at a time (``packing.per_sequence``), each sequence's pages gathered.
Variants: a tile's scores are softcapped and ALiBi-biased (its distances made
from the positions) before the mask; sinks start each row's running max and
sum (the sink's logit, weight 1); fp8 inputs are dequantised to bfloat16.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from attnbench import variants
from attnbench.case import DTYPES, SCORE_MODS, Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation
from attnbench.masks import MASKS, mask_tile, visible_bounds
from attnbench.measure.memory import accumulation_itemsize, per_sequence_workspace
from attnbench.packing import per_sequence

Q_BLOCK = 1024
KV_BLOCK = 512


@dataclass(frozen=True)
class Tile:
    """Keys ``[k0, k1)`` for one query chunk; ``hidden`` (True = masked) only where the mask cuts the tile."""

    k0: int
    k1: int
    hidden: torch.Tensor | None


@dataclass(frozen=True)
class Chunk:
    q0: int
    q1: int
    tiles: list[Tile]


def plan(case: Case, q_block: int = Q_BLOCK, kv_block: int = KV_BLOCK, *, with_masks: bool = True) -> list[Chunk]:
    """The tiles ``chunked`` computes for ``case``; ``with_masks=False`` marks cut tiles without building their masks.

    Shared with the memory model, so the prediction follows the blocks actually visited.
    """
    chunks = []
    for q0 in range(0, case.seq_q, q_block):
        q1 = min(q0 + q_block, case.seq_q)
        # Both ends of the visible key range rise with the row: the chunk's first and last rows bound it.
        first_lo, first_hi = visible_bounds(case.mask, case.window, case.seq_q, case.seq_kv, q0)
        last_lo, last_hi = visible_bounds(case.mask, case.window, case.seq_q, case.seq_kv, q1 - 1)
        tiles = []
        for k0 in range(first_lo - first_lo % kv_block, last_hi, kv_block):
            k1 = min(k0 + kv_block, last_hi)
            whole = case.mask != "block_sparse" and last_lo <= k0 and k1 <= first_hi
            if whole:
                tiles.append(Tile(k0, k1, None))
                continue
            allowed = mask_tile(case.mask, case.window, case.seq_q, case.seq_kv, (q0, q1), (k0, k1), block=case.block)
            if not allowed.any():
                continue  # a hole of the pattern
            if allowed.all():
                tiles.append(Tile(k0, k1, None))
            else:
                hidden = ~allowed.to(case.device) if with_masks else torch.empty(0, dtype=torch.bool)
                tiles.append(Tile(k0, k1, hidden))
        chunks.append(Chunk(q0, q1, tiles))
    return chunks


def build(case: Case, q_block: int = Q_BLOCK, kv_block: int = KV_BLOCK):
    if case.packed:
        return per_sequence(case, functools.partial(build, q_block=q_block, kv_block=kv_block))
    scale = case.softmax_scale
    chunks = plan(case, q_block, kv_block)
    softcap = case.softcap
    # ALiBi's positions, bottom-right aligned: a tile's distances are computed from them in the call.
    q_positions = torch.arange(case.seq_q, device=case.device) + (case.seq_kv - case.seq_q)
    kv_positions = torch.arange(case.seq_kv, device=case.device)

    def chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, alibi_slopes=None, sinks=None,
                **descales) -> torch.Tensor:
        if case.fp8:
            # No fp8 matmul in plain PyTorch: dequantised to bfloat16, then computed as for bfloat16 inputs.
            q, k, v = variants.dequantised_inputs(case, q, k, v, descales, torch.bfloat16)
        batch, heads_q, seq_q, dim = q.shape
        heads_kv, dim_v = k.shape[1], v.shape[-1]
        group = heads_q // heads_kv
        acc_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        # In-place updates save a pass over every tile, but autograd needs the values they overwrite.
        in_place = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        # Upcast once (O(seq)), not once per tile; a no-op view for float32.
        k_acc, v_acc = k.to(acc_dtype), v.to(acc_dtype)
        # Per query head, as (heads_kv, group, 1, 1) to broadcast over a tile's rows and keys.
        neg_slopes = None if alibi_slopes is None else -alibi_slopes.to(acc_dtype).view(heads_kv, group, 1, 1)
        sink_rows = None if sinks is None else sinks.to(acc_dtype).view(1, heads_kv, group, 1, 1)
        # Query head h uses key/value head h // group: the group's rows of one kv head share each
        # matmul, (B, Hkv, group x rows, D) @ (B, Hkv, D, keys), with no repeated k or v.
        qg = q.view(batch, heads_kv, group, seq_q, dim)
        outputs = []
        for chunk in chunks:
            rows = chunk.q1 - chunk.q0
            qc = (qg[:, :, :, chunk.q0:chunk.q1].to(acc_dtype) * scale).reshape(batch, heads_kv, group * rows, dim)
            stats = (batch, heads_kv, group * rows, 1)
            if sink_rows is None:
                running_max = torch.full(stats, float("-inf"), dtype=acc_dtype, device=q.device)
                running_sum = torch.zeros_like(running_max)
            else:
                # The sink is a logit every row starts from: exp(sink - max) of the denominator, no value.
                running_max = sink_rows.expand(batch, heads_kv, group, rows, 1).reshape(stats)
                running_sum = torch.ones_like(running_max)
            acc = torch.zeros((batch, heads_kv, group * rows, dim_v), dtype=acc_dtype, device=q.device)
            for tile in chunk.tiles:
                scores = qc @ k_acc[:, :, tile.k0:tile.k1].transpose(-2, -1)
                if softcap is not None:
                    # tanh's backward needs its output: in place only without autograd.
                    scores = scores.div_(softcap).tanh_().mul_(softcap) if in_place else torch.tanh(scores / softcap) * softcap
                if neg_slopes is not None:
                    distance = (q_positions[chunk.q0:chunk.q1, None] - kv_positions[None, tile.k0:tile.k1]).abs_()
                    scores.view(batch, heads_kv, group, rows, -1).addcmul_(neg_slopes, distance.to(acc_dtype))
                if tile.hidden is not None:
                    scores.view(batch, heads_kv, group, rows, -1).masked_fill_(tile.hidden, float("-inf"))
                # The max only stabilises exp(); detached, as its gradient cancels.
                new_max = torch.maximum(running_max, scores.detach().amax(dim=-1, keepdim=True))
                # Rows that have seen no visible key yet keep a max of -inf: shift by 0 instead of NaN.
                shift = new_max.masked_fill(torch.isinf(new_max), 0.0)
                correction = torch.exp(running_max - shift)
                probs = scores.sub_(shift).exp_()
                block_sum = probs.sum(dim=-1, keepdim=True)
                update = probs @ v_acc[:, :, tile.k0:tile.k1]
                if in_place:
                    running_sum.mul_(correction).add_(block_sum)
                    acc.mul_(correction).add_(update)
                else:
                    running_sum = running_sum * correction + block_sum
                    acc = acc * correction + update
                running_max = new_max
            out = acc.div_(running_sum) if in_place else acc / running_sum
            outputs.append(out.view(batch, heads_kv, group, rows, dim_v))
        out = torch.cat(outputs, dim=3) if len(outputs) > 1 else outputs[0]
        return out.view(batch, heads_q, seq_q, dim_v).to(case.out_dtype)

    return chunked


def workspace_bytes(case: Case, q_block: int = Q_BLOCK, kv_block: int = KV_BLOCK) -> int:
    """Online softmax over ``q_block x kv_block`` score tiles.

    Forward holds about three tiles at once (the scores, updated in place,
    the probabilities' sum and the product's temporaries, with margin) plus
    three output-sized tensors (the per-chunk results, their concatenation,
    the cast) and the upcast k and v, all in the accumulation dtype (float32
    for half inputs), and a boolean mask per tile the mask cuts through.
    Plain autograd saves every visited tile's probabilities and the
    accumulator it rescaled, so backward holds O(visible pairs) after all:
    the tiles visited, counted from ``plan``, plus the tiles in flight.

    Variants: a softcap's tanh is one more tile in flight (and, saved for
    backward, one per visited tile), ALiBi a tile of distances; fp8 inputs
    are dequantised through float64 to bfloat16 copies of q, k and v first.
    """
    acc = accumulation_itemsize(case)
    q_block = min(q_block, case.seq_q)
    kv_block = min(kv_block, case.seq_kv)
    heads = case.batch * case.heads_q
    tiles = [(c.q1 - c.q0, t.k1 - t.k0, t.hidden is not None)
             for c in plan(case, q_block, kv_block, with_masks=False) for t in c.tiles]
    kv = math.prod(case.kv_shape) + math.prod(case.v_shape)
    upcast = kv * acc if case.dtype.itemsize < acc else 0
    mask_bytes = sum(rows * keys for rows, keys, cut in tiles if cut)
    in_flight = 4 + (case.softcap is not None)
    outputs = 3 * max(math.prod(case.q_shape), math.prod(case.out_shape)) * acc
    total = in_flight * heads * q_block * kv_block * acc + outputs + upcast + mask_bytes
    if case.bias == "alibi":
        total += q_block * kv_block * (8 + acc)  # int64 distances, then their conversion
    if case.fp8:
        inputs = math.prod(case.q_shape) + kv
        total += inputs * 2 + max(math.prod(case.q_shape), math.prod(case.v_shape)) * 8
    if case.needs_backward:
        area = sum(rows * keys for rows, keys, _ in tiles)
        # Per visited tile: its probabilities (and softcap's tanh) and the accumulator it rescaled.
        saved = 1 + (case.softcap is not None)
        total += saved * heads * area * acc + len(tiles) * heads * q_block * case.value_dim * acc
    return total


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="chunked",
            build=build,
            description=("Online-softmax attention over key/value blocks in plain PyTorch (memory O(seq x block); "
                         "ragged and paged batches a sequence at a time, pages gathered; sinks start each row's "
                         "running max and sum; fp8 dequantised to bfloat16 first, then computed as bfloat16)."),
            masks=frozenset(MASKS),
            gqa=True,
            backward=True,
            ragged=True,
            paged=True,
            dtypes=frozenset(DTYPES.values()),
            head_dim_v=True,
            score_mods=frozenset(SCORE_MODS),
            params={"q_block": Q_BLOCK, "kv_block": KV_BLOCK},
            memory=per_sequence_workspace(functools.partial(workspace_bytes, q_block=Q_BLOCK, kv_block=KV_BLOCK)),
        )
    ]
