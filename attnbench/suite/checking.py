"""Checking the values of a suite, one key at a time, against the schema.

Each check raises a ``SuiteError`` naming the file, the line and the dotted
field, and says what was expected and what was found.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from attnbench.case import FLOAT_DTYPES
from attnbench.quality.tasks import TASKS
from attnbench.suite.reading import Map, Seq, SuiteError, show, suggest
from attnbench.suite.schema import TOP_KEYS, Key
from attnbench.suite.settings import MemoryBudget

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNIT_NAMES = ("B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB")
_UNITS = {u.lower(): (1024 if "i" in u else 1000) ** i for u, i in zip(_UNIT_NAMES, (0, 1, 2, 3, 4, 1, 2, 3, 4))}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]+)\s*$")


class Checker:
    """Checks parts of one file, raising SuiteError that name it."""

    def __init__(self, shown: str) -> None:
        self.shown = shown

    def error(self, line: int | None, field: str, problem: str) -> SuiteError:
        """The error to raise for ``field`` at ``line`` of this file."""
        return SuiteError(self.shown, line, field, problem)

    def keys(self, m: Map, allowed: Mapping[str, Key], where: str) -> None:
        """Unknown keys and missing required keys are errors."""
        for k in m:
            if k not in allowed:
                place = f"in {where}" if where else "at the top level"
                raise self.error(m.lines[k], f"{where}.{k}" if where else k,
                                 f"unknown key '{k}' {place}{suggest(k, allowed)}; allowed: {', '.join(allowed)}")
        for k, key in allowed.items():
            if key.required and k not in m:
                raise self.error(m.line, k, f"missing required key '{k}'" + (f" in {where}" if where else ""))

    def scalar(self, value: Any, key: Key, field: str, line: int) -> Any:
        """``value`` checked against ``key``: numbers come back as float, the rest as they are."""
        if value is None and key.nullable:
            return None
        kind = key.type
        ok = {
            "string": lambda v: isinstance(v, str) and v != "",
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
            "boolean": lambda v: isinstance(v, bool),
        }[kind](value)
        if not ok:
            raise self.error(line, field, f"{field} must be {key.describe()}, got {show(value)}")
        if key.choices and value not in key.choices:
            raise self.error(line, field, f"{field} {value!r} is not one of {', '.join(key.choices)}"
                             + suggest(value, key.choices))
        if key.minimum is not None and (value < key.minimum or (key.exclusive and value == key.minimum)):
            raise self.error(line, field, f"{field} must be {key.describe()}, got {value:g}")
        return float(value) if kind == "number" else value

    def plain_name(self, value: Any, key: Key, field: str, line: int) -> str:
        """A name a suite or cluster uses as it is: letters, digits, '.', '_' and '-', led by a letter or digit."""
        name = self.scalar(value, key, field, line)
        if not _PLAIN_NAME.match(name):
            raise self.error(line, field, f"{field} {name!r} must be {key.allowed}, starting with a letter or digit")
        return name

    def mapping(self, parent: Map, k: str, field: str) -> Map:
        """``parent[k]``, which must be a mapping."""
        value = parent[k]
        if not isinstance(value, Map):
            raise self.error(parent.lines[k], field, f"{field} must be a mapping, got {show(value)}")
        return value

    def patterns(self, parent: Map, k: str, field: str) -> tuple[str, ...]:
        """An implementation glob or a list of them."""
        value = parent[k]
        items = [(value, parent.lines[k])] if isinstance(value, str) else None
        if isinstance(value, Seq):
            items = list(zip(value, value.lines))
        if items is None:
            raise self.error(parent.lines[k], field, f"{field} must be a glob or a list of globs, got {show(value)}")
        for item, line in items:
            if not isinstance(item, str) or not item:
                raise self.error(line, field, f"{field} entries must be implementation names or globs, got "
                                 f"{show(item)}")
        return tuple(item for item, _ in items)

    def task_names(self, parent: Map, k: str, field: str) -> tuple[str, ...]:
        """A task name or a non-empty list of them, duplicates dropped."""
        value = parent[k]
        items = [(value, parent.lines[k])] if isinstance(value, str) else None
        if isinstance(value, Seq) and value:
            items = list(zip(value, value.lines))
        if items is None:
            raise self.error(parent.lines[k], field, f"{field} must be a task name or a non-empty list of them "
                             f"({', '.join(TASKS)}), got {show(value)}")
        for item, line in items:
            if item not in TASKS:
                raise self.error(line, field, f"{field}: {show(item)} is not one of {', '.join(TASKS)}"
                                 + (suggest(item, TASKS) if isinstance(item, str) else ""))
        return tuple(dict.fromkeys(item for item, _ in items))

    def memory_budget(self, value: Any, field: str, line: int) -> MemoryBudget:
        """A fraction in (0, 1] of free memory, or a size with a unit such as '8GiB'."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if 0 < value <= 1:
                return MemoryBudget(fraction=float(value))
            raise self.error(line, field, f"{field} {value:g} is not a fraction in (0, 1]; write a size with a "
                             "unit, e.g. '8GiB'")
        match = _SIZE.match(value) if isinstance(value, str) else None
        if match is None or match[2].lower() not in _UNITS:
            raise self.error(line, field, f"{field} must be {TOP_KEYS['memory_budget'].allowed} (units "
                             f"{', '.join(_UNIT_NAMES)}), got {show(value)}")
        nbytes = int(float(match[1]) * _UNITS[match[2].lower()])
        if nbytes < 1:
            raise self.error(line, field, f"{field} must be at least 1 byte, got {value!r}")
        return MemoryBudget(nbytes=nbytes)

    def floors(self, m: Map, field: str) -> dict[str, float]:
        """Dtype names to absolute error floors >= 0."""
        key = Key("number", None, "", minimum=0)
        for k in m:
            if k not in FLOAT_DTYPES:  # fp8 outputs are bfloat16, judged by its floor
                raise self.error(m.lines[k], f"{field}.{k}", f"{field}: '{k}' is not one of "
                                 f"{', '.join(FLOAT_DTYPES)}{suggest(k, FLOAT_DTYPES)}")
        return {k: self.scalar(v, key, f"{field}.{k}", m.lines[k]) for k, v in m.items()}

