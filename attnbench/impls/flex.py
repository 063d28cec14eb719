"""``flex``: FlexAttention, with its block mask built and the kernel compiled in ``build``.

A ragged batch is one sequence of all its tokens (q viewed as ``(1, heads, total_q, head_dim)``) under a
document mask: a key is visible to a query of the same sequence where the case's mask, bottom-right aligned
in that sequence, lets it through, from per-token sequence ids and positions built in ``build``. A paged
cache is gathered through the block table into that packed layout inside the call (one ``index_select``
per pool), then attended the same way. (torch's experimental ``PagedAttention`` maps a block mask through a page
table it owns: the block mask would be rebuilt in every call, as each call comes with its own table.)
"""

from __future__ import annotations

import functools

import torch

from attnbench.case import Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation, Unsupported
from attnbench.masks import MASKS, mask_mod
from attnbench.measure.memory import CPU_FLASH_KV_SPLIT, CPU_FLASH_Q_SPLIT, fused_workspace_bytes
from attnbench.packing import call_keywords, gather_pages, token_positions


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    # One compiled function per process; torch.compile specialises it per shape and mask, and
    # every case is a new mask_mod closure, so each case recompiles. Past dynamo's default limit
    # of 8 recompiles per function it would silently run flex_attention unfused from then on.
    # (The pre-2.7 names, still aliases, keep torch 2.5 and 2.6 working.)
    config = torch._dynamo.config
    config.cache_size_limit = max(config.cache_size_limit, 4096)
    config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, 4096)
    return torch.compile(flex_attention, dynamic=False)


def build(case: Case):
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as exc:  # torch < 2.5
        raise Unsupported(f"FlexAttention is not in torch {torch.__version__}: {exc}") from None
    if case.needs_backward and case.device == "cpu":
        # Said up front: torch raises this only after compiling the forward.
        raise Unsupported(f"FlexAttention has no CPU backward (torch {torch.__version__})")
    flex_attention = _compiled_flex_attention()
    if case.packed:
        flex = _packed(case, flex_attention, create_block_mask)
    else:
        mod = mask_mod(case.mask, case.window, case.seq_q, case.seq_kv, block=case.block)
        block_mask = None
        if mod is not None:
            block_mask = create_block_mask(mod, None, None, case.seq_q, case.seq_kv, device=case.device)
        kwargs = {"block_mask": block_mask, "scale": case.scale, "enable_gqa": case.gqa}

        def flex(q, k, v):
            return flex_attention(q, k, v, **kwargs)

    _compile_now(case, flex)
    return flex


def document_mask_mod(case: Case):
    """``mask_mod(b, h, q_idx, kv_idx)`` over a packed batch's tokens: same sequence, and the case's mask
    between the positions within it, the query's shifted by ``seqlens_kv[i] - seqlens_q[i]`` (bottom-right)."""
    q_seq, q_pos = token_positions(case.seqlens_q, case.device)
    kv_seq, kv_pos = token_positions(case.seqlens_kv, case.device)
    shift = torch.tensor(case.seqlens_kv, device=case.device) - torch.tensor(case.seqlens_q, device=case.device)
    q_at = q_pos + shift[q_seq]
    # Positions already aligned: the dense mask of a square sequence applies them as they are.
    inner = mask_mod(case.mask, case.window, 1, 1, block=case.block)

    def document(b, h, q_idx, kv_idx):
        same = q_seq[q_idx] == kv_seq[kv_idx]
        return same if inner is None else same & inner(b, h, q_at[q_idx], kv_pos[kv_idx])
    return document


def _packed(case: Case, flex_attention, create_block_mask):
    """The ragged (or paged) callable: one FlexAttention call over the whole packed batch."""
    block_mask = create_block_mask(document_mask_mod(case), None, None, case.total_q, case.total_kv, device=case.device)
    kwargs = {"block_mask": block_mask, "scale": case.scale, "enable_gqa": case.gqa}
    kv_seq, kv_pos = token_positions(case.seqlens_kv, case.device) if case.paged else (None, None)

    def flex(q, k, v, *, cu_seqlens_q=None, cu_seqlens_kv=None, max_seqlen_q=None, max_seqlen_kv=None,
             block_table=None, seqlens_kv=None):
        if kv_seq is not None:
            k, v = (gather_pages(t, block_table, kv_seq, kv_pos) for t in (k, v))
        q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        return flex_attention(q, k, v, **kwargs).squeeze(0).transpose(0, 1)
    return flex


def _compile_now(case: Case, fn) -> None:
    """Trigger compilation on inputs of the case's shape, so no timed call pays for it."""
    gen = torch.Generator(device=case.device).manual_seed(0)
    q = torch.randn(case.q_shape, device=case.device, dtype=case.dtype, generator=gen)
    k, v = (torch.randn(case.kv_shape, device=case.device, dtype=case.dtype, generator=gen) for _ in range(2))
    keywords = call_keywords(case, 0)
    try:
        if case.needs_backward:
            for t in (q, k, v):
                t.requires_grad_(True)
            fn(q, k, v, **keywords).sum().backward()
        else:
            with torch.no_grad():
                fn(q, k, v, **keywords)
    except Exception as exc:
        # Dynamo skips a frame whose compiled call raised, from then on: without this reset every
        # later flex case in the process would silently run flex_attention's unfused fallback.
        from torch.nn.attention.flex_attention import flex_attention

        torch._dynamo.reset_code(flex_attention.__code__)
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        # Inductor raises its own error types for lowering failures: report them as the reason.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unsupported(f"FlexAttention could not compile this case: {type(exc).__name__}: {first_line}") from exc


def workspace_bytes(case: Case) -> int:
    """A fused kernel's (``fused_workspace_bytes``); a packed batch is one sequence of all its tokens to it.

    Packed, the compiled kernel also copies the strided k and v views into its own layout, and on the CPU
    holds two float32 score tiles a thread where the fused model counts a float32 and a half one (measured
    on torch 2.13). A paged cache adds the keys and values gathered from the pools.
    """
    if not case.packed:
        return fused_workspace_bytes(case)
    whole = Case(batch=1, heads_q=case.heads_q, heads_kv=case.heads_kv, seq_q=case.total_q, seq_kv=case.total_kv,
                 head_dim=case.head_dim, dtype=case.dtype, device=case.device, pass_=case.pass_)
    kv_bytes = case.total_kv * case.heads_kv * case.head_dim * case.dtype.itemsize
    total = fused_workspace_bytes(whole) + 2 * kv_bytes * (2 if case.paged else 1)
    if case.device == "cpu":
        tile = min(CPU_FLASH_Q_SPLIT, case.total_q) * min(CPU_FLASH_KV_SPLIT, case.total_kv)
        total += torch.get_num_threads() * tile * 2
    return total


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="flex",
            build=build,
            description=("torch FlexAttention (torch.compile'd), masks as block masks that skip empty tiles; ragged "
                         "batches as one sequence under a document mask, paged caches gathered through the block table "
                         "into it first."),
            masks=frozenset(MASKS),
            gqa=True,
            backward=True,
            ragged=True,
            paged=True,
            memory=workspace_bytes,
        )
    ]
