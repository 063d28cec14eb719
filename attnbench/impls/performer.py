"""``performer``: linear attention with FAVOR+ positive random features (approximate).

Performer (Choromanski et al., 2021) replaces ``exp(q·k · scale)`` by
``φ(q)·φ(k)`` with ``φ(x) = exp(W x - |x|²/2) / sqrt(m)`` on
``x = scale^(1/2) · q`` (or k), for ``m`` random features W: an unbiased
estimate of the softmax kernel. Attention then regroups as
``φ(Q) (φ(K)ᵀ V) / φ(Q) (φ(K)ᵀ 1)``: O(seq x m x head_dim), linear in the
sequence. Causal attention keeps running sums of ``φ(k) vᵀ`` and ``φ(k)``
over key chunks (prefix sums), plus the causal triangle within each chunk.

W has orthogonal rows (Performer's default, lower variance), Gaussian
norms, drawn in ``build`` from a fixed seed. Each ``exp`` is shifted by a
constant that cancels in the ratio (a per-row max for queries, one max over
all keys), as the reference code does, to stay finite. More features, lower
error and more time; the estimator's variance grows as
``exp(|q + k|² · scale)``, so on unit-variance inputs at head_dim 64 it
needs far more features than on the small-norm queries of a trained model.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation
from attnbench.measure.memory import accumulation_itemsize

SEED = 0
FEATURES = {"performer": 256, "performer.m64": 64, "performer.m1024": 1024}
CHUNK = 64
"""Keys per chunk of the causal prefix sums: the within-chunk triangle is computed as a small masked matmul."""


def orthogonal_features(count: int, dim: int) -> torch.Tensor:
    """``count x dim`` random features: blocks of orthonormal rows, each row scaled to a Gaussian vector's norm."""
    gen = torch.Generator().manual_seed(SEED)
    blocks = []
    for start in range(0, count, dim):
        basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen))
        blocks.append(basis.T[: min(dim, count - start)])
    norms = torch.randn(count, dim, generator=gen).norm(dim=1, keepdim=True)
    return torch.cat(blocks) * norms


def positive_features(x: torch.Tensor, features: torch.Tensor, shift: str) -> torch.Tensor:
    """``exp(W x - |x|²/2 - c)``, c the max per row (``"row"``) or per (batch, head) over all rows (``"head"``)."""
    logits = x @ features.T - (x * x).sum(dim=-1, keepdim=True) / 2
    top = logits.detach().amax(dim=-1 if shift == "row" else (-2, -1), keepdim=True)
    return torch.exp(logits - top)


def build(case: Case, count: int):
    acc_dtype = torch.float32 if case.dtype in (torch.float16, torch.bfloat16) else case.dtype
    w = orthogonal_features(count, case.head_dim).to(device=case.device, dtype=acc_dtype)
    within = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=case.device).tril()
    root_scale = case.softmax_scale**0.5
    group = case.group_size
    causal = case.mask == "causal"
    offset = case.seq_kv - case.seq_q

    def performer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        batch, heads_q, seq_q, dim = q.shape
        heads_kv, seq_kv = k.shape[1], k.shape[2]
        out_dtype = q.dtype
        # Query heads grouped under their kv head: (B, Hkv, group, Sq, ...); kv tensors get a group axis of 1.
        q = q.to(acc_dtype).view(batch, heads_kv, group, seq_q, dim)
        k, v = (t.to(acc_dtype)[:, :, None] for t in (k, v))
        phi_k = positive_features(k * root_scale, w, "head")
        if not causal:
            phi_q = positive_features(q * root_scale, w, "row")
            num = phi_q @ (phi_k.transpose(-2, -1) @ v)
            den = phi_q @ phi_k.sum(dim=-2).unsqueeze(-1)
            return (num / den).view(batch, heads_q, seq_q, dim).to(out_dtype)
        # Causal: query i sits at key position offset + i. Lay queries on the key chunks their positions
        # fall in, padded at both ends to whole chunks (padding rows see keys, so nothing divides by 0).
        first_chunk = offset // CHUNK
        chunks = -(-seq_kv // CHUNK) - first_chunk
        front = offset - first_chunk * CHUNK
        q_pad = F.pad(q, (0, 0, front, chunks * CHUNK - front - seq_q))
        phi_q = positive_features(q_pad * root_scale, w, "row").unflatten(-2, (chunks, CHUNK))
        key_pad = -seq_kv % CHUNK
        # Padded keys get zero features and values: they add nothing to any sum.
        phi_k = F.pad(phi_k, (0, 0, 0, key_pad)).unflatten(-2, (-1, CHUNK))
        v = F.pad(v, (0, 0, 0, key_pad)).unflatten(-2, (-1, CHUNK))
        # Sums over all chunks before each chunk: (B, Hkv, 1, chunks, m, D) and (..., m).
        chunk_kv = phi_k.transpose(-2, -1) @ v
        state = (chunk_kv.cumsum(dim=-3) - chunk_kv)[..., first_chunk:, :, :]
        chunk_norm = phi_k.sum(dim=-2)
        norm = (chunk_norm.cumsum(dim=-2) - chunk_norm)[..., first_chunk:, :]
        phi_k, v = phi_k[..., first_chunk:, :, :], v[..., first_chunk:, :, :]
        local = (phi_q @ phi_k.transpose(-2, -1)) * within
        num = phi_q @ state + local @ v
        den = (phi_q @ norm.unsqueeze(-1)).squeeze(-1) + local.sum(dim=-1)
        out = (num / den.unsqueeze(-1)).flatten(-3, -2)[..., front : front + seq_q, :]
        return out.reshape(batch, heads_q, seq_q, dim).to(out_dtype)

    return performer


def workspace_bytes(case: Case, count: int) -> int:
    """Memory above the inputs, in the accumulation dtype, doubled for backward's saved tensors.

    Three feature-sized tensors per query and key row (logits, shifted, exp);
    for causal cases the padded query rows, the chunk-by-chunk ``m x head_dim``
    states and their prefix sums (three of each), and the within-chunk
    triangles; float32 copies of q, k and v and their scaled versions.
    """
    acc = accumulation_itemsize(case)
    q_rows = case.batch * case.heads_q * (case.seq_q + 2 * CHUNK)
    k_rows = case.batch * case.heads_kv * (case.seq_kv + CHUNK)
    total = 3 * (q_rows + k_rows) * count + 4 * (math.prod(case.q_shape) + 2 * math.prod(case.kv_shape))
    if case.mask == "causal":
        chunks = -(-case.seq_kv // CHUNK) + 1
        total += 3 * case.batch * case.heads_kv * chunks * count * (case.head_dim + 1) + 2 * q_rows * CHUNK
        total += 2 * q_rows * case.head_dim
    return total * acc * (2 if case.needs_backward else 1)


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name=name,
            build=functools.partial(build, count=count),
            description=f"Performer linear attention, FAVOR+ with {count} orthogonal positive random features "
            "(fixed seed); causal by prefix sums: O(seq x features); more features, lower error, more time.",
            masks=frozenset({"none", "causal"}),
            gqa=True,
            backward=True,
            exact=False,
            params={"features": count, "kind": "orthogonal positive (FAVOR+)", "causal_chunk": CHUNK, "seed": SEED},
            memory=functools.partial(workspace_bytes, count=count),
        )
        for name, count in FEATURES.items()
    ]
