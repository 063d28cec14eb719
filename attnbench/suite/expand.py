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
from attnbench.suite.lengths import BOTH_SIDES, LENGTH_AXES, packed_lengths, show_lengths
from attnbench.suite.parts import Part

MAX_CASES = 10_000
"""Most cases one device may expand to; more is almost surely a typo in an axis."""

_FIELDS = ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "seqlens_q", "seqlens_kv", "page_size", "head_dim",
           "head_dim_v", "dtype", "mask", "window", "block", "scale", "softcap", "bias", "sinks", "pass_")
# Case fields from slowest- to fastest-varying in the product.
_ORDER = ("pass_", "page_size", "dtype", "mask", "window", "block", "scale", "softcap", "bias", "sinks", "head_dim",
          "head_dim_v", "heads_q", "heads_kv", "batch", "seqlens_q", "seqlens_kv", "seq_q", "seq_kv")
_MENTIONED = re.compile(r"\b(batch|heads_q|heads_kv|seq_q|seq_kv|seqlens_q|seqlens_kv|page_size|head_dim_v|head_dim|"
                        r"dtype|mask|window|block|scale|softcap|bias|sinks)\b")


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
    """Case field -> the axis that sets it; later layers win, field by field, except that the last layer
    that gives lengths gives all of them (seqlens_kv here and a lengths draw there would make no batch)."""
    fields: dict[str, Axis] = {}
    for layer in layers:
        if any(name in LENGTH_AXES for name in layer):
            fields = {f: axis for f, axis in fields.items() if axis.name not in LENGTH_AXES}
        for axis in layer.values():
            for f in sets(axis.name):
                fields[f] = axis
    return fields


def _expand(check: Checker, fields: dict[str, Axis], device: str, where: str,
            line: int) -> list[tuple[Case, str | None]]:
    """The product of the axes that set ``fields``, as cases (duplicates left in), each with its model preset."""
    if "seq_q" not in fields and "seqlens_kv" not in fields:
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
        if model is None:
            cases.append((_case(check, values, origin, device, where, line), None))
            continue
        # A model's case takes its variants and forms, except for the fields the suite sets itself.
        given = {f for f, (axis, _) in origin.items() if axis.name != "model" and axis.field != "built-in default"}
        for form in MODELS[model].case_fields(values, keep=given):
            cases.append((_case(check, form, origin, device, where, line), model))
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
    _derive_lengths(check, values, origin)
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
    if values.get("page_size") is not None and values["pass_"] != "fwd":
        (axis, line), (by, by_line) = origin["page_size"], origin["pass_"]
        raise check.error(line, axis.field, f"{axis.field}: page_size {values['page_size']} pages the KV cache, which "
                          f"serving reads in a forward pass only, but pass is {values['pass_']} (from {by.field}"
                          + (f", line {by_line}" if by_line else "") + "); use pass fwd or leave page_size out")
    return model


def _derive_lengths(check: Checker, values: dict[str, Any], origin: dict[str, tuple[Axis, int | None]]) -> None:
    """A packed batch's fields from the axes that gave its lengths (all from one mapping, see _resolve): seqlens_q
    and seqlens_kv, a missing side from the fixed seq_q or seq_kv, batch their number, seq_q and seq_kv the longest."""
    given = {f: origin[f] for f in ("seqlens_q", "seqlens_kv") if f in origin}
    if not given:
        return
    axis, line = next(iter(given.values()))
    batch_axis, batch_line = origin["batch"]
    batch_from = f"{batch_axis.field}" + (f", line {batch_line}" if batch_line else "")
    if batch_axis.name == "tokens":
        raise check.error(batch_line, batch_axis.field, f"{batch_axis.field}: tokens sets batch, but {axis.field} "
                          f"(line {line}) gives a packed batch, whose batch is its number of lengths; leave tokens out")
    if axis.name == "lengths" and batch_line is None:  # the built-in batch of 1 would make one document
        raise check.error(line, axis.field, f"{axis.field} draws batch lengths: give batch (the number of sequences) "
                          "beside it")
    q = kv = None
    for f, (a, _) in given.items():
        got = packed_lengths(a.name, values[f], values["batch"])
        q, kv = got[0] or q, got[1] or kv
    for side, other, fixed in (("seqlens_q", "seqlens_kv", "seq_q"), ("seqlens_kv", "seqlens_q", "seq_kv")):
        fixed_axis = origin.get(fixed, (None, None))[0]
        if (q if side == "seqlens_q" else kv) is not None:
            if fixed_axis is not None and fixed_axis.name not in LENGTH_AXES:
                raise check.error(origin[fixed][1], fixed_axis.field, f"{fixed_axis.field}: {axis.field} (line "
                                  f"{line}) gives the packed batch's lengths, and {fixed} is their longest; leave "
                                  f"{fixed_axis.name} out")
            continue
        if fixed_axis is None or fixed_axis.name in LENGTH_AXES:
            hint = "e.g. seq_q 1 for decode" if fixed == "seq_q" else "caches of one length"
            raise check.error(line, axis.field, f"{axis.field} gives the {other} of a packed batch; give the {side} "
                              f"too: {side}, or {fixed} for every sequence ({hint})")
    if q is None:
        q = (values["seq_q"],) * len(kv)
    if kv is None:
        kv = (values["seq_kv"],) * len(q)
    if len(q) != len(kv):
        raise check.error(line, axis.field, f"{axis.field}: seqlens_q has {len(q)} lengths and seqlens_kv {len(kv)}; "
                          "give one of each per sequence")
    if batch_axis.name == "batch" and batch_line is not None and values["batch"] != len(q):
        raise check.error(line, axis.field, f"{axis.field} makes a batch of {len(q)} sequences, but batch is "
                          f"{values['batch']} (from {batch_from}); leave batch out or make them agree")
    if values["mask"] != "none" and axis.name not in BOTH_SIDES:
        for i, (lq, lkv) in enumerate(zip(q, kv)):
            if lq > lkv:
                raise check.error(line, axis.field, f"{axis.field}: sequence {i} has {lq} queries over {lkv} keys, "
                                  f"which leaves query rows that see no key under mask {values['mask']} (masks are "
                                  "bottom-right aligned per sequence)")
    values.update(batch=len(q), seqlens_q=q, seqlens_kv=kv, seq_q=max(q), seq_kv=max(kv))
    for f in ("batch", "seqlens_q", "seqlens_kv", "seq_q", "seq_kv"):
        origin[f] = (axis, line)


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
        shown = " ".join(f"{k.rstrip('_')}=" + (show_lengths(values[k]) if k.startswith("seqlens") else str(values[k]))
                         for k in _FIELDS if values.get(k) not in (None, False))
        sources = ", ".join(f"{f} from {origin[f][0].field} (line {origin[f][1]})" for f in named)
        raise check.error(line, field, f"{field}: impossible case {shown}: {exc}"
                          + (f"; {sources}" if sources else "")) from None
