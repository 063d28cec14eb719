"""``eager``: matmul, softmax, matmul in the input dtype, as people write it by hand."""

from __future__ import annotations

import torch

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation
from attnbench.masks import MASKS, dense_mask


def build(case: Case):
    scale = case.softmax_scale
    group = case.group_size
    allowed = dense_mask(case.mask, case.window, case.seq_q, case.seq_kv, device=case.device, block=case.block)
    hidden = None if allowed is None else ~allowed

    def eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        scores = (q * scale) @ k.transpose(-2, -1)
        if hidden is not None:
            # In place, as careful hand-written code does: the naive memory
            # figure is two score-sized tensors (scores and probabilities).
            # (autograd allows it: matmul's backward does not need its output).
            scores.masked_fill_(hidden, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    return eager


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="eager",
            build=build,
            description="Matmul, softmax, matmul in the input dtype: the attention people write by hand.",
            masks=frozenset(MASKS),
            gqa=True,
            backward=True,
        )
    ]
