"""``linformer``: Linformer's low-rank attention with fixed random projections (approximate).

Linformer (Wang et al., 2020) projects keys and values along the sequence
with ``rank x seq_kv`` matrices E and F before attending:
``softmax(Q (E K)^T * scale) (F V)``, so scores are ``seq_q x rank`` and the
cost is O(seq x rank) instead of O(seq^2). The paper learns E and F; a
benchmark cannot train, so here E = F is the paper's Johnson-Lindenstrauss
choice, a Gaussian matrix with entries N(0, 1/rank), drawn in ``build`` from
a fixed seed (the same draw on every device). The error falls as the rank
grows, but untrained projections do not converge to softmax attention: a
run shows what Linformer's structure costs before training can recover it.
No mask (a projection mixes every position, the future included).
"""

from __future__ import annotations

import functools
import math

import torch

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation

SEED = 0
RANKS = {"linformer": 256, "linformer.r64": 64, "linformer.r1024": 1024}


def projection(rank: int, seq_kv: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """The ``rank x seq_kv`` Gaussian projection, entries N(0, 1/rank), drawn on the CPU from ``SEED``."""
    gen = torch.Generator().manual_seed(SEED)
    return (torch.randn(rank, seq_kv, generator=gen) / math.sqrt(rank)).to(device=device, dtype=dtype)


def build(case: Case, rank: int):
    scale = case.softmax_scale
    group = case.group_size
    proj = projection(rank, case.seq_kv, case.device, case.dtype)

    def linformer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # Project before repeating for GQA: the projection is per kv head, rank x D each.
        k_low, v_low = proj @ k, proj @ v
        if group > 1:
            k_low = k_low.repeat_interleave(group, dim=1)
            v_low = v_low.repeat_interleave(group, dim=1)
        return torch.softmax((q * scale) @ k_low.transpose(-2, -1), dim=-1) @ v_low

    return linformer


def workspace_bytes(case: Case, rank: int) -> int:
    """Memory above the inputs: ``seq_q x rank`` scores and probabilities (three such in backward).

    Plus the projection, the projected k and v (repeated under GQA, with their
    gradients in backward) and the scaled q.
    """
    elem = case.dtype.itemsize
    bwd = case.needs_backward
    scores = case.batch * case.heads_q * case.seq_q * rank * (3 if bwd else 2)
    low_rank_kv = 2 * case.batch * (case.heads_q + case.heads_kv) * rank * case.head_dim * (2 if bwd else 1)
    return (scores + low_rank_kv + rank * case.seq_kv + math.prod(case.q_shape) * (2 if bwd else 1)) * elem


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name=name,
            build=functools.partial(build, rank=rank),
            description=f"Linformer, K and V projected along the sequence to rank {rank} by a fixed Gaussian "
            "projection (untrained): O(seq x rank); higher rank, lower error, more time.",
            masks=frozenset({"none"}),
            gqa=True,
            backward=True,
            exact=False,
            params={"rank": rank, "projection": "gaussian N(0, 1/rank), E = F", "seed": SEED},
            memory=functools.partial(workspace_bytes, rank=rank),
        )
        for name, rank in RANKS.items()
    ]
