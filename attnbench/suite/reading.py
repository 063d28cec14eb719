"""Reading a suite file: YAML that remembers the line of every key, and the error that points at one.

The loader is safe: no tag constructs a Python object. ``SuiteError`` is the
one exception a bad suite raises, ``file:line: problem``; ``show`` and
``suggest`` phrase the values and corrections its messages hold.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

import yaml


class SuiteError(Exception):
    """A suite file that cannot be used; ``str()`` is ``file:line: problem``.

    ``line`` is 1-based (None when the file cannot be read); ``field`` is the
    dotted key path, e.g. ``cuda.matrix.dtype`` ('' for problems with the file itself).
    """

    def __init__(self, path: str, line: int | None, field: str, problem: str) -> None:
        self.path, self.line, self.field, self.problem = path, line, field, problem
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        # The default pickles only the message, which __init__ cannot take back (worker processes).
        return SuiteError, (self.path, self.line, self.field, self.problem)


class Map(dict):
    """A YAML mapping that knows its own line and the line of each key (1-based)."""

    line: int
    lines: dict[str, int]


class Seq(list):
    """A YAML sequence that knows the line of each item (1-based)."""

    lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader building Map and Seq, refusing duplicate and non-string keys and any unknown tag."""

    def _mapping(self, node: yaml.MappingNode) -> Map:
        self.flatten_mapping(node)  # resolves << merge keys
        out = Map()
        out.line, out.lines = node.start_mark.line + 1, {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"keys must be strings, found {key!r}", key_node.start_mark)
            if key in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first at line {out.lines[key]})", key_node.start_mark)
            out[key] = self.construct_object(value_node, deep=True)
            out.lines[key] = key_node.start_mark.line + 1
        return out

    def _sequence(self, node: yaml.SequenceNode) -> Seq:
        out = Seq(self.construct_object(child, deep=True) for child in node.value)
        out.lines = [child.start_mark.line + 1 for child in node.value]
        return out

    def _reject(self, node: yaml.Node):
        # Reached for every tag SafeLoader does not know, !!python/... included: nothing is constructed.
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise yaml.constructor.ConstructorError(
            None, None, f"tag '{tag}' is not allowed: a suite is plain data (mappings, lists, strings, numbers, "
            "booleans, null)", node.start_mark)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader._mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader._sequence)
_LineLoader.add_constructor(None, _LineLoader._reject)
# YAML 1.1 reads 1e-5 (no dot) as a string; suites write floors that way.
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(shown: str, data: bytes, top_keys: Iterable[str]) -> Map:
    """The file's top-level mapping; ``top_keys`` are named when the top level is something else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(shown, data[: exc.start].count(b"\n") + 1, "", "the file is not UTF-8 text") from None
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SuiteError(shown, 1, "", "the file is empty; a suite is a mapping with at least 'name' and "
                             "'matrix' or 'include_cases'")
        doc = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "unreadable YAML"
        if not isinstance(exc, yaml.constructor.ConstructorError):
            problem = "malformed YAML: " + problem
            if exc.context and exc.context_mark:
                problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise SuiteError(shown, mark.line + 1 if mark else None, "", problem) from None
    except yaml.YAMLError as exc:
        raise SuiteError(shown, None, "", f"malformed YAML: {exc}") from None
    finally:
        loader.dispose()
    if not isinstance(doc, Map):
        raise SuiteError(shown, node.start_mark.line + 1, "", f"the top level must be a mapping of suite keys "
                         f"({', '.join(top_keys)}), found {show(doc)}")
    return doc


def show(value: Any) -> str:
    """A value as a message shows it, with its YAML type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value!r}"


def suggest(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the option closest to a misspelt ``word``, or ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
