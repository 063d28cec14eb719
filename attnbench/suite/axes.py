"""Axes as a suite writes them: the case fields each sets, and their parsing with lines kept.

An axis is a key of ``matrix``, ``defaults`` or an ``include_cases`` entry.
Each keeps the line of every value, so an impossible case found at expansion
is blamed on the value that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attnbench.models import lookup
from attnbench.suite.checking import Checker
from attnbench.suite.lengths import LENGTH_AXES, length_items
from attnbench.suite.reading import Map, Seq
from attnbench.suite.schema import AXES

# The case fields each axis sets; unlisted axes set the field of their own name.
_SETS: dict[str, tuple[str, ...]] = {
    "tokens": ("batch",), "model_dim": ("heads_q",), "seq": ("seq_q", "seq_kv"), "pass": ("pass_",),
    "model": ("heads_q", "heads_kv", "head_dim"),
    # A packed batch's lengths give seq_q and seq_kv too (their longest), and batch (their number).
    "seqlens": ("seqlens_q", "seqlens_kv", "seq_q", "seq_kv"), "lengths": ("seqlens_q", "seqlens_kv", "seq_q", "seq_kv"),
    "batch_spec": ("seqlens_q", "seqlens_kv", "seq_q", "seq_kv"), "seqlens_q": ("seqlens_q", "seq_q"),
    "seqlens_kv": ("seqlens_kv", "seq_kv"),
}


def sets(axis: str) -> tuple[str, ...]:
    """The case fields ``axis`` sets."""
    return _SETS.get(axis, (axis,))


@dataclass(frozen=True, eq=False)
class Axis:
    """One axis as written: its spelling, its place for messages, and its (value, line) items."""

    name: str
    field: str
    values: tuple[tuple[Any, int | None], ...]


BUILTIN = {name: Axis(name, "built-in default", ((key.default, None),))
           for name, key in AXES.items() if key.default is not None}
"""The axes with a built-in default, the layer under every suite's."""


def parse_axes(check: Checker, m: Map, where: str, lists: bool) -> dict[str, Axis]:
    """The axes of one mapping; ``lists`` allows a list of values (matrix only), each with its line."""
    check.keys(m, AXES, where)
    axes: dict[str, Axis] = {}
    for name, value in m.items():
        field, line = f"{where}.{name}", m.lines[name]
        for other in axes:
            if set(sets(other)) & set(sets(name)):
                shared = sorted(set(sets(other)) & set(sets(name)))[0]
                if {other, name} <= set(LENGTH_AXES):
                    shared = "the packed batch's lengths"
                elif {other, name} & set(LENGTH_AXES):
                    shared += " (a packed batch's longest length)"
                raise check.error(line, field, f"{where} sets both {other} and {name}, which both set {shared}; "
                                  "use one")
        if name in LENGTH_AXES:
            axes[name] = Axis(name, field, length_items(check, name, value, field, line, lists))
            continue
        if isinstance(value, Seq):
            if not lists:
                raise check.error(line, field, f"{field} must be a single value, got a list; lists belong in matrix")
            if not value:
                raise check.error(line, field, f"{field} is an empty list; give at least one value")
            items = tuple(zip(value, value.lines))
        else:
            items = ((value, line),)
        key = AXES[name]
        checked = tuple((check.scalar(v, key, field, vl), vl) for v, vl in items)
        if name == "model":
            for v, vl in checked:
                try:
                    lookup(v)
                except ValueError as exc:
                    raise check.error(vl, field, f"{field}: {exc}") from None
        axes[name] = Axis(name, field, checked)
    return axes

