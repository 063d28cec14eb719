"""attnbench-example: one attention implementation, registered the way any third-party plugin does it.

``example.naive`` is attention written out in plain PyTorch: scores, mask,
softmax, weighted sum, with the arithmetic in float32 whatever the input
dtype. It shows the three things a plugin provides:

1. ``build(case)``: called once per case, outside any timed region. Do the
   per-case work here (masks, compilation, workspace) and return
   ``(q, k, v) -> out``; raise ``Unsupported(reason)`` for what you cannot run.
2. An ``Implementation`` that declares truthfully what the function accepts,
   so attnbench can skip other cases without building.
3. A ``@hookimpl`` function named ``attnbench_implementations``, found through
   the ``attnbench`` entry point in ``pyproject.toml``.

Optionally, ``memory``: what a call needs beyond its inputs and output, so a
run skips a case that would not fit its memory budget instead of crashing.
"""

from __future__ import annotations

import torch

from attnbench import Case, Implementation, Unsupported, hookimpl
from attnbench.measure.memory import materialized_workspace_bytes


def causal_mask(seq_q: int, seq_kv: int, device: str | torch.device) -> torch.Tensor:
    """True where query row i may see key j, bottom-right aligned.

    Query i sits at key position ``i + seq_kv - seq_q``, so with fewer queries
    than keys (decoding, chunked prefill) the last query sees every key.
    """
    query_pos = torch.arange(seq_kv - seq_q, seq_kv, device=device)[:, None]
    key_pos = torch.arange(seq_kv, device=device)[None, :]
    return key_pos <= query_pos


def build(case: Case):
    """Return ``(q, k, v) -> out`` for ``case``; q is (B, Hq, Sq, D), k and v are (B, Hkv, Skv, D)."""
    if case.mask not in ("none", "causal"):
        # Never reached through attnbench (the declared masks exclude it), but build is
        # public: say why, rather than compute something else.
        raise Unsupported(f"mask {case.mask} is not implemented by example.naive")
    scale = case.softmax_scale
    group = case.group_size  # query heads per key/value head (1 unless GQA/MQA)
    allowed = causal_mask(case.seq_q, case.seq_kv, case.device) if case.mask == "causal" else None

    def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if group > 1:
            # Query head h reads key/value head h // group: repeat each kv head `group` times in place.
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        scores = (q.float() @ k.float().transpose(-2, -1)) * scale
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return (weights @ v.float()).to(q.dtype)

    return naive


def workspace_bytes(case: Case) -> int:
    """Bytes a call holds beyond q, k, v and the output (and their gradients), which attnbench adds.

    ``naive`` materialises the scores in float32: attnbench's model of attention
    written out fits it (calibrated against ``attnbench.measure.memory.peak_bytes_cpu``).
    A model should be a close upper bound: too low lets a case that does not fit
    run out of memory, too high skips one that would have fit.
    """
    return materialized_workspace_bytes(case, itemsize=4)


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="example.naive",
            build=build,
            description="Plain PyTorch attention with float32 arithmetic (the attnbench-example plugin).",
            devices={"cpu", "cuda"},
            dtypes={torch.float32, torch.float16, torch.bfloat16},
            masks={"none", "causal"},  # no sliding_window: attnbench skips those cases without building
            gqa=True,  # accepts heads_kv < heads_q
            cross=True,  # accepts seq_q != seq_kv (causal bottom-right aligned)
            backward=True,  # plain autograd ops, so differentiable w.r.t. q, k and v
            memory=workspace_bytes,  # for the memory-budget check; without it attnbench assumes a fused kernel
        )
    ]
