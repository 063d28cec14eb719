"""``eager``: matmul, softmax, matmul in the input dtype, as people write it by hand."""

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


def build(case: Case):
    if case.packed:
        return per_sequence(case, build)
    scale = case.softmax_scale
    group = case.group_size
    allowed = dense_mask(case.mask, case.window, case.seq_q, case.seq_kv, device=case.device, block=case.block)
    hidden = None if allowed is None else ~allowed
    compute = case.out_dtype  # fp8 inputs are dequantised to bfloat16 first: no fp8 matmul is written by hand
    distance = variants.alibi_distance(case, compute) if case.bias == "alibi" else None

    def eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, alibi_slopes=None, sinks=None,
              **descales) -> torch.Tensor:
        if case.fp8:
            q, k, v = variants.dequantised_inputs(case, q, k, v, descales, compute)
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        scores = variants.modified_scores((q * scale) @ k.transpose(-2, -1), case, distance, alibi_slopes)
        if hidden is not None:
            # In place, as careful hand-written code does: the naive memory
            # figure is two score-sized tensors (scores and probabilities).
            # (autograd allows it: matmul's backward does not need its output).
            scores.masked_fill_(hidden, float("-inf"))
        return variants.softmax_with_sinks(scores, sinks) @ v

    return eager


def workspace_bytes(case: Case) -> int:
    """Matmul-softmax-matmul in the input dtype: two score-sized tensors forward, three in backward.

    Forward holds the scores and the probabilities at once (measured: exactly
    that). Backward holds the saved probabilities plus dP and dS. Also the
    scaled q (saved for backward), under GQA k and v repeated to the query
    heads (and their gradients in backward), and the boolean mask it keeps.
    """
    elem = case.out_dtype.itemsize
    bwd = case.needs_backward
    total = score_elements(case) * elem * (3 if bwd else 2)
    total += math.prod(case.q_shape) * elem + dense_mask_bytes(case)
    if case.gqa:
        total += 2 * kv_repeated_elements(case) * elem * (2 if bwd else 1)
    # Each score variant keeps one more score-sized tensor (autograd saves it), ALiBi its distances;
    # sinks widen the scores by a column and copy them once.
    total += score_elements(case) * elem * len(case.score_mods) * (2 if bwd else 1)
    if case.bias == "alibi":
        total += case.seq_q * case.seq_kv * elem
    if case.fp8:
        total += (math.prod(case.q_shape) + math.prod(case.kv_shape) + math.prod(case.v_shape)) * (8 + elem)
    return total


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="eager",
            build=build,
            description=("Matmul, softmax, matmul in the input dtype: the attention people write by hand "
                         "(ragged and paged batches a sequence at a time, pages gathered; fp8 dequantised to bfloat16 first)."),
            masks=frozenset(MASKS),
            gqa=True,
            backward=True,
            dtypes=frozenset(DTYPES.values()),
            ragged=True,
            paged=True,
            head_dim_v=True,
            score_mods=frozenset(SCORE_MODS),
            memory=per_sequence_workspace(workspace_bytes),
        )
    ]
