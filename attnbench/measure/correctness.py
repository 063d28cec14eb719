"""Correctness: seeded inputs, the float64 reference, error metrics and the pass rule.

The pass rule for exact implementations follows FlashAttention's tests: an
error may be at most ``factor`` times the error of plain attention computed in
the same dtype (matmul, softmax, matmul), plus a small floor. So bfloat16 is
judged as bfloat16, and an implementation that is no worse than the obvious
code passes. Non-finite values never pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from attnbench import packing, variants
from attnbench.case import FP8_OUTPUT_DTYPE, Case
from attnbench.masks import mask_tile

DEFAULT_FACTOR = 2.0
DEFAULT_REL_FLOOR = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 4e-3}
"""Relative-L2 floors: well above each dtype's rounding, far below any real defect."""
DEFAULT_ABS_FLOOR = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}
"""Max-abs error always allowed per dtype: about one unit in the last place at 1.0 for the
16-bit types, so an unusually exact baseline does not fail everyone else."""
CHUNK_ELEMENTS = 2**25
"""Bound of one chunk of the plain attention (256 MiB in float64): its scores, and the copy of k (or v) it
works on, each hold at most this many elements, so the reference fits in memory at any length."""


@dataclass(frozen=True)
class Inputs:
    """One trial's tensors: q, k, v, the upstream gradient for backward cases, and the keywords the
    callable is called with beside them (a packed case's offsets, a paged case's block table)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    grad_out: torch.Tensor | None = None
    keywords: dict = field(default_factory=dict)

    def replace(self, **changes) -> Inputs:
        """These inputs with some tensors replaced, the keywords kept."""
        return Inputs(**{"q": self.q, "k": self.k, "v": self.v, "grad_out": self.grad_out,
                         "keywords": self.keywords, **changes})

    @property
    def table(self) -> torch.Tensor | None:
        """A paged case's block table; None otherwise."""
        return self.keywords.get("block_table")


@dataclass
class Tolerance:
    """The pass rule's parameters."""

    factor: float = DEFAULT_FACTOR
    rel_floor: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_REL_FLOOR))
    abs_floor: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ABS_FLOOR))


