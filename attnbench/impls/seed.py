"""``seed.*``: the attention code of the project's original notes, run as written.

The notes (``shared/seed``, sections 1 and 2) give two ``nn.Module`` classes:

- ``SelfAttention(embed_dim, num_heads)``: three ``nn.Linear`` projections of
  ``x`` to Q, K, V, then ``Q.view(-1, num_heads, head_dim)`` (likewise K, V),
  ``softmax(Q @ K.transpose(1, 2) / head_dim ** 0.5, dim=2) @ V`` and
  ``.view(-1, embed_dim)``. On ``x`` of shape ``(batch, seq, embed_dim)`` the
  view folds batch and sequence into one axis and leaves the heads as the
  axis attended over: each token's heads attend to that token's own heads,
  and no token sees any other.
- ``MultiHeadAttention(embed_dim, num_heads)``: ``num_heads`` whole
  ``SelfAttention`` modules applied to ``x``, their outputs joined with
  ``torch.cat(outputs, 2)`` and projected by ``nn.Linear(embed_dim * num_heads,
  embed_dim)``. Each output is 2-D ``(tokens, embed_dim)``, so the
  concatenation along dimension 2 raises ``IndexError``.

What the wrappers do: attnbench hands over q, k and v already projected, so
the learned projections are left out and the notes' code runs from the
``.view`` on, line for line, on q, k and v in the ``(batch, seq, embed_dim)``
layout the notes use (``layout="bshd"``, heads side by side in
``embed_dim``). ``seed.self_attention`` reshapes its ``(tokens, embed_dim)``
result back to ``(batch, seq, heads, head_dim)``, as a caller of the module
would; attnbench finds it ``incorrect`` and reports its error.
``seed.multi_head`` raises the notes' ``IndexError`` before the output
projection is reached, so the projection is not reproduced; attnbench records
it as an ``error`` with the exception. ``seed.self_attention_fixed`` is the
first one corrected: heads split per position and moved beside the sequence,
scores over positions, softmax over keys, the case's softmax scale; it passes.

All three are ranked: they are implementations someone wrote, measured like any
other, and a leaderboard drops results that are not correct.
"""

from __future__ import annotations

import torch

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation
from attnbench.impls import eager

AS_WRITTEN = ("seed.self_attention", "seed.multi_head")
"""The notes' two versions, wrong on purpose: what attnbench has to catch."""


def self_attention_as_written(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The notes' ``SelfAttention.forward`` after its projections, unchanged: ``(..., embed_dim)`` in, ``(tokens, embed_dim)`` out."""
    embed_dim = Q.shape[-1]
    head_dim = embed_dim // num_heads

    Q = Q.view(-1, num_heads, head_dim)
    K = K.view(-1, num_heads, head_dim)
    V = V.view(-1, num_heads, head_dim)

    attn_weights = torch.matmul(Q, K.transpose(1, 2)) / (head_dim**0.5)
    attn_weights = torch.softmax(attn_weights, dim=2)
    attn_output = torch.matmul(attn_weights, V)
    attn_output = attn_output.view(-1, embed_dim)

    return attn_output


def multi_head_as_written(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The notes' ``MultiHeadAttention.forward`` up to its output projection, which it never reaches."""
    attn_outputs = [self_attention_as_written(Q, K, V, num_heads) for _ in range(num_heads)]
    return torch.cat(attn_outputs, 2)


def _embed(t: torch.Tensor) -> torch.Tensor:
    """``(batch, seq, heads, head_dim)`` -> the notes' ``(batch, seq, embed_dim)``."""
    return t.reshape(*t.shape[:2], -1)


def build_self_attention(case: Case):
    def self_attention(q, k, v):
        out = self_attention_as_written(_embed(q), _embed(k), _embed(v), case.heads_q)
        return out.view(q.shape)

    return self_attention


def build_multi_head(case: Case):
    def multi_head(q, k, v):
        out = multi_head_as_written(_embed(q), _embed(k), _embed(v), case.heads_q)
        return out.view(q.shape)

    return multi_head


def build_self_attention_fixed(case: Case):
    scale = case.softmax_scale

    def self_attention_fixed(q, k, v):
        batch, seq_q, heads, head_dim = q.shape
        # Split heads per position, then put them beside the sequence: (batch, heads, seq, head_dim).
        Q, K, V = (_embed(t).view(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
        attn_weights = torch.softmax(torch.matmul(Q, K.transpose(-2, -1)) * scale, dim=-1)
        attn_output = torch.matmul(attn_weights, V)
        return attn_output.transpose(1, 2).reshape(q.shape)

    return self_attention_fixed


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    # What the notes' code handles: one sequence length for q and k, equal head counts, no mask.
    common = dict(masks=frozenset({"none"}), gqa=False, backward=True, layout="bshd")
    return [
        Implementation(
            name=AS_WRITTEN[0],
            build=build_self_attention,
            description="The notes' SelfAttention as written: its view attends across heads, not positions (incorrect).",
            cross=False,
            **common,
        ),
        Implementation(
            name=AS_WRITTEN[1],
            build=build_multi_head,
            description="The notes' MultiHeadAttention as written: torch.cat along a dimension 2-D outputs lack (raises).",
            cross=False,
            **common,
        ),
        Implementation(
            name="seed.self_attention_fixed",
            build=build_self_attention_fixed,
            description="The notes' SelfAttention corrected: heads split per position, attention over positions.",
            cross=True,
            # The corrected code is eager's matmul, softmax, matmul (without a mask).
            memory=eager.workspace_bytes,
            **common,
        ),
    ]
