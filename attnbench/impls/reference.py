"""``reference``: float64 math attention, the correctness oracle (listed, never ranked)."""

from __future__ import annotations

import math

import torch

from attnbench import variants
from attnbench.case import DTYPES, SCORE_MODS, Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation
from attnbench.masks import MASKS, dense_mask
from attnbench.measure.memory import dense_mask_bytes, kv_repeated_elements, per_sequence_workspace, score_elements
from attnbench.packing import per_sequence


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, *, alibi_slopes=None,
                        sinks=None, **descales) -> torch.Tensor:
    """Exact attention computed in float64 on q's device, the case's variants included; returns float64."""
    if case.fp8:
        q, k, v = variants.dequantised_inputs(case, q, k, v, descales, torch.float64)
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    if case.gqa:
        k = k.repeat_interleave(case.group_size, dim=1)
        v = v.repeat_interleave(case.group_size, dim=1)
    scores = (q @ k.transpose(-2, -1)) * case.softmax_scale
    distance = variants.alibi_distance(case, torch.float64) if case.bias == "alibi" else None
    scores = variants.modified_scores(scores, case, distance, alibi_slopes)
    allowed = dense_mask(case.mask, case.window, case.seq_q, case.seq_kv, device=q.device, block=case.block)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return variants.softmax_with_sinks(scores, sinks) @ v


def build(case: Case):
    if case.packed:
        return per_sequence(case, build)

    def reference(q, k, v, **keywords):
        return reference_attention(q, k, v, case, **keywords).to(case.out_dtype)

    return reference


def workspace_bytes(case: Case) -> int:
    """The float64 oracle: ``eager``'s two (three in backward) score tensors at 8 bytes an element.

    Plus float64 copies of q, k, v and the output before its cast, k and v
    repeated to the query heads under GQA, gradients of all of those in
    backward, and the boolean mask and its negation it builds.
    """
    bwd = case.needs_backward
    total = score_elements(case) * 8 * (3 if bwd else 2)
    copies = (2 * math.prod(case.q_shape) + 2 * math.prod(case.kv_shape) + 2 * kv_repeated_elements(case)) * 8
    return total + copies * (2 if bwd else 1) + 2 * dense_mask_bytes(case)


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="reference",
            build=build,
            description="Float64 math attention: the oracle every output is checked against.",
            masks=frozenset(MASKS),
            gqa=True,
            backward=True,
            ranked=False,
            dtypes=frozenset(DTYPES.values()),
            ragged=True,
            paged=True,
            head_dim_v=True,
            score_mods=frozenset(SCORE_MODS),
            memory=per_sequence_workspace(workspace_bytes),
        )
    ]