def make_inputs(case: Case, seed: int) -> Inputs:
    """Standard-normal q, k, v (and dO for backward) from ``seed``: never zeros, fresh for every trial.

    A packed case's tensors are packed (a paged case's k and v are its page pools, the unused
    slots of the last pages random too), with the call keywords of ``packing.call_keywords``;
    variants add theirs (``variants.variant_keywords``), and fp8 inputs are the standard-normal
    draws quantised per (sequence, kv head), with their descales.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def draw(shape):
        # Drawn on the CPU so a seed means the same numbers on every device.
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=case.device, dtype=case.dtype)

    if case.fp8:
        raw = [torch.randn(shape, generator=gen, dtype=torch.float32).to(case.device)
               for shape in (case.q_shape, case.kv_shape, case.v_shape)]
        keywords = packing.call_keywords(case, seed)
        (q, k, v), descales = variants.quantised_inputs(case, *raw, keywords.get("block_table"))
        return Inputs(q, k, v, None, {**keywords, **variants.variant_keywords(case, seed), **descales})
    q, k, v = draw(case.q_shape), draw(case.kv_shape), draw(case.v_shape)
    grad_out = draw(case.out_shape) if case.needs_backward else None
    return Inputs(q, k, v, grad_out, {**packing.call_keywords(case, seed), **variants.variant_keywords(case, seed)})


def sample_rows(case: Case, max_rows: int | None, seed: int) -> torch.Tensor | None:
    """Query rows to check: all (None) up to ``max_rows``; beyond, a fresh random sample that keeps the first and last.

    A packed case is checked on every row: its reference is computed a sequence at a time.
    """
    if max_rows is None or case.seq_q <= max_rows or case.packed:
        return None
    gen = torch.Generator().manual_seed(seed + 7919)
    middle = torch.randperm(case.seq_q - 2, generator=gen)[: max_rows - 2] + 1
    return torch.cat([torch.tensor([0, case.seq_q - 1]), middle]).sort().values


@dataclass(frozen=True)
class Chunking:
    """How plain attention is cut: ``kv_heads`` of the batch x key/value heads at a time, ``group`` query heads
    of each of them at a time, and ``rows`` query rows. Keys are never cut."""

    kv_heads: int
    group: int
    rows: int


def chunking(case: Case, rows: int, dtype: torch.dtype, *, repeat: bool = False) -> Chunking:
    """The chunks of plain attention in ``dtype`` over ``rows`` query rows of ``case``.

    A chunk's scores, and any copy of k it makes, each hold at most ``CHUNK_ELEMENTS``; converted to a
    wider ``dtype``, a chunk's copies of k and v also take at most half the bytes of the case's k and v,
    so that the reference of a long decode needs less than its KV cache again. The forward takes a group's
    query heads one at a time, as plain attention's own matmuls, and copies nothing more; ``repeat``
    (gradients under GQA) takes them together, k and v repeated to each. Rows come first, all of them if
    they fit, then heads. A chunk holds at least one row of one head and one whole key/value head (keys
    are never cut), whatever that costs.
    """
    kv_heads = case.batch * case.heads_kv
    copies = max(1, CHUNK_ELEMENTS // (case.seq_kv * max(case.head_dim, case.value_dim)))
    converted = copies
    if dtype.itemsize > case.dtype.itemsize:
        converted = max(1, min(copies, kv_heads * case.dtype.itemsize // (2 * dtype.itemsize)))
    group = min(case.group_size, copies) if repeat else 1
    rows_per = min(max(1, rows), max(1, CHUNK_ELEMENTS // (group * case.seq_kv)))
    heads = max(1, CHUNK_ELEMENTS // (rows_per * case.seq_kv))
    if repeat:
        heads = min(heads, copies)
    group = min(group, heads)
    return Chunking(max(1, min(converted, kv_heads, heads // group)), group, rows_per)


def _spans(total: int, step: int):
    return ((start, min(start + step, total)) for start in range(0, total, step))


def _hidden(case: Case, rows: torch.Tensor | None, start: int, stop: int, device: torch.device) -> torch.Tensor | None:
    """Masked-out keys of checked rows ``start:stop`` (all query rows, or the sampled ``rows``): ``(rows, seq_kv)``.

    One tile of the mask per run of consecutive rows, never the whole ``seq_q x seq_kv`` mask.
    """
    if case.mask == "none":
        return None
    if rows is None:
        runs = [(start, stop)]
    else:
        runs = []
        for row in rows[start:stop].tolist():
            if runs and runs[-1][1] == row:
                runs[-1] = (runs[-1][0], row + 1)
            else:
                runs.append((row, row + 1))
    tiles = [mask_tile(case.mask, case.window, case.seq_q, case.seq_kv, run, (0, case.seq_kv), device, block=case.block)
             for run in runs]
    allowed = tiles[0] if len(tiles) == 1 else torch.cat(tiles)
    return allowed.logical_not_()


@dataclass(frozen=True)
class ScoreMods:
    """What a case's variants do to the scores, with the values the call received (``variants``)."""

    softcap: float | None = None
    slopes: torch.Tensor | None = None
    """ALiBi slopes per query head ``(heads_q,)``."""
    sinks: torch.Tensor | None = None
    """Sink logits per query head ``(heads_q,)``."""

    @classmethod
    def of(cls, case: Case, keywords: dict) -> ScoreMods | None:
        if not case.score_mods:
            return None
        return cls(case.softcap, keywords.get("alibi_slopes"), keywords.get("sinks"))


@dataclass(frozen=True)
class _ChunkMods:
    """``ScoreMods`` for one chunk of ``_attend``: per-head values ``(heads, 1, 1)`` and the ALiBi distance tile."""

    softcap: float | None
    slopes: torch.Tensor | None
    distance: torch.Tensor | None
    sinks: torch.Tensor | None


