"""A small pre-norm transformer classifier whose attention is the implementation under test."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.implementation import AttentionFn

MLP_RATIO = 4
ROPE_BASE = 10000.0


def rotary_tables(seq_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE's angles, ``(seq_len, head_dim)`` each (the two halves of a head share frequencies)."""
    frequencies = ROPE_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), frequencies).repeat(1, 2)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to ``(B, S, H, D)`` ``x``: each pair (i, i + D/2) turned by its position's angle."""
    first, second = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat((-second, first), dim=-1) * sin[:, None]


class SelfAttention(nn.Module):
    """Multi-head self-attention: q, k, v projections, RoPE on q and k, ``attend(q, k, v)``, output projection.

    Positions enter only through RoPE, inside q and k, so any attention
    implementation sees them: relative offsets (a key's neighbour, a bracket's
    depth) are then easy to learn, which an absolute embedding makes slow.
    """

    def __init__(self, d_model: int, heads: int, attend: AttentionFn, layout: str) -> None:
        super().__init__()
        self.heads = heads
        self.attend = attend
        self.layout = layout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, d_model = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.heads, d_model // self.heads).unbind(dim=2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        # Contiguous, as attnbench's runner hands tensors over: an implementation may assume it.
        if self.layout == "bshd":
            out = self.attend(q.contiguous(), k.contiguous(), v.contiguous())
        else:
            out = self.attend(*(t.transpose(1, 2).contiguous() for t in (q, k, v))).transpose(1, 2)
        return self.out(out.reshape(batch, seq, d_model))


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, attend: AttentionFn, layout: str) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads, attend, layout)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, MLP_RATIO * d_model), nn.GELU(), nn.Linear(MLP_RATIO * d_model, d_model)
        )

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), cos, sin)
        return x + self.mlp(self.norm_mlp(x))


class TaskModel(nn.Module):
    """Token embeddings, ``layers`` blocks with rotary positions, and a linear head on the last position.

    A token's input also embeds the previous token's id (a token shift, as
    RWKV's): recall's key-value binding then needs no attention hop (without
    it a 2-layer model stalls on recall within a CPU budget), while every
    dependency across the sequence still goes through the attention under
    test. Every task puts the token to classify last, so the head reads there.
    ``attend`` takes ``(B, H, S, D)`` tensors for layout ``"bhsd"`` and
    ``(B, S, H, D)`` for ``"bshd"``, as ``Implementation.layout`` declares.
    """

    def __init__(
        self, *, vocab: int, seq_len: int, d_model: int, heads: int, layers: int, num_classes: int,
        attend: AttentionFn, layout: str = "bhsd",
    ) -> None:
        super().__init__()
        self.vocab = vocab
        self.tokens = nn.Embedding(vocab, d_model)
        # The previous token's id too (vocab itself: none, at position 0).
        self.previous = nn.Embedding(vocab + 1, d_model)
        cos, sin = rotary_tables(seq_len, d_model // heads)
        # Buffers: they follow the model to its device, and are not trained.
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(d_model, heads, attend, layout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` token ids -> ``(B, num_classes)`` logits."""
        x = self.tokens(tokens) + self.previous(F.pad(tokens[:, :-1], (1, 0), value=self.vocab))
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        return self.head(self.norm(x[:, -1]))
