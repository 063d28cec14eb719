"""``flex``: FlexAttention, with its block mask built and the kernel compiled in ``build``.

A ragged batch is one sequence of all its tokens (q viewed as ``(1, heads, total_q, head_dim)``) under a
document mask: a key is visible to a query of the same sequence where the case's mask, bottom-right aligned
in that sequence, lets it through, from per-token sequence ids and positions built in ``build``. A paged
cache is gathered through the block table into that packed layout inside the call (one ``index_select``
per pool), then attended the same way. (torch's experimental ``PagedAttention`` maps a block mask through a page
table it owns: the block mask would be rebuilt in every call, as each call comes with its own table.)

Variants (``attend``): softcap and ALiBi are a ``score_mod`` (FlexAttention hands it the scaled score, so
the softcap applies before the bias, as ``Case`` defines), ALiBi from each token's position within its
sequence; sinks rescale the output through the log-sum-exp, or on the CPU join as one more key; a value
head dim of its own is taken as it is.
"""

from __future__ import annotations

import functools
import math

import torch

from attnbench.case import SCORE_MODS, Case
from attnbench.hookspecs import hookimpl
from attnbench.implementation import Implementation, Unsupported
from attnbench.masks import MASKS, mask_mod
from attnbench.measure.memory import CPU_FLASH_KV_SPLIT, CPU_FLASH_Q_SPLIT, fused_workspace_bytes
from attnbench.packing import call_keywords, gather_pages, token_positions
from attnbench.variants import variant_keywords


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
    flex = attend(case, _compiled_flex_attention(), create_block_mask, sinks_by_lse=case.device != "cpu")
    _compile_now(case, flex)
    return flex


def attend(case: Case, flex_attention, create_block_mask, *, sinks_by_lse: bool):
    """The callable attending ``case`` with ``flex_attention``: dense, or a packed batch as one sequence.

    Softcap and ALiBi are one ``score_mod``; the slopes it reads are a buffer each call fills from its
    ``alibi_slopes=``, so the kernel compiled here serves every call. Sinks rescale the output by the
    returned log-sum-exp, ``out * sigmoid(lse - sink)``, where ``sinks_by_lse``; otherwise (torch 2.13's
    CPU lowering refuses ``return_lse``) each sink is one more key, zero key and value, that every query
    sees with the sink as its logit: k and v are copied with that row appended in each call.
    """
    sink_key = case.sinks and not sinks_by_lse
    if case.packed:
        q_len, kv_len = case.total_q, case.total_kv
        mod, q_at, kv_at = _document(case, extra_keys=int(sink_key))
    else:
        q_len, kv_len = case.seq_q, case.seq_kv
        mod = mask_mod(case.mask, case.window, case.seq_q, case.seq_kv, block=case.block)
        offset = case.seq_kv - case.seq_q

        def q_at(q_idx):
            return q_idx + offset

        def kv_at(kv_idx):
            return kv_idx
    if sink_key and mod is not None:
        mod = _or_key(mod, kv_len)
    block_mask = None
    if mod is not None:
        block_mask = create_block_mask(mod, None, None, q_len, kv_len + int(sink_key), device=case.device)
    kwargs = {"block_mask": block_mask, "scale": case.scale, "enable_gqa": case.gqa}
    slopes = torch.zeros(case.heads_q, device=case.device) if case.bias == "alibi" else None
    sink_logits = torch.zeros(case.heads_q, device=case.device) if sink_key else None
    score_mod = _score_mod(case.softcap, slopes, q_at, kv_at, sink_logits, kv_len)
    if score_mod is not None:
        kwargs["score_mod"] = score_mod
    by_lse = case.sinks and sinks_by_lse
    if by_lse:
        kwargs.update(_lse_request())
    zero_k = zero_v = None
    if sink_key:
        rows = (1, case.heads_kv) if case.packed else (case.batch, case.heads_kv, 1)
        zero_k, zero_v = (torch.zeros(*rows, dim, dtype=case.dtype, device=case.device)
                          for dim in (case.head_dim, case.value_dim))
    token_axis = 0 if case.packed else 2
    kv_seq, kv_pos = token_positions(case.seqlens_kv, case.device) if case.paged else (None, None)

    def flex(q, k, v, *, alibi_slopes=None, sinks=None, block_table=None, **packing_keywords):
        if slopes is not None:
            slopes.copy_(alibi_slopes)
        if kv_seq is not None:
            k, v = (gather_pages(t, block_table, kv_seq, kv_pos) for t in (k, v))
        if sink_logits is not None:
            sink_logits.copy_(sinks)
            k, v = torch.cat([k, zero_k], token_axis), torch.cat([v, zero_v], token_axis)
        if case.packed:
            q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out = flex_attention(q, k, v, **kwargs)
        if by_lse:
            out, aux = out
            lse = getattr(aux, "lse", aux)  # AuxOutput, or the tensor return_lse gives
            out = out * torch.sigmoid(lse - sinks[:, None]).unsqueeze(-1).to(out.dtype)
        return out.squeeze(0).transpose(0, 1) if case.packed else out

    return flex


