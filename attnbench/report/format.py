"""How the report writes values: times, bytes, numbers and the short labels of cases and tasks.

The one place every report (terminal, page, charts, compare, export) takes its
text from, so a figure reads the same wherever it appears. It imports no other
report module.
"""

from __future__ import annotations

import json
from typing import Any


def format_bytes(n: float | None) -> str:
    """Binary units with one decimal (``1.5 MiB``), whole bytes below 1 KiB; empty for None."""
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def format_time(ms: float) -> str:
    """Milliseconds as three significant digits in s, ms or µs."""
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    if ms >= 1:
        return f"{ms:.3g} ms"
    return f"{ms * 1000:.3g} µs"


def number_text(value: float | None, digits: int = 3) -> str:
    """Fixed decimals; empty for None."""
    return "" if value is None else f"{value:.{digits}f}"


def error_text(value: float | None) -> str:
    """A relative error, ``1.2e-06``; empty for None."""
    return "" if value is None else f"{value:.1e}"


def is_packed(case: dict[str, Any]) -> bool:
    """Whether a kernel case is a packed (ragged or paged) batch: it gives per-sequence lengths."""
    return case.get("seqlens_q") is not None


def seq_text(case: dict[str, Any], between: str = "×") -> str:
    """The sequence length, or ``queries×keys`` when they differ; a packed batch's shape (``batch_shape``)."""
    if is_packed(case):
        return batch_shape(case)
    return f"{case['seq_q']}" if case["seq_q"] == case["seq_kv"] else f"{case['seq_q']}{between}{case['seq_kv']}"


def batch_shape(case: dict[str, Any]) -> str:
    """A packed batch's shape, as ``Case.batch_shape`` writes it: ``ragged 37..4096, 8.2k tok`` for packed
    documents (equal query and key lengths, all different), else the batch spec (``2q2k_32q1s1k``); `` p16``
    for a paged cache. ``B8`` for a dense batch."""
    if not is_packed(case):
        return f"B{case['batch']}"
    lengths = list(zip(case["seqlens_q"], case["seqlens_kv"]))
    groups: list[list] = []
    for pair in lengths:
        if groups and groups[-1][1] == pair:
            groups[-1][0] += 1
        else:
            groups.append([1, pair])
    if any(lq != lkv for lq, lkv in lengths) or len(groups) < len(lengths):
        text = "_".join(f"{n}q{_tokens(lq)}" + ("" if lq == lkv else f"s{_tokens(lkv)}") for n, (lq, lkv) in groups)
    else:
        queries = case["seqlens_q"]
        text = f"ragged {min(queries)}..{max(queries)}, {_count(sum(queries))} tok"
    return text + (f" p{case['page_size']}" if case.get("page_size") is not None else "")


def _tokens(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _count(n: int) -> str:
    return str(n) if n < 1000 else f"{n / 1000:.1f}k"


def batch_keys(case: dict[str, Any]) -> int:
    """What a chart of a family places a case at: its key length, or a packed batch's keys over all sequences."""
    return sum(case["seqlens_kv"]) if is_packed(case) else case["seq_kv"]


def case_label(case: dict[str, Any]) -> str:
    """Short label, e.g. ``B2 H8/2 N512x1024 D64 bfloat16 causal fwd``; a packed batch shows its shape instead of
    B and N (``ragged 37..4096, 8.2k tok H32/8 D128 ...``).

    Mirrors ``Case.label`` without building a Case, which would import torch. A quality task's
    case (it has a ``task``) gets ``task_label``.
    """
    if "task" in case:
        return task_label(case)
    dims = f"D{case['head_dim']}" if case.get("head_dim_v") is None else f"D{case['head_dim']}/{case['head_dim_v']}"
    if is_packed(case):
        return f"{batch_shape(case)} {_heads(case)} {dims} {_tail(case)}"
    return f"B{case['batch']} {_heads(case)} N{seq_text(case, 'x')} {dims} {_tail(case)}"


def distinct_labels(cases: list[dict[str, Any]]) -> list[str]:
    """``case_label`` of each case, made unique: packed batches whose shapes read the same (same shortest and
    longest sequence and token count) get their lengths appended, so two cases never pass for one."""
    labels = [case_label(c) for c in cases]
    seen: dict[str, set[str]] = {}
    for label, c in zip(labels, cases):
        seen.setdefault(label, set()).add(json.dumps(c, sort_keys=True))
    return [f"{label} [{lengths_text(c)}]" if len(seen[label]) > 1 and is_packed(c) else label
            for label, c in zip(labels, cases)]


def lengths_text(case: dict[str, Any]) -> str:
    """A packed case's lengths in full: ``q 5,1,1 kv 40,17,3``, or ``5,1,1`` when queries and keys agree."""
    q, kv = (",".join(map(str, case[k])) for k in ("seqlens_q", "seqlens_kv"))
    return q if q == kv else f"q {q} kv {kv}"


def task_label(case: dict[str, Any]) -> str:
    """A quality task's short label, e.g. ``listops N128 d64 H4 L2 B32 400 steps`` (``TaskConfig.label``)."""
    return (f"{case['task']} N{case['seq_len']} d{case['d_model']} H{case['heads']} L{case['layers']} B{case['batch']} "
            f"{case['steps']} steps")


def family_label(case: dict[str, Any]) -> str:
    """The case without its sequence length: what one chart's lines share (of packed batches: without their
    lengths; their charts place each batch at its total keys)."""
    if is_packed(case):
        kind = f"paged p{case['page_size']}" if case.get("page_size") is not None else "ragged"
        cross = any(lq != lkv for lq, lkv in zip(case["seqlens_q"], case["seqlens_kv"]))
        return (f"{kind} B{case['batch']} {_heads(case)} D{case['head_dim']} {_tail(case)}, "
                f"{'seq_q ≠ seq_kv in some sequence' if cross else 'seq_q = seq_kv per sequence'}")
    seq = "seq_q = seq_kv" if case["seq_q"] == case["seq_kv"] else f"seq_q {case['seq_q']}"
    return f"B{case['batch']} {_heads(case)} D{case['head_dim']} {_tail(case)}, {seq}"


def _heads(case: dict[str, Any]) -> str:
    return f"H{case['heads_q']}" if case["heads_q"] == case["heads_kv"] else f"H{case['heads_q']}/{case['heads_kv']}"


def _tail(case: dict[str, Any]) -> str:
    mask = {"sliding_window": f"window{case.get('window')}",
            "block_sparse": f"block_sparse{case.get('block')}"}.get(case["mask"], case["mask"])
    scale = "" if case.get("scale") is None else f" scale{case['scale']:g}"
    mods = "".join((f" softcap{case['softcap']:g}" if case.get("softcap") is not None else "",
                    f" {case['bias']}" if case.get("bias") else "", " sinks" if case.get("sinks") else ""))
    return f"{case['dtype']} {mask}{mods}{scale} {case['pass']}"


def pair_notes(record) -> list[str]:
    """What happened around a pair's measurement that a reader of its numbers should know: torch settings it
    changed (put back after it), and a card that throttled while it was timed."""
    m = record.metrics
    notes = []
    if m.get("torch_state_changed"):
        notes.append("changed torch's global state (undone after it): " + ", ".join(map(str, m["torch_state_changed"])))
    if m.get("throttled"):
        notes.append("timed on a throttling card: " + ", ".join(map(str, m["throttled"])))
    return notes
