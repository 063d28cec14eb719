"""Attention variants current models use: ALiBi slopes, attention sinks, fp8 quantisation with descales.

The harness draws what a variant's callable receives beside q, k and v, and the
reference reads the same values: ``alibi_slopes=`` (float32 ``(heads_q,)``, the
standard geometric slopes), ``sinks=`` (float32 ``(heads_q,)``, drawn from the
trial's seed) and, for fp8 inputs, ``q_descale=``, ``k_descale=``, ``v_descale=``
(float32 ``(batch, heads_kv)``: a tensor's real value is its fp8 value times the
descale of its sequence and kv head), as FlashAttention-2 and -3 take them.
Softcapping needs nothing beyond ``Case.softcap``, which ``build`` sees.
"""

from __future__ import annotations

import math

import torch

from attnbench.case import Case


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes (Press et al.): ``2^(-8 i / n)`` for ``n`` a power of two; otherwise those of the
    power of two below, then every other slope of the power of two above (as the paper's code does)."""
    def powers(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    below = 2 ** int(math.floor(math.log2(heads)))
    slopes = powers(below)
    if below < heads:
        slopes += powers(2 * below)[0::2][: heads - below]
    return torch.tensor(slopes, dtype=torch.float32)


def draw_sinks(case: Case, seed: int) -> torch.Tensor:
    """One sink logit per query head, around ``ln(seq_kv)`` so that a sink takes a share of each row's
    softmax comparable to its keys' (standard-normal inputs give scores of about unit size): an
    implementation that drops the sinks is then off by a large factor, never within rounding."""
    gen = torch.Generator().manual_seed(seed + 15485863)
    return math.log(case.seq_kv) + torch.randn(case.heads_q, generator=gen, dtype=torch.float32)


def variant_keywords(case: Case, seed: int) -> dict:
    """The ALiBi slopes and sinks the case's callable is called with (empty when it has neither)."""
    keywords = {}
    if case.bias == "alibi":
        keywords["alibi_slopes"] = alibi_slopes(case.heads_q).to(case.device)
    if case.sinks:
        keywords["sinks"] = draw_sinks(case, seed).to(case.device)
    return keywords


# --- fp8 -----------------------------------------------------------------------


def _units(case: Case, t: torch.Tensor, role: str, table: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` viewed as ``(units, heads_kv, -1)`` and the sequence each unit belongs to.

    A unit is a sequence (dense), a token (packed) or a page (paged pools); q's query heads are grouped
    under their kv head (query head ``h`` reads kv head ``h // group``).
    """
    device = t.device
    if not case.packed:
        return t.reshape(case.batch, case.heads_kv, -1), torch.arange(case.batch, device=device)
    if role != "q" and case.paged:
        owner = torch.empty(case.num_pages, dtype=torch.long)
        for i, pages in enumerate(case.pages_per_sequence):
            owner[table[i, :pages].long().cpu()] = i
        return t.permute(0, 2, 1, 3).reshape(case.num_pages, case.heads_kv, -1), owner.to(device)
    lengths = case.seqlens_q if role == "q" else case.seqlens_kv
    owner = torch.repeat_interleave(torch.arange(case.batch), torch.tensor(lengths)).to(device)
    return t.reshape(t.shape[0], case.heads_kv, -1), owner


def quantise(case: Case, t: torch.Tensor, role: str, table: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` (float32, the case's shape for ``role`` q, k or v) in the case's fp8 dtype, and its descale
    ``(batch, heads_kv)``: each (sequence, kv head)'s largest magnitude maps to the dtype's largest value."""
    units, owner = _units(case, t, role, table)
    largest = units.abs().amax(dim=-1).float()
    amax = torch.zeros(case.batch, case.heads_kv, dtype=torch.float32, device=t.device)
    amax.scatter_reduce_(0, owner[:, None].expand_as(largest), largest, "amax")
    limit = torch.finfo(case.dtype).max
    descale = torch.where(amax > 0, amax / limit, torch.ones_like(amax))
    scaled = (units / descale[owner][:, :, None]).clamp_(-limit, limit).to(case.dtype)
    return _from_units(case, scaled, t.shape, role), descale


def dequantise(case: Case, t: torch.Tensor, descale: torch.Tensor, role: str, dtype: torch.dtype,
               table: torch.Tensor | None = None) -> torch.Tensor:
    """The real values of fp8 ``t``, in ``dtype``: each element times its (sequence, kv head)'s descale
    (exact in float64; rounded once in a narrower ``dtype``)."""
    units, owner = _units(case, t, role, table)
    wide = units.to(torch.float64) * descale.to(torch.float64)[owner][:, :, None]
    return _from_units(case, wide.to(dtype), t.shape, role)


def _from_units(case: Case, units: torch.Tensor, shape: torch.Size, role: str) -> torch.Tensor:
    """``_units``'s view undone: back to ``shape`` (a paged pool's pages un-permuted, contiguous)."""
    if role != "q" and case.paged:
        return units.reshape(case.num_pages, case.heads_kv, case.page_size, -1).permute(0, 2, 1, 3).contiguous()
    return units.reshape(shape)


def quantised_inputs(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor | None
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], dict]:
    """float32 q, k, v as the fp8 case's inputs, and the ``q_descale``/``k_descale``/``v_descale`` keywords."""
    out, keywords = [], {}
    for name, t in (("q", q), ("k", k), ("v", v)):
        quantised, descale = quantise(case, t, name, table)
        out.append(quantised)
        keywords[f"{name}_descale"] = descale
    return tuple(out), keywords


def dequantised_inputs(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keywords: dict,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A dense fp8 case's q, k, v in ``dtype``, from the call's descales (what an implementation that has no
    fp8 kernel does first)."""
    table = keywords.get("block_table")
    return tuple(dequantise(case, t, keywords[f"{name}_descale"], name, dtype, table)
                 for name, t in (("q", q), ("k", k), ("v", v)))


def alibi_distance(case: Case, dtype: torch.dtype) -> torch.Tensor:
    """``|pos_q - pos_k|`` for a dense case, ``(seq_q, seq_kv)`` in ``dtype``, positions bottom-right aligned."""
    rows = torch.arange(case.seq_q, device=case.device) + (case.seq_kv - case.seq_q)
    keys = torch.arange(case.seq_kv, device=case.device)
    return (rows[:, None] - keys[None, :]).abs().to(dtype)


def modified_scores(scores: torch.Tensor, case: Case, distance: torch.Tensor | None,
                    alibi_slopes: torch.Tensor | None) -> torch.Tensor:
    """Scaled scores ``(batch, heads_q, seq_q, seq_kv)`` softcapped and ALiBi-biased as the case asks (the
    same tensor when it asks neither): the order of ``Case``'s definition, before the mask."""
    if case.softcap is not None:
        scores = case.softcap * torch.tanh(scores / case.softcap)
    if case.bias == "alibi":
        scores = scores - alibi_slopes.to(scores.dtype)[:, None, None] * distance
    return scores


def softmax_with_sinks(scores: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim of ``(batch, heads_q, rows, keys)`` scores; with ``sinks`` ``(heads_q,)``, each
    head's sink logit joins the denominator (a column of its own, dropped afterwards), as gpt-oss computes it."""
    if sinks is None:
        return torch.softmax(scores, dim=-1)
    column = sinks.to(scores.dtype)[None, :, None, None].expand(*scores.shape[:-1], 1)
    return torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)[..., :-1]