def _score_mod(softcap: float | None, slopes: torch.Tensor | None, q_at, kv_at, sink_logits: torch.Tensor | None,
               sink_key: int):
    """FlexAttention ``score_mod`` for the case's score variants (None for none), in ``Case``'s order: the
    scaled score softcapped, then ALiBi-biased by its positions; key ``sink_key`` scores its head's sink."""
    if softcap is None and slopes is None and sink_logits is None:
        return None

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap is not None:
            score = softcap * torch.tanh(score / softcap)
        if slopes is not None:
            score = score - slopes[h] * (q_at(q_idx) - kv_at(kv_idx)).abs()
        if sink_logits is not None:
            score = torch.where(kv_idx == sink_key, sink_logits[h], score)
        return score
    return score_mod


def _or_key(mod, key: int):
    """``mod`` with key ``key`` (the sink) visible to every query."""
    def with_sink(b, h, q_idx, kv_idx):
        return (kv_idx == key) | mod(b, h, q_idx, kv_idx)
    return with_sink


def _lse_request() -> dict:
    """The keyword asking flex_attention for the (natural) log-sum-exp: ``return_aux`` since torch 2.9."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return {"return_lse": True}
    return {"return_aux": AuxRequest(lse=True)}


def document_mask_mod(case: Case):
    """``mask_mod(b, h, q_idx, kv_idx)`` over a packed batch's tokens: same sequence, and the case's mask
    between the positions within it, the query's shifted by ``seqlens_kv[i] - seqlens_q[i]`` (bottom-right)."""
    return _document(case)[0]


def _document(case: Case, extra_keys: int = 0):
    """``document_mask_mod``, and each token's position (a query's bottom-right aligned in its sequence) from
    its index; ``extra_keys`` keys past the last belong to no sequence (so indexing them stays in bounds)."""
    q_seq, q_pos = token_positions(case.seqlens_q, case.device)
    kv_seq, kv_pos = token_positions(case.seqlens_kv, case.device)
    if extra_keys:
        kv_seq = torch.cat([kv_seq, kv_seq.new_full((extra_keys,), -1)])
        kv_pos = torch.cat([kv_pos, kv_pos.new_zeros(extra_keys)])
    shift = torch.tensor(case.seqlens_kv, device=case.device) - torch.tensor(case.seqlens_q, device=case.device)
    q_at = q_pos + shift[q_seq]
    # Positions already aligned: the dense mask of a square sequence applies them as they are.
    inner = mask_mod(case.mask, case.window, 1, 1, block=case.block)

    def document(b, h, q_idx, kv_idx):
        same = q_seq[q_idx] == kv_seq[kv_idx]
        return same if inner is None else same & inner(b, h, q_at[q_idx], kv_pos[kv_idx])
    return document, (lambda q_idx: q_at[q_idx]), (lambda kv_idx: kv_pos[kv_idx])


def _compile_now(case: Case, fn) -> None:
    """Trigger compilation on inputs of the case's shape, so no timed call pays for it."""
    gen = torch.Generator(device=case.device).manual_seed(0)
    q = torch.randn(case.q_shape, device=case.device, dtype=case.dtype, generator=gen)
    k, v = (torch.randn(shape, device=case.device, dtype=case.dtype, generator=gen) for shape in (case.kv_shape, case.v_shape))
    keywords = {**call_keywords(case, 0), **variant_keywords(case, 0)}
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
    on torch 2.13). A paged cache adds the keys and values gathered from the pools. Softcap and ALiBi are
    computed in the kernel's tiles: nothing more. Sinks add, as an extra key, the copies of k and v that
    carry it; through the log-sum-exp, the log-sum-exp, its sigmoid and the rescaled output.
    """
    elem = case.dtype.itemsize
    kv_bytes = (math.prod(case.kv_shape) + math.prod(case.v_shape)) * elem
    if case.packed:
        whole = Case(batch=1, heads_q=case.heads_q, heads_kv=case.heads_kv, seq_q=case.total_q, seq_kv=case.total_kv,
                     head_dim=case.head_dim, head_dim_v=case.head_dim_v, dtype=case.dtype, device=case.device,
                     pass_=case.pass_)
        kv_bytes = case.total_kv * case.heads_kv * (case.head_dim + case.value_dim) * elem
        total = fused_workspace_bytes(whole) + kv_bytes * (2 if case.paged else 1)
        if case.device == "cpu":
            tile = min(CPU_FLASH_Q_SPLIT, case.total_q) * min(CPU_FLASH_KV_SPLIT, case.total_kv)
            total += torch.get_num_threads() * tile * 2
    else:
        total = fused_workspace_bytes(case)
    if case.sinks and case.device == "cpu":
        # The copies with the sink's row appended, and (packed) the kernel's own copies of those.
        total += kv_bytes * (2 if case.packed else 1)
    elif case.sinks:
        rows = case.batch * case.heads_q * case.seq_q if not case.packed else case.total_q * case.heads_q
        total += rows * 4 * 2 + math.prod(case.out_shape) * elem * (2 if case.needs_backward else 1)
    return total


@hookimpl
def attnbench_implementations() -> list[Implementation]:
    return [
        Implementation(
            name="flex",
            build=build,
            description=("torch FlexAttention (torch.compile'd), masks as block masks that skip empty tiles; ragged "
                         "batches as one sequence under a document mask, paged caches gathered through the block table "
                         "into it first. Softcap and ALiBi as a score_mod; sinks through the log-sum-exp "
                         "(out x sigmoid(lse - sink)), on the CPU, whose compiled kernel returns none, as one more key."),
            masks=frozenset(MASKS),
            gqa=True,
            backward=True,
            ragged=True,
            paged=True,
            head_dim_v=True,
            score_mods=frozenset(SCORE_MODS),
            memory=workspace_bytes,
        )
    ]