def _chunk_mods(case: Case, mods: ScoreMods | None, positions: torch.Tensor, heads: tuple[int, int],
                group: tuple[int, int], dtype: torch.dtype) -> _ChunkMods | None:
    """``mods`` for kv heads ``heads`` (of batch x kv heads), query heads ``group`` of each, at query ``positions``."""
    if mods is None:
        return None
    device = positions.device
    kv_heads = torch.arange(*heads, device=device) % case.heads_kv

    def per_head(values: torch.Tensor | None) -> torch.Tensor | None:
        if values is None:
            return None
        chosen = values.to(device=device, dtype=dtype).view(case.heads_kv, case.group_size)[kv_heads, group[0]:group[1]]
        return chosen.reshape(-1, 1, 1)
    distance = None
    if mods.slopes is not None:
        keys = torch.arange(case.seq_kv, device=device)
        distance = (positions[:, None] - keys[None, :]).abs().to(dtype)
    return _ChunkMods(mods.softcap, per_head(mods.slopes), distance, per_head(mods.sinks))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hidden: torch.Tensor | None, scale: float,
            mods: _ChunkMods | None = None) -> torch.Tensor:
    """Plain attention of ``q`` ``(h, g, rows, d)``: g query heads over each of the h heads of ``k`` ``(h, keys, d)``
    and ``v`` ``(h, keys, d_v)``.

    Matmul, softmax, matmul in q's dtype, in that order, one ``rows x d`` by ``d x keys`` product per
    query head as plain attention computes it. With g > 1 each query head gets its own copy of k and v,
    so that autograd sums their gradients over the group exactly as attention written with
    ``repeat_interleave`` does (same order, same rounding). Variants act on the scaled scores in
    this order: softcap, ALiBi bias, mask; sinks join the softmax's denominator.
    """
    h, g, n, d = q.shape
    if g > 1:
        k, v = k.repeat_interleave(g, dim=0), v.repeat_interleave(g, dim=0)
    scores = (q * scale).view(h * g, n, d) @ k.transpose(-2, -1)
    if mods is not None and mods.softcap is not None:
        scores = mods.softcap * torch.tanh(scores / mods.softcap)
    if mods is not None and mods.slopes is not None:
        scores = scores - mods.slopes * mods.distance
    if hidden is not None:
        scores.masked_fill_(hidden, float("-inf"))
    if mods is not None and mods.sinks is not None:
        top = torch.maximum(scores.amax(dim=-1, keepdim=True), mods.sinks)
        exps = torch.exp(scores - top)
        weights = exps / (exps.sum(dim=-1, keepdim=True) + torch.exp(mods.sinks - top))
    else:
        weights = torch.softmax(scores, dim=-1)
    del scores
    return (weights @ v).view(h, g, n, v.shape[-1])


def _grouped(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q as ``(batch x kv heads, group, seq_q, d)`` and k, v as ``(batch x kv heads, seq_kv, d)``: views, no copies."""
    heads = case.batch * case.heads_kv
    return (q.reshape(heads, case.group_size, case.seq_q, case.head_dim),
            k.reshape(heads, case.seq_kv, case.head_dim), v.reshape(heads, case.seq_kv, case.value_dim))


def _positions(case: Case, rows: torch.Tensor | None, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Key-axis positions of checked rows ``start:stop`` (bottom-right aligned)."""
    index = torch.arange(start, stop, device=device) if rows is None else rows[start:stop].to(device)
    return index + (case.seq_kv - case.seq_q)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, *, dtype: torch.dtype,
                     keywords: dict | None = None) -> torch.Tensor:
    """``math_attention`` of a packed case, one sequence at a time: ``out_shape`` in ``dtype``.

    Each sequence is a dense case of its own (masks bottom-right aligned within it); a paged
    case's keys and values are gathered from the pools through the block table in ``keywords``.
    """
    keywords = keywords or {}
    out = torch.empty(case.out_shape, dtype=dtype, device=q.device)
    start = 0
    for sequence, qi, ki, vi in packing.sequence_views(case, q, k, v, keywords.get("block_table")):
        result = math_attention(qi, ki, vi, sequence, dtype=dtype, keywords=keywords)
        out[start:start + sequence.seq_q] = packing.unpad(result)
        start += sequence.seq_q
    return out


