"""How the report writes values: times, bytes, numbers and the short labels of cases and tasks.

The one place every report (terminal, page, charts, compare, export) takes its
text from, so a figure reads the same wherever it appears. It imports no other
report module.
"""

from __future__ import annotations

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


def seq_text(case: dict[str, Any], between: str = "×") -> str:
    """The sequence length, or ``queries×keys`` when they differ."""
    return f"{case['seq_q']}" if case["seq_q"] == case["seq_kv"] else f"{case['seq_q']}{between}{case['seq_kv']}"


def case_label(case: dict[str, Any]) -> str:
    """Short label, e.g. ``B2 H8/2 N512x1024 D64 bfloat16 causal fwd``.

    Mirrors ``Case.label`` without building a Case, which would import torch. A quality task's
    case (it has a ``task``) gets ``task_label``.
    """
    if "task" in case:
        return task_label(case)
    return f"{_heads(case)} N{seq_text(case, 'x')} D{case['head_dim']} {_tail(case)}"


def task_label(case: dict[str, Any]) -> str:
    """A quality task's short label, e.g. ``listops N128 d64 H4 L2 B32 400 steps`` (``TaskConfig.label``)."""
    return (f"{case['task']} N{case['seq_len']} d{case['d_model']} H{case['heads']} L{case['layers']} B{case['batch']} "
            f"{case['steps']} steps")


def family_label(case: dict[str, Any]) -> str:
    """The case without its sequence length: what one chart's lines share."""
    seq = "seq_q = seq_kv" if case["seq_q"] == case["seq_kv"] else f"seq_q {case['seq_q']}"
    return f"{_heads(case)} D{case['head_dim']} {_tail(case)}, {seq}"


def _heads(case: dict[str, Any]) -> str:
    heads = f"H{case['heads_q']}" if case["heads_q"] == case["heads_kv"] else f"H{case['heads_q']}/{case['heads_kv']}"
    return f"B{case['batch']} {heads}"


def _tail(case: dict[str, Any]) -> str:
    mask = case["mask"] if case["mask"] != "sliding_window" else f"window{case.get('window')}"
    scale = "" if case.get("scale") is None else f" scale{case['scale']:g}"
    return f"{case['dtype']} {mask}{scale} {case['pass']}"


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
