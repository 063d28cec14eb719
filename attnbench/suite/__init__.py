"""Suites: declarative YAML files that say which cases to run, with what, and how.

A suite is plain data. It is loaded with a safe loader that remembers the line
of every key, so each mistake is reported as ``file:line: field ...`` and no
tag can construct a Python object. ``SCHEMA`` documents every key and drives
validation; ``schema_markdown()`` renders it as the reference for the docs.

Cases come from the product of the ``matrix`` axes over ``defaults``, plus
``include_cases``. A ``cpu:`` or ``cuda:`` section overrides the suite for that
device, so one file serves a laptop and an H100. Both sections are expanded at
load time, so a mistake in the cuda section shows up on a CPU-only machine.
``seqlens``, ``lengths`` or ``batch_spec`` make a case a packed (ragged) batch and
``page_size`` pages its KV cache. ``tasks`` declares quality tasks (``attnbench.quality``),
besides or instead of cases.

The modules, each using only those before it: ``reading`` (YAML with lines,
``SuiteError``), ``settings`` (what a run uses), ``schema`` (every key),
``checking`` (values against keys), ``lengths`` (packed batches' lengths), ``axes``,
``parts`` (top level and device sections, layered into settings), ``expand`` (cases), ``tasks``, ``load``.
"""

from attnbench.suite.expand import MAX_CASES
from attnbench.suite.load import Suite, load_suite
from attnbench.suite.reading import SuiteError
from attnbench.suite.schema import (
    AXES,
    CORRECTNESS_KEYS,
    HARDWARE_KEYS,
    IMPLEMENTATION_KEYS,
    LENGTHS_KEYS,
    SCHEMA,
    SECTION_KEYS,
    TASK_KEYS,
    TIMING_KEYS,
    TOP_KEYS,
    Key,
    schema_markdown,
)
from attnbench.suite.settings import DEFAULT_FLOORS, Correctness, Hardware, MemoryBudget, Settings, Timing

__all__ = [
    "AXES", "CORRECTNESS_KEYS", "DEFAULT_FLOORS", "HARDWARE_KEYS", "IMPLEMENTATION_KEYS", "LENGTHS_KEYS", "MAX_CASES",
    "SCHEMA", "SECTION_KEYS", "TASK_KEYS", "TIMING_KEYS", "TOP_KEYS", "Correctness", "Hardware", "Key", "MemoryBudget",
    "Settings", "Suite", "SuiteError", "Timing", "load_suite", "schema_markdown",
]
