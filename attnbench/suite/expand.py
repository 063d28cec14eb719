"""From axes to cases: each case field takes the most specific axis that sets it, then the product.

The product is ordered with seq varying fastest and pass slowest; fields that
other axes imply (seq_kv, heads_kv, batch from tokens, heads_q from model_dim,
the heads of a model preset) are derived per case, and an impossible case is
blamed on the axis value that made it. Each case keeps the model presets that
made it: ``Case`` has no field for them, so the suite holds them beside it.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from attnbench.case import Case
from attnbench.models import MODELS
from attnbench.suite.axes import BUILTIN, Axis, sets
from attnbench.suite.checking import Checker
from attnbench.suite.parts import Part

MAX_CASES = 10_000
"""Most cases one device may expand to; more is almost surely a typo in an axis."""

_FIELDS = ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim", "dtype", "mask", "window", "block", "scale",
           "pass_")
# Case fields from slowest- to fastest-varying in the product.
_ORDER = ("pass_", "dtype", "mask", "window", "block", "scale", "head_dim", "heads_q", "heads_kv", "batch", "seq_q",
          "seq_kv")
_MENTIONED = re.compile(r"\b(batch|heads_q|heads_kv|seq_q|seq_kv|head_dim|dtype|mask|window|block|scale)\b")


def device_cases(check: Checker, top: Part, section: Part | None, device: str,
                 has_tasks: bool) -> dict[Case, tuple[str, ...]]:
    """The device's cases, deduplicated in order, each with the model presets that made it (often none);
    no case is fine beside tasks."""
    parts = [top] if section is None else [top, section]
    matrices = [p for p in parts if p.matrix is not None]
    include_cases = next((p.include_cases for p in reversed(parts) if p.include_cases is not None), None)
    if not matrices and not include_cases:
        if has_tasks:
            return {}
        raise check.error(parts[-1].line, "matrix", f"the suite defines no cases on {device}: add a matrix or "
                          "include_cases, or declare tasks")
    made: list[tuple[Case, str | None]] = []
    if matrices:
        layers = [BUILTIN]
        for p in parts:
            layers += [p.defaults, p.matrix or {}]
        blame = matrices[-1]
        made += _expand(check, _resolve(layers), device, blame.prefix + "matrix", blame.line)
    for where, line, axes in include_cases or ():
        fields = _resolve([BUILTIN, *(p.defaults for p in parts), axes])
        made += _expand(check, fields, device, where, line)
    cases: dict[Case, tuple[str, ...]] = {}
    for case, model in made:
        # Two presets of one shape (llama-3.1-8b and mistral-7b) make one case, which names both.
        known = cases.setdefault(case, ())
        if model is not None and model not in known:
            cases[case] = (*known, model)
    return cases


def _resolve(layers: Iterable[Mapping[str, Axis]]) -> dict[str, Axis]:
    """Case field -> the axis that sets it; later layers win, field by field."""
    fields: dict[str, Axis] = {}
    for layer in layers:
        for axis in layer.values():
            for f in sets(axis.name):
                fields[f] = axis
    return fields


def _expand(check: Checker, fields: dict[str, Axis], device: str, where: str,
            line: int) -> list[tuple[Case, str | None]]:
    """The product of the axes that set ``fields``, as cases (duplicates left in), each with its model preset."""
    if "seq_q" not in fields:
        raise check.error(line, where, f"{where} sets no sequence length: give seq (or seq_q) in matrix or defaults")
    sources: list[Axis] = []
    for f in _ORDER:
        if fields.get(f) is not None and all(fields[f] is not s for s in sources):
            sources.append(fields[f])
    count = math.prod(len(s.values) for s in sources)
    if count > MAX_CASES:
        raise check.error(line, where, f"{where} expands to {count} cases on {device}, more than {MAX_CASES}; "
                          "narrow the axes or split the suite")
    cases = []
    for combo in itertools.product(*(s.values for s in sources)):
        chosen = dict(zip(map(id, sources), combo))
        values: dict[str, Any] = {}
        origin: dict[str, tuple[Axis, int | None]] = {}
        for f, axis in fields.items():
            values[f], item_line = chosen[id(axis)]
            origin[f] = (axis, item_line)
        model = _derive(check, values, origin)
        cases.append((_case(check, values, origin, device, where, line), model))
    return cases


def _derive(check: Checker, values: dict[str, Any], origin: dict[str, tuple[Axis, int | None]]) -> str | None:
    """Fill the fields other axes imply: seq_kv, heads_kv, batch from tokens, heads_q from model_dim, a model's
    heads; the model preset whose case it is (the one that set all three head fields), if any."""
    # A more specific axis may replace some of a preset's fields: the others are still the preset's,
    # but the case is no longer the model's.
    from_model = [f for f in ("heads_q", "heads_kv", "head_dim") if f in origin and origin[f][0].name == "model"]
    model = values[from_model[0]] if len(from_model) == 3 else None
    for f in from_model:
        values[f] = getattr(MODELS[values[f]], f)
    values.setdefault("seq_kv", values["seq_q"])
    origin.setdefault("seq_kv", origin["seq_q"])
    if origin["batch"][0].name == "tokens":
        # One sequence at least: a sweep past `tokens` keeps going at batch 1.
        values["batch"] = max(1, values["batch"] // values["seq_kv"])
    axis, line = origin["heads_q"]
    if axis.name == "model_dim":
        model_dim, head_dim = values["heads_q"], values["head_dim"]
        if model_dim % head_dim:
            raise check.error(line, axis.field, f"{axis.field}: model_dim {model_dim} is not a multiple of "
                              f"head_dim {head_dim}")
        values["heads_q"] = model_dim // head_dim
    values.setdefault("heads_kv", values["heads_q"])
    origin.setdefault("heads_kv", origin["heads_q"])
    if values["mask"] != "sliding_window":
        values["window"] = None
    if values["mask"] != "block_sparse":
        values["block"] = None
    return model


def _case(check: Checker, values: dict[str, Any], origin: dict[str, tuple[Axis, int | None]], device: str,
          where: str, where_line: int) -> Case:
    """The case ``values`` describe, or a SuiteError at the axis value that makes it impossible."""
    try:
        return Case(**values, device=device)
    except ValueError as exc:
        # Blame the axis the message names first, preferring a matrix axis: that is where products go wrong.
        named = [f for f in dict.fromkeys(_MENTIONED.findall(str(exc))) if f in origin and origin[f][1]]
        blamed = next((f for f in named if "matrix" in origin[f][0].field), named[0] if named else None)
        line, field = (origin[blamed][1], origin[blamed][0].field) if blamed else (where_line, where)
        shown = " ".join(f"{k.rstrip('_')}={values[k]}" for k in _FIELDS if values.get(k) is not None)
        sources = ", ".join(f"{f} from {origin[f][0].field} (line {origin[f][1]})" for f in named)
        raise check.error(line, field, f"{field}: impossible case {shown}: {exc}"
                          + (f"; {sources}" if sources else "")) from None
