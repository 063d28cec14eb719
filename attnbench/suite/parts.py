"""What the suite's top level and each device section set, and the settings they layer into.

A device section overrides the top level key by key, so each is parsed into a
``Part`` of its own and the parts are layered per device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attnbench.implementation import NAME_PATTERN
from attnbench.suite.axes import Axis, parse_axes
from attnbench.suite.checking import Checker
from attnbench.suite.reading import Map, Seq, show
from attnbench.suite.schema import (
    CORRECTNESS_KEYS,
    HARDWARE_KEYS,
    IMPLEMENTATION_KEYS,
    TASK_KEYS,
    TIMING_KEYS,
    TOP_KEYS,
    Key,
)
from attnbench.suite.settings import DEFAULT_FLOORS, Correctness, Hardware, MemoryBudget, Settings, Timing


@dataclass
class Part:
    """What the suite's top level, or one device section, sets; None or absent means not set."""

    line: int
    prefix: str
    defaults: dict[str, Axis]
    matrix: dict[str, Axis] | None
    include_cases: list[tuple[str, int, dict[str, Axis]]] | None
    options: dict[str, Any]
    correctness: dict[str, Any]
    floors: dict[str, float]
    timing: dict[str, Any]
    tasks: dict[str, tuple[Any, int]] | None = None
    """Task keys given here, each with its line."""


def parse_part(check: Checker, m: Map, prefix: str, allowed: Mapping[str, Key], line: int) -> Part:
    """The suite's top level (prefix '') or a device section (prefix 'cuda.'), checked key by key."""
    check.keys(m, allowed, prefix.rstrip("."))
    part = Part(line=line, prefix=prefix, defaults={}, matrix=None, include_cases=None,
                options={}, correctness={}, floors={}, timing={})
    if "defaults" in m:
        part.defaults = parse_axes(check, check.mapping(m, "defaults", prefix + "defaults"), prefix + "defaults",
                                   lists=False)
    if "matrix" in m:
        part.matrix = parse_axes(check, check.mapping(m, "matrix", prefix + "matrix"), prefix + "matrix",
                                 lists=True)
        part.line = m.lines["matrix"]
    if "include_cases" in m:
        field, value = prefix + "include_cases", m["include_cases"]
        if not isinstance(value, Seq):
            raise check.error(m.lines["include_cases"], field, f"{field} must be a list of mappings of axis "
                              f"values, got {show(value)}")
        part.include_cases = []
        for i, (entry, entry_line) in enumerate(zip(value, value.lines)):
            where = f"{field}[{i}]"
            if not isinstance(entry, Map):
                raise check.error(entry_line, where, f"{where} must be a mapping of axis values, got {show(entry)}")
            part.include_cases.append((where, entry_line, parse_axes(check, entry, where, lists=False)))
    if "implementations" in m:
        impls = check.mapping(m, "implementations", prefix + "implementations")
        check.keys(impls, IMPLEMENTATION_KEYS, prefix + "implementations")
        for k in impls:
            part.options[k] = check.patterns(impls, k, f"{prefix}implementations.{k}")
    if "baseline" in m:
        field, at = prefix + "baseline", m.lines["baseline"]
        baseline = check.scalar(m["baseline"], TOP_KEYS["baseline"], field, at)
        if not NAME_PATTERN.match(baseline):
            raise check.error(at, field, f"{field} {baseline!r} is not an implementation name (lower-case "
                              "dotted words, e.g. 'sdpa' or 'sdpa.flash')")
        part.options["baseline"] = baseline
    if "timeout_s" in m:
        part.options["timeout_s"] = check.scalar(m["timeout_s"], TOP_KEYS["timeout_s"], prefix + "timeout_s",
                                                 m.lines["timeout_s"])
    if "memory_budget" in m:
        part.options["memory_budget"] = check.memory_budget(m["memory_budget"], prefix + "memory_budget",
                                                            m.lines["memory_budget"])
    for name, keys, target in (("correctness", CORRECTNESS_KEYS, part.correctness),
                               ("timing", TIMING_KEYS, part.timing)):
        if name in m:
            sub = check.mapping(m, name, prefix + name)
            check.keys(sub, keys, prefix + name)
            for k, v in sub.items():
                field = f"{prefix}{name}.{k}"
                if k == "floors":
                    part.floors = check.floors(check.mapping(sub, k, field), field)
                else:
                    target[k] = check.scalar(v, keys[k], field, sub.lines[k])
    if "tasks" in m:
        where = prefix + "tasks"
        sub = check.mapping(m, "tasks", where)
        check.keys(sub, TASK_KEYS, where)
        part.tasks = {k: (check.task_names(sub, k, f"{where}.{k}") if k == "names" else
                          check.scalar(v, TASK_KEYS[k], f"{where}.{k}", sub.lines[k]), sub.lines[k])
                      for k, v in sub.items()}
    return part


def parse_hardware(check: Checker, m: Map) -> Hardware:
    """The ``hardware`` section: names a cluster can take as they are, a positive GPU count."""
    check.keys(m, HARDWARE_KEYS, "hardware")
    values = {}
    for k, v in m.items():
        field, key = f"hardware.{k}", HARDWARE_KEYS[k]
        check_value = check.plain_name if key.type == "string" else check.scalar
        values[k] = check_value(v, key, field, m.lines[k])
    return Hardware(**values)


def layer_settings(device: str, parts: list[Part]) -> Settings:
    """The settings on ``device``: the schema's defaults, then each part's keys in order, later ones winning."""
    options = {k: key.default for k, key in IMPLEMENTATION_KEYS.items()}
    options |= {k: TOP_KEYS[k].default for k in ("baseline", "timeout_s")}
    options["memory_budget"] = MemoryBudget(fraction=TOP_KEYS["memory_budget"].default)
    correctness: dict[str, Any] = {}
    floors = dict(DEFAULT_FLOORS)
    timing: dict[str, Any] = {}
    for part in parts:
        options |= part.options
        correctness |= part.correctness
        floors |= part.floors
        timing |= part.timing
    return Settings(device=device, correctness=Correctness(**correctness, floors=floors), timing=Timing(**timing),
                    **options)