def packed_attention_grads(inputs: Inputs, case: Case, *, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``math_attention_grads`` of a (ragged, never paged) packed case, one sequence at a time, packed."""
    device = inputs.q.device
    out = torch.empty(case.out_shape, dtype=dtype, device=device)
    dq = torch.empty(case.q_shape, dtype=dtype, device=device)
    dk = torch.empty(case.kv_shape, dtype=dtype, device=device)
    dv = torch.empty(case.v_shape, dtype=dtype, device=device)
    q_starts, kv_starts = packing.offsets(case.seqlens_q), packing.offsets(case.seqlens_kv)
    views = packing.sequence_views(case, inputs.q, inputs.k, inputs.v)
    for i, (sequence, qi, ki, vi) in enumerate(views):
        rows, keys = slice(q_starts[i], q_starts[i + 1]), slice(kv_starts[i], kv_starts[i + 1])
        go = inputs.grad_out[rows].transpose(0, 1).unsqueeze(0)
        results = math_attention_grads(Inputs(qi, ki, vi, go, inputs.keywords), sequence, dtype=dtype)
        out[rows], dq[rows], dk[keys], dv[keys] = (packing.unpad(t) for t in results)
    return out, dq, dk, dv


def math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, *, dtype: torch.dtype, rows: torch.Tensor | None = None,
    keywords: dict | None = None,
) -> torch.Tensor:
    """Plain attention in ``dtype`` (float64: the reference; the case dtype: the baseline for the pass rule).

    Computed over chunks of heads and query rows (``chunking``) so that memory stays bounded: k and v are
    converted to ``dtype`` a chunk of heads at a time, under GQA each query head reads its key/value head
    in place (never repeated), and the mask is built a tile of rows at a time. ``rows`` restricts it to
    those query rows. Each row's result is that of the unchunked computation. ``keywords``: the call's
    (ALiBi slopes, sinks) for the case's variants.
    """
    device = q.device
    row_index = None if rows is None else rows.to(device)
    n_rows = case.seq_q if rows is None else len(rows)
    plan = chunking(case, n_rows, dtype)
    mods = ScoreMods.of(case, keywords or {})
    qg, kg, vg = _grouped(case, q, k, v)
    out = torch.empty(qg.shape[0], case.group_size, n_rows, case.value_dim, dtype=dtype, device=device)
    for r0, r1 in _spans(n_rows, plan.rows):
        hidden = _hidden(case, row_index, r0, r1, device)
        positions = _positions(case, row_index, r0, r1, device)
        for h0, h1 in _spans(qg.shape[0], plan.kv_heads):
            kc, vc = kg[h0:h1].to(dtype), vg[h0:h1].to(dtype)
            for g0, g1 in _spans(case.group_size, plan.group):
                qc = qg[h0:h1, g0:g1]
                qc = qc[:, :, r0:r1] if row_index is None else qc[:, :, row_index[r0:r1]]
                chunk = _chunk_mods(case, mods, positions, (h0, h1), (g0, g1), dtype)
                out[h0:h1, g0:g1, r0:r1] = _attend(qc.to(dtype), kc, vc, hidden, case.softmax_scale, chunk)
            del kc, vc
    return out.view(case.batch, case.heads_q, n_rows, case.value_dim)


def reference_outputs(inputs: Inputs, case: Case, *, dtype: torch.dtype, rows: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, ...]:
    """What plain attention in ``dtype`` gives for the case's pass: the output (on ``rows``), and the
    gradients too when the case runs backward; per sequence for packed cases.

    fp8 inputs are dequantised first (``variants.dequantise``): exactly for the float64 reference, to
    bfloat16 for the same-dtype baseline (``dtype`` the fp8 one), which then computes in bfloat16.
    """
    if case.fp8:
        wide = torch.float64 if dtype == torch.float64 else FP8_OUTPUT_DTYPE
        kw = inputs.keywords
        real = inputs.replace(**{name: variants.dequantise(case, getattr(inputs, name), kw[f"{name}_descale"], name,
                                                           wide, inputs.table) for name in ("q", "k", "v")})
        return reference_outputs(real, replace(case, dtype=FP8_OUTPUT_DTYPE), dtype=wide, rows=rows)
    if case.needs_backward:
        if case.packed:
            return packed_attention_grads(inputs, case, dtype=dtype)
        return math_attention_grads(inputs, case, dtype=dtype)
    if case.packed:
        return (packed_attention(inputs.q, inputs.k, inputs.v, case, dtype=dtype, keywords=inputs.keywords),)
    return (math_attention(inputs.q, inputs.k, inputs.v, case, dtype=dtype, rows=rows, keywords=inputs.keywords),)


def math_attention_grads(inputs: Inputs, case: Case, *, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Output and (dQ, dK, dV) of plain attention in ``dtype``, by autograd over chunks of heads and rows.

    Each chunk's graph is freed before the next: dQ is written a chunk at a time, and dK and dV accumulate
    over chunks in at least float32, as plain attention's single matmul accumulates over every row, so that
    how the rows are cut does not add roundings of its own. Under GQA, k and v are repeated to a chunk's
    query heads so that their gradients are summed over the group exactly as those of plain attention
    with ``repeat_interleave`` are.
    """
    device = inputs.q.device
    plan = chunking(case, case.seq_q, dtype, repeat=case.gqa)
    mods = ScoreMods.of(case, inputs.keywords)
    qg, kg, vg = _grouped(case, inputs.q.detach(), inputs.k.detach(), inputs.v.detach())
    go = inputs.grad_out.reshape(vg.shape[0], case.group_size, case.seq_q, case.value_dim)
    out = torch.empty(go.shape, dtype=dtype, device=device)
    dq = torch.empty(qg.shape, dtype=dtype, device=device)
    accumulate = torch.promote_types(dtype, torch.float32)
    dk = torch.zeros(kg.shape, dtype=accumulate, device=device)
    dv = torch.zeros(vg.shape, dtype=accumulate, device=device)
    with torch.enable_grad():
        for r0, r1 in _spans(case.seq_q, plan.rows):
            hidden = _hidden(case, None, r0, r1, device)
            positions = _positions(case, None, r0, r1, device)
            for h0, h1 in _spans(qg.shape[0], plan.kv_heads):
                kc, vc = (t[h0:h1].to(dtype).requires_grad_(True) for t in (kg, vg))
                for g0, g1 in _spans(case.group_size, plan.group):
                    qc = qg[h0:h1, g0:g1, r0:r1].to(dtype).requires_grad_(True)
                    chunk = _chunk_mods(case, mods, positions, (h0, h1), (g0, g1), dtype)
                    oc = _attend(qc, kc, vc, hidden, case.softmax_scale, chunk)
                    grads = torch.autograd.grad(oc, (qc, kc, vc), go[h0:h1, g0:g1, r0:r1].to(dtype))
                    out[h0:h1, g0:g1, r0:r1] = oc.detach()
                    dq[h0:h1, g0:g1, r0:r1] = grads[0]
                    dk[h0:h1] += grads[1]
                    dv[h0:h1] += grads[2]
                    del oc, grads
    dk = dk.to(dtype).view(case.kv_shape)
    dv = dv.to(dtype).view(case.v_shape)
    return out.view(case.out_shape), dq.view(case.q_shape), dk, dv


def error_metrics(actual: torch.Tensor, expected: torch.Tensor) -> dict:
    """rel-L2 and max-abs error in float64; None for both when ``actual`` holds NaN or Inf."""
    actual = actual.detach().to(torch.float64)
    expected = expected.detach().to(device=actual.device, dtype=torch.float64)
    nonfinite = int((~torch.isfinite(actual)).sum())
    if nonfinite:
        return {"rel_err": None, "max_abs_err": None, "nonfinite": nonfinite}
    diff = actual - expected
    denom = expected.norm().item()
    rel = diff.norm().item() / denom if denom > 0 else math.inf
    return {"rel_err": rel, "max_abs_err": diff.abs().max().item(), "nonfinite": 0}


def judge(errors: dict, baseline: dict, dtype_name: str, tolerance: Tolerance) -> str | None:
    """None when ``errors`` pass against ``baseline`` (the same-dtype plain attention's), else the reason."""
    if errors["nonfinite"]:
        return f"{errors['nonfinite']} NaN/Inf values"
    rel_limit = tolerance.factor * baseline["rel_err"] + tolerance.rel_floor[dtype_name]
    abs_limit = tolerance.factor * baseline["max_abs_err"] + tolerance.abs_floor[dtype_name]
    if errors["rel_err"] > rel_limit:
        return f"rel-L2 error {errors['rel_err']:.3g} > limit {rel_limit:.3g} ({tolerance.factor:g} x plain {dtype_name} {baseline['rel_err']:.3g} + floor)"
    if errors["max_abs_err"] > abs_limit:
        return f"max-abs error {errors['max_abs_err']:.3g} > limit {abs_limit:.3g} ({tolerance.factor:g} x plain {dtype_name} {baseline['max_abs_err']:.3g} + floor)"
    return None


def output_problem(out: object, case: Case, like: torch.Tensor) -> str | None:
    """Why ``out`` is not an acceptable output tensor for the case, or None; ``like``: q as the implementation
    received it (its layout), whose shape the output has with ``value_dim`` last."""
    if not isinstance(out, torch.Tensor):
        return f"returned {type(out).__name__}, not a tensor"
    shape = (*like.shape[:-1], case.value_dim)
    if tuple(out.shape) != shape:
        return f"output shape {tuple(out.shape)} != expected {shape}"
    if out.dtype != case.out_dtype:
        return f"output dtype {out.dtype} != expected {case.out_dtype}" + (" (fp8 inputs give bfloat16)" if case.fp8 else "")
    if out.device.type != like.device.type:
        return f"output on {out.device}, inputs on {like.device}"
    return None
