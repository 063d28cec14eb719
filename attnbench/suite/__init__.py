"""Suites: declarative YAML files that say which cases to run, with what, and how.

A suite is plain data. It is loaded with a safe loader that remembers the line
of every key, so each mistake is reported as ``file:line: field ...`` and no
tag can construct a Python object. ``SCHEMA`` documents every key and drives
validation; ``schema_markdown()`` renders it as the reference for the docs.

Cases come from the product of the ``matrix`` axes over ``defaults``, plus
``include_cases``. A ``cpu:`` or ``cuda:`` section overrides the suite for that
device, so one file serves a laptop and an H100. Both sections are expanded at
load time, so a mistake in the cuda section shows up on a CPU-only machine.
``tasks`` declares quality tasks (``attnbench.quality``), besides or instead of cases.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import itertools
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from attnbench.case import DTYPES, PASSES, Case, dtype_name
from attnbench.implementation import DEVICES, NAME_PATTERN
from attnbench.masks import MASKS
from attnbench.quality.config import MIN_STEPS, PRESETS, TaskConfig, preset
from attnbench.quality.tasks import TASKS

MAX_CASES = 10_000
"""Most cases one device may expand to; more is almost surely a typo in an axis."""

DEFAULT_FLOORS: dict[str, float] = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}
"""Absolute error always allowed per dtype: about one unit in the last place at 1.0 for
the 16-bit types, so an unusually exact eager baseline does not fail everyone else."""


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


# --- settings a run uses --------------------------------------------------------


@dataclass(frozen=True)
class Correctness:
    """How outputs are checked: an implementation passes a case in a dtype when its
    error <= ``tolerance_factor`` x the error of ``eager`` in that dtype + the dtype's floor."""

    seeds: int = 3
    tolerance_factor: float = 2.0
    floors: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FLOORS))

    def tolerance(self, dtype: torch.dtype | str, eager_error: float) -> float:
        """Largest error that passes, given eager's error on the same case and seed."""
        name = dtype if isinstance(dtype, str) else dtype_name(dtype)
        return self.tolerance_factor * eager_error + self.floors[name]


@dataclass(frozen=True)
class Timing:
    """How calls are timed, on CPU (calibrated repeats in worker processes) and on CUDA (events)."""

    warmup: int = 3
    min_time_s: float = 0.1
    repeats: int = 5
    processes: int = 2
    cuda_repeats: int = 100
    flush_l2: bool = True
    cuda_graph: bool = False


@dataclass(frozen=True)
class MemoryBudget:
    """Memory a case may use: a fraction of free memory, or a fixed number of bytes."""

    fraction: float | None = None
    nbytes: int | None = None

    def limit(self, free_bytes: int) -> int:
        """The budget in bytes, given the device's free memory."""
        if self.nbytes is not None:
            return self.nbytes
        assert self.fraction is not None
        return int(self.fraction * free_bytes)


@dataclass(frozen=True)
class Hardware:
    """What a fleet run asks its cluster for (the suite's ``hardware`` section); None: not set."""

    gpu_type: str | None = None
    gpus_per_job: int | None = None
    partition: str | None = None


@dataclass(frozen=True)
class Settings:
    """Everything but the cases that a run on one device uses, with that device's section applied."""

    device: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    baseline: str
    correctness: Correctness
    timing: Timing
    timeout_s: float
    memory_budget: MemoryBudget

    def selects(self, name: str) -> bool:
        """True when implementation ``name`` matches an include pattern and no exclude pattern."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude
        )


# --- schema -----------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One suite key: its type, default, allowed values and meaning.

    ``type`` is one of string, integer, number, boolean (checked generically) or
    a descriptive type whose key has its own check. ``allowed`` and
    ``default_text`` override the text derived for the reference.
    """

    type: str
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    exclusive: bool = False
    nullable: bool = False
    required: bool = False
    allowed: str = ""
    default_text: str = ""

    def describe(self) -> str:
        """What values the key accepts, in words."""
        if self.allowed:
            return self.allowed
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        else:
            text = {"string": "a string", "integer": "an integer", "number": "a number",
                    "boolean": "true or false"}[self.type]
            if self.minimum is not None:
                text += f" {'>' if self.exclusive else '>='} {self.minimum:g}"
        return text + (" or null" if self.nullable else "")


AXES: dict[str, Key] = {
    "batch": Key("integer", 1, "Sequences per batch.", minimum=1),
    "tokens": Key("integer", None, "Key/value tokens per batch: sets batch = max(1, tokens // seq_kv), so "
                  "batch x seq stays constant as in FlashAttention's benchmark (16k). Replaces batch.", minimum=1),
    "heads_q": Key("integer", 8, "Query heads.", minimum=1),
    "model_dim": Key("integer", None, "heads_q x head_dim: sets heads_q = model_dim // head_dim (must divide "
                     "exactly), so the model width stays constant. Replaces heads_q.", minimum=1),
    "heads_kv": Key("integer", None, "Key/value heads; fewer than heads_q (dividing it) is GQA, 1 is MQA.",
                    default_text="heads_q", minimum=1),
    "seq": Key("integer", None, "Shorthand that sets seq_q and seq_kv to the same value.", minimum=1),
    "seq_q": Key("integer", None, "Query length.", default_text="required (or seq)",
                   minimum=1),
    "seq_kv": Key("integer", None, "Key/value length; longer than seq_q is a prefix cache or cross-attention.",
                  default_text="seq_q", minimum=1),
    "head_dim": Key("integer", 64, "Dimension of each head.", minimum=1),
    "dtype": Key("string", "float32", "Element type of q, k and v.", choices=tuple(DTYPES)),
    "mask": Key("string", "none", "Attention mask, bottom-right aligned: causal, sliding_window (needs window) "
                "or block_sparse (needs block).", choices=MASKS),
    "window": Key("integer", None, "Keys each query sees under sliding_window, itself included. Dropped for "
                  "other masks (duplicate cases that leaves are removed).", nullable=True, minimum=1),
    "block": Key("integer", None, "Block size in positions under block_sparse: each query sees its own block up "
                 "to itself, the blocks 1, 2, 4, 8, ... blocks back, and the first block. Dropped for other masks.",
                 nullable=True, minimum=1),
    "scale": Key("number", None, "Softmax scale; null means 1/sqrt(head_dim).", minimum=0, exclusive=True,
                 nullable=True),
    "pass": Key("string", "fwd", "What is timed: the forward call, the backward call alone, or both.",
                choices=PASSES),
}

IMPLEMENTATION_KEYS: dict[str, Key] = {
    "include": Key("glob or list of globs", ("*",), "Implementations to run, by fnmatch pattern "
                   "(e.g. sdpa* matches sdpa.flash).", allowed="implementation names or patterns"),
    "exclude": Key("glob or list of globs", (), "Implementations left out even when include matches them.",
                   allowed="implementation names or patterns", default_text="none"),
}

CORRECTNESS_KEYS: dict[str, Key] = {
    "seeds": Key("integer", Correctness.seeds, "Random inputs each output is checked on.", minimum=3),
    "tolerance_factor": Key("number", Correctness.tolerance_factor, "k in the pass rule: error <= k x error "
                            "of eager in the same dtype + floor.", minimum=1),
    "floors": Key("mapping dtype -> number", DEFAULT_FLOORS, "Absolute error always allowed, per dtype; "
                  "dtypes not named keep their default.", allowed="dtype names to numbers >= 0"),
}

TIMING_KEYS: dict[str, Key] = {
    "warmup": Key("integer", Timing.warmup, "Untimed calls before timing starts (on CPU, a checked call of "
                  "0.25 s or more already was one).", minimum=0),
    "min_time_s": Key("number", Timing.min_time_s, "CPU: each worker process takes timed samples until they add "
                      "up to at least this long (a sample loops a fast call to about 20 ms, calibrated once).",
                      minimum=0, exclusive=True),
    "repeats": Key("integer", Timing.repeats, "CPU: at least this many timed samples in each worker process "
                   "(a call slower than min_time_s gets exactly this many).", minimum=1),
    "processes": Key("integer", Timing.processes, "CPU: worker processes, so one process's luck (allocator, "
                     "frequency) does not decide the result.", minimum=2),
    "cuda_repeats": Key("integer", Timing.cuda_repeats, "CUDA: timed calls, each between CUDA events.",
                        minimum=50),
    "flush_l2": Key("boolean", Timing.flush_l2, "CUDA: overwrite the L2 cache before each timed call, so "
                    "inputs are read from memory as in a real model."),
    "cuda_graph": Key("boolean", Timing.cuda_graph, "CUDA: capture the call in a CUDA graph, removing "
                      "launch overhead from short calls."),
}

TASK_KEYS: dict[str, Key] = {
    "names": Key("task name or list of names", tuple(TASKS), "Synthetic tasks to train on (see Methodology).",
                 allowed=", ".join(TASKS)),
    "size": Key("string", None, "Preset of sequence length, model, batch and steps of each task: tiny (tests), "
                "cpu (a 2-core CPU), cuda (a GPU).", choices=tuple(PRESETS), default_text="the device's"),
    "seeds": Key("integer", 3, "Training runs per task and implementation, seeds 0, 1, ... (plus --seed), each "
                 "with other weights and data: their mean and spread are reported.", minimum=3),
    "steps": Key("integer", None, "Training steps, replacing the preset's.", minimum=MIN_STEPS,
                 default_text="the preset's"),
    "eval_size": Key("integer", None, "Held-out examples each trained model is scored on, replacing the preset's.",
                     minimum=1, default_text="the preset's"),
    "threads": Key("integer", 1, "Torch CPU threads of each training run; null leaves torch's default (one per "
                   "core). The models are small: on a small or shared machine a second thread mostly waits.",
                   minimum=1, nullable=True),
}

HARDWARE_KEYS: dict[str, Key] = {
    "gpu_type": Key("string", None, "The GPUs a fleet run asks for, as the cluster names them: on Ray the "
                    "accelerator type (nodes advertising accelerator_type:TYPE, e.g. H100), on Slurm the node "
                    "feature given as --constraint (e.g. h100). --ray-accelerator-type and --slurm-constraint "
                    "replace it.", allowed="letters, digits, '.', '_' and '-'"),
    "gpus_per_job": Key("integer", None, "Slurm: GPUs per job, each measuring one case at a time. --slurm-gres "
                        "replaces it. (A Ray task takes one GPU.)", minimum=1, default_text="1 on CUDA"),
    "partition": Key("string", None, "Slurm: the partition jobs are submitted to. --slurm-partition replaces it.",
                     allowed="letters, digits, '.', '_' and '-'", default_text="the cluster's default"),
}

TOP_KEYS: dict[str, Key] = {
    "name": Key("string", None, "Suite name, shown in reports and used in result file names.", required=True,
                allowed="letters, digits, '.', '_' and '-'"),
    "description": Key("string", "", "What the suite measures and why.", default_text="empty"),
    "implementations": Key("mapping", None, "Which implementations run (see implementations).",
                           allowed="include, exclude", default_text="all"),
    "baseline": Key("string", "sdpa", "Implementation that speedups are computed against.",
                    allowed="an implementation name"),
    "defaults": Key("mapping", None, "A single value for any axis, used where no matrix sets it.",
                    allowed="axes (single values)", default_text="built-in axis defaults"),
    "matrix": Key("mapping", None, "Axes, each a value or a list; the product of the lists is the cases.",
                  allowed="axes (values or lists)", default_text="none"),
    "include_cases": Key("list of mappings", None, "Extra cases a product cannot express (e.g. decode at "
                         "several cache lengths), each a mapping of single axis values over defaults.",
                         allowed="list of axis mappings", default_text="none"),
    "correctness": Key("mapping", None, "How outputs are checked (see correctness).",
                       allowed=", ".join(CORRECTNESS_KEYS), default_text="see correctness"),
    "timing": Key("mapping", None, "How calls are timed (see timing).", allowed=", ".join(TIMING_KEYS),
                  default_text="see timing"),
    "timeout_s": Key("number", 300.0, "Seconds one implementation may spend on one case before it is "
                     "stopped and recorded as a timeout.", minimum=0, exclusive=True),
    "memory_budget": Key("number or size", 0.8, "Device memory one case may use.",
                         allowed="a fraction in (0, 1] of free memory, or a size such as '8GiB'"),
    "tasks": Key("mapping", None, "Quality tasks: a small transformer trained with each implementation as its "
                 "attention (see tasks).", allowed=", ".join(TASK_KEYS), default_text="none"),
    "cpu": Key("mapping", None, "Overrides on CPU (see cpu / cuda).", allowed="device section keys",
               default_text="none"),
    "cuda": Key("mapping", None, "Overrides on CUDA GPUs (see cpu / cuda).", allowed="device section keys",
                default_text="none"),
    "hardware": Key("mapping", None, "What a fleet run (--executor slurm or ray) asks its cluster for (see "
                    "hardware).", allowed=", ".join(HARDWARE_KEYS), default_text="none"),
}

SECTION_KEYS: dict[str, Key] = {
    "defaults": Key("mapping", None, "Axes over the suite's defaults and matrix.",
                    allowed="axes (single values)", default_text="none"),
    "matrix": Key("mapping", None, "Axes over the suite's defaults and matrix; an axis set here replaces the "
                  "suite's.", allowed="axes (values or lists)", default_text="none"),
    "include_cases": Key("list of mappings", None, "Replaces the suite's include_cases.",
                         allowed="list of axis mappings", default_text="suite's"),
    "implementations": Key("mapping", None, "include and exclude given here replace the suite's.",
                           allowed="include, exclude", default_text="suite's"),
    "baseline": Key("string", None, "Replaces the suite's baseline.", allowed="an implementation name",
                    default_text="suite's"),
    "correctness": Key("mapping", None, "Keys given here replace the suite's; floors merge per dtype.",
                       allowed=", ".join(CORRECTNESS_KEYS), default_text="suite's"),
    "timing": Key("mapping", None, "Keys given here replace the suite's.", allowed=", ".join(TIMING_KEYS),
                  default_text="suite's"),
    "timeout_s": Key("number", None, "Replaces the suite's timeout_s.", minimum=0, exclusive=True,
                     default_text="suite's"),
    "memory_budget": Key("number or size", None, "Replaces the suite's memory_budget.",
                         allowed=TOP_KEYS["memory_budget"].allowed, default_text="suite's"),
    "tasks": Key("mapping", None, "Keys given here replace the suite's; tasks here alone declare tasks on this "
                 "device only.", allowed=", ".join(TASK_KEYS), default_text="suite's"),
}

SCHEMA: dict[str, dict[str, Key]] = {
    "top level": TOP_KEYS,
    "implementations": IMPLEMENTATION_KEYS,
    "axes": AXES,
    "correctness": CORRECTNESS_KEYS,
    "timing": TIMING_KEYS,
    "tasks": TASK_KEYS,
    "cpu / cuda": SECTION_KEYS,
    "hardware": HARDWARE_KEYS,
}
"""Every key a suite may hold, by the mapping it sits in. Axes are the keys of
``matrix``, ``defaults`` and each ``include_cases`` entry."""

_NOTES: dict[str, str] = {
    "top level": "A suite file is a YAML mapping. Unknown keys are errors.",
    "implementations": "Selects implementations by name; the baseline and eager should usually be among them.",
    "axes": (
        "Keys of `matrix` (a value or a list each), `defaults` and `include_cases` entries (a single value "
        "each). Each case field takes its value from the most specific place that sets it: the device "
        "section's matrix, its defaults, the suite's matrix, the suite's defaults, the built-in default. "
        "`seq` sets seq_q and seq_kv, `tokens` sets batch, `model_dim` sets heads_q; two spellings of one "
        "field in the same mapping are an error. Cases are ordered with seq varying fastest and pass slowest."
    ),
    "correctness": "An output passes when error <= tolerance_factor x eager's error in the same dtype + floor.",
    "timing": "Keys marked CPU apply to CPU runs and keys marked CUDA to GPU runs; warmup applies to both.",
    "tasks": (
        "Quality tasks train a small transformer with each implementation as its attention, once per seed, and "
        "score it on held-out data: one record per task and implementation (see Results). A suite may declare "
        "tasks and no cases. Implementations without backward are unsupported; an exact implementation whose "
        "accuracy disagrees with eager's is incorrect. timeout_s applies to each seed's training run."
    ),
    "cpu / cuda": "A device section overrides the suite on that device. Both are validated whatever the machine.",
    "hardware": (
        "Read by the fleet executors only (`--executor slurm`, `--executor ray`, see "
        "[executors](executors.md)); a local run measures on the machine it has. A flag given on the command "
        "line replaces the key it names. A gpu_type or gpus_per_job makes `--device auto` mean cuda."
    ),
}


def schema_markdown() -> str:
    """SCHEMA as a markdown reference: one table per mapping."""
    out = []
    for title, keys in SCHEMA.items():
        out += [f"### {title}", "", _NOTES[title], "", "| key | type | default | allowed | description |",
                "| --- | --- | --- | --- | --- |"]
        for name, key in keys.items():
            cells = (f"`{name}`", key.type, _default_text(key), key.describe(), key.doc)
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def _default_text(key: Key) -> str:
    if key.default_text:
        return key.default_text
    if key.required:
        return "required"
    value = key.default
    if value is None:
        return "not set"
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, Mapping):
        text = ", ".join(f"{k}: {v:g}" for k, v in value.items())
    elif isinstance(value, tuple):
        text = ", ".join(value)
    else:
        text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"`{text}`"


# --- YAML with line numbers -------------------------------------------------------


class _Map(dict):
    """A YAML mapping that knows its own line and the line of each key (1-based)."""

    line: int
    lines: dict[str, int]


class _Seq(list):
    """A YAML sequence that knows the line of each item (1-based)."""

    lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader building _Map and _Seq, refusing duplicate and non-string keys and any unknown tag."""

    def _mapping(self, node: yaml.MappingNode) -> _Map:
        self.flatten_mapping(node)  # resolves << merge keys
        out = _Map()
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

    def _sequence(self, node: yaml.SequenceNode) -> _Seq:
        out = _Seq(self.construct_object(child, deep=True) for child in node.value)
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


def _read_yaml(shown: str, data: bytes) -> _Map:
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
    if not isinstance(doc, _Map):
        raise SuiteError(shown, node.start_mark.line + 1, "", f"the top level must be a mapping of suite keys "
                         f"({', '.join(TOP_KEYS)}), found {_show(doc)}")
    return doc


# --- checking values --------------------------------------------------------------


def _show(value: Any) -> str:
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


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Checker:
    """Checks parts of one file, raising SuiteError that name it."""

    def __init__(self, shown: str) -> None:
        self.shown = shown

    def error(self, line: int | None, field: str, problem: str) -> SuiteError:
        return SuiteError(self.shown, line, field, problem)

    def keys(self, m: _Map, allowed: Mapping[str, Key], where: str) -> None:
        """Unknown keys and missing required keys are errors."""
        for k in m:
            if k not in allowed:
                place = f"in {where}" if where else "at the top level"
                raise self.error(m.lines[k], f"{where}.{k}" if where else k,
                                 f"unknown key '{k}' {place}{_suggest(k, allowed)}; allowed: {', '.join(allowed)}")
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
            raise self.error(line, field, f"{field} must be {key.describe()}, got {_show(value)}")
        if key.choices and value not in key.choices:
            raise self.error(line, field, f"{field} {value!r} is not one of {', '.join(key.choices)}"
                             + _suggest(value, key.choices))
        if key.minimum is not None and (value < key.minimum or (key.exclusive and value == key.minimum)):
            raise self.error(line, field, f"{field} must be {key.describe()}, got {value:g}")
        return float(value) if kind == "number" else value

    def mapping(self, parent: _Map, k: str, field: str) -> _Map:
        value = parent[k]
        if not isinstance(value, _Map):
            raise self.error(parent.lines[k], field, f"{field} must be a mapping, got {_show(value)}")
        return value

    def patterns(self, parent: _Map, k: str, field: str) -> tuple[str, ...]:
        value = parent[k]
        items = [(value, parent.lines[k])] if isinstance(value, str) else None
        if isinstance(value, _Seq):
            items = list(zip(value, value.lines))
        if items is None:
            raise self.error(parent.lines[k], field, f"{field} must be a glob or a list of globs, got {_show(value)}")
        for item, line in items:
            if not isinstance(item, str) or not item:
                raise self.error(line, field, f"{field} entries must be implementation names or globs, got "
                                 f"{_show(item)}")
        return tuple(item for item, _ in items)

    def task_names(self, parent: _Map, k: str, field: str) -> tuple[str, ...]:
        """A task name or a non-empty list of them, duplicates dropped."""
        value = parent[k]
        items = [(value, parent.lines[k])] if isinstance(value, str) else None
        if isinstance(value, _Seq) and value:
            items = list(zip(value, value.lines))
        if items is None:
            raise self.error(parent.lines[k], field, f"{field} must be a task name or a non-empty list of them "
                             f"({', '.join(TASKS)}), got {_show(value)}")
        for item, line in items:
            if item not in TASKS:
                raise self.error(line, field, f"{field}: {_show(item)} is not one of {', '.join(TASKS)}"
                                 + (_suggest(item, TASKS) if isinstance(item, str) else ""))
        return tuple(dict.fromkeys(item for item, _ in items))

    def memory_budget(self, value: Any, field: str, line: int) -> MemoryBudget:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if 0 < value <= 1:
                return MemoryBudget(fraction=float(value))
            raise self.error(line, field, f"{field} {value:g} is not a fraction in (0, 1]; write a size with a "
                             "unit, e.g. '8GiB'")
        match = _SIZE.match(value) if isinstance(value, str) else None
        if match is None or match[2].lower() not in _UNITS:
            raise self.error(line, field, f"{field} must be {TOP_KEYS['memory_budget'].allowed} (units "
                             f"{', '.join(_UNIT_NAMES)}), got {_show(value)}")
        nbytes = int(float(match[1]) * _UNITS[match[2].lower()])
        if nbytes < 1:
            raise self.error(line, field, f"{field} must be at least 1 byte, got {value!r}")
        return MemoryBudget(nbytes=nbytes)

    def floors(self, m: _Map, field: str) -> dict[str, float]:
        key = Key("number", None, "", minimum=0)
        for k in m:
            if k not in DTYPES:
                raise self.error(m.lines[k], f"{field}.{k}", f"{field}: '{k}' is not one of "
                                 f"{', '.join(DTYPES)}{_suggest(k, DTYPES)}")
        return {k: self.scalar(v, key, f"{field}.{k}", m.lines[k]) for k, v in m.items()}


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNIT_NAMES = ("B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB")
_UNITS = {u.lower(): (1024 if "i" in u else 1000) ** i for u, i in zip(_UNIT_NAMES, (0, 1, 2, 3, 4, 1, 2, 3, 4))}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]+)\s*$")


# --- axes and their expansion -------------------------------------------------------

# The case fields each axis sets; unlisted axes set the field of their own name.
_SETS: dict[str, tuple[str, ...]] = {
    "tokens": ("batch",), "model_dim": ("heads_q",), "seq": ("seq_q", "seq_kv"), "pass": ("pass_",),
}
_FIELDS = ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim", "dtype", "mask", "window", "block", "scale",
           "pass_")
# Case fields from slowest- to fastest-varying in the product.
_ORDER = ("pass_", "dtype", "mask", "window", "block", "scale", "head_dim", "heads_q", "heads_kv", "batch", "seq_q",
          "seq_kv")
_MENTIONED = re.compile(r"\b(batch|heads_q|heads_kv|seq_q|seq_kv|head_dim|dtype|mask|window|block|scale)\b")


def _sets(axis: str) -> tuple[str, ...]:
    return _SETS.get(axis, (axis,))


@dataclass(frozen=True, eq=False)
class _Axis:
    """One axis as written: its spelling, its place for messages, and its (value, line) items."""

    name: str
    field: str
    values: tuple[tuple[Any, int | None], ...]


_BUILTIN = {name: _Axis(name, "built-in default", ((key.default, None),))
            for name, key in AXES.items() if key.default is not None}


@dataclass
class _Part:
    """What the suite's top level, or one device section, sets; None or absent means not set."""

    line: int
    prefix: str
    defaults: dict[str, _Axis]
    matrix: dict[str, _Axis] | None
    include_cases: list[tuple[str, int, dict[str, _Axis]]] | None
    options: dict[str, Any]
    correctness: dict[str, Any]
    floors: dict[str, float]
    timing: dict[str, Any]
    tasks: dict[str, tuple[Any, int]] | None = None
    """Task keys given here, each with its line."""


def _parse_axes(check: _Checker, m: _Map, where: str, lists: bool) -> dict[str, _Axis]:
    check.keys(m, AXES, where)
    axes: dict[str, _Axis] = {}
    for name, value in m.items():
        field, line = f"{where}.{name}", m.lines[name]
        for other in axes:
            if set(_sets(other)) & set(_sets(name)):
                shared = sorted(set(_sets(other)) & set(_sets(name)))[0]
                raise check.error(line, field, f"{where} sets both {other} and {name}, which both set {shared}; "
                                  "use one")
        if isinstance(value, _Seq):
            if not lists:
                raise check.error(line, field, f"{field} must be a single value, got a list; lists belong in matrix")
            if not value:
                raise check.error(line, field, f"{field} is an empty list; give at least one value")
            items = tuple(zip(value, value.lines))
        else:
            items = ((value, line),)
        key = AXES[name]
        axes[name] = _Axis(name, field, tuple((check.scalar(v, key, field, vl), vl) for v, vl in items))
    return axes


def _parse_part(check: _Checker, m: _Map, prefix: str, allowed: Mapping[str, Key], line: int) -> _Part:
    """The suite's top level (prefix '') or a device section (prefix 'cuda.')."""
    check.keys(m, allowed, prefix.rstrip("."))
    part = _Part(line=line, prefix=prefix, defaults={}, matrix=None, include_cases=None,
                 options={}, correctness={}, floors={}, timing={})
    if "defaults" in m:
        part.defaults = _parse_axes(check, check.mapping(m, "defaults", prefix + "defaults"), prefix + "defaults",
                                    lists=False)
    if "matrix" in m:
        part.matrix = _parse_axes(check, check.mapping(m, "matrix", prefix + "matrix"), prefix + "matrix",
                                  lists=True)
        part.line = m.lines["matrix"]
    if "include_cases" in m:
        field, value = prefix + "include_cases", m["include_cases"]
        if not isinstance(value, _Seq):
            raise check.error(m.lines["include_cases"], field, f"{field} must be a list of mappings of axis "
                              f"values, got {_show(value)}")
        part.include_cases = []
        for i, (entry, entry_line) in enumerate(zip(value, value.lines)):
            where = f"{field}[{i}]"
            if not isinstance(entry, _Map):
                raise check.error(entry_line, where, f"{where} must be a mapping of axis values, got {_show(entry)}")
            part.include_cases.append((where, entry_line, _parse_axes(check, entry, where, lists=False)))
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


def _resolve(layers: Iterable[Mapping[str, _Axis]]) -> dict[str, _Axis]:
    """Case field -> the axis that sets it; later layers win, field by field."""
    fields: dict[str, _Axis] = {}
    for layer in layers:
        for axis in layer.values():
            for f in _sets(axis.name):
                fields[f] = axis
    return fields


def _expand(check: _Checker, fields: dict[str, _Axis], device: str, where: str, line: int) -> list[Case]:
    """The product of the axes that set ``fields``, as cases (duplicates left in)."""
    if "seq_q" not in fields:
        raise check.error(line, where, f"{where} sets no sequence length: give seq (or seq_q) in matrix or defaults")
    sources: list[_Axis] = []
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
        origin: dict[str, tuple[_Axis, int | None]] = {}
        for f, axis in fields.items():
            values[f], item_line = chosen[id(axis)]
            origin[f] = (axis, item_line)
        _derive(check, values, origin)
        cases.append(_case(check, values, origin, device, where, line))
    return cases


def _derive(check: _Checker, values: dict[str, Any], origin: dict[str, tuple[_Axis, int | None]]) -> None:
    """Fill the fields other axes imply: seq_kv, heads_kv, batch from tokens, heads_q from model_dim."""
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


def _case(check: _Checker, values: dict[str, Any], origin: dict[str, tuple[_Axis, int | None]], device: str,
          where: str, where_line: int) -> Case:
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


# --- the suite ----------------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    """A loaded, validated suite.

    The fields hold the suite's top-level settings; ``settings(device)`` and
    ``cases(device)`` apply that device's section, and are what a run uses.
    """

    name: str
    description: str
    path: Path
    file_hash: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    baseline: str
    correctness: Correctness
    timing: Timing
    timeout_s: float
    memory_budget: MemoryBudget
    _settings: dict[str, Settings] = field(repr=False, compare=False)
    _cases: dict[str, tuple[Case, ...]] = field(repr=False, compare=False)
    _tasks: dict[str, tuple[TaskConfig, ...]] = field(default_factory=dict, repr=False, compare=False)
    hardware: Hardware = field(default_factory=Hardware)

    def settings(self, device: str) -> Settings:
        """Effective settings on ``device`` ('cpu' or 'cuda'), its section applied."""
        return self._settings[_device(device)]

    def cases(self, device: str) -> list[Case]:
        """The cases to run on ``device`` ('cpu' or 'cuda'), in order, without duplicates."""
        return list(self._cases[_device(device)])

    def tasks(self, device: str) -> list[TaskConfig]:
        """The quality tasks to train on ``device``, one config each; empty when the suite declares none there."""
        return list(self._tasks.get(_device(device), ()))


def _device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    return device


def load_suite(path: str | os.PathLike[str]) -> Suite:
    """Read, validate and expand a suite file; every problem raises SuiteError."""
    shown = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SuiteError(shown, None, "", "no such suite file") from None
    except OSError as exc:
        raise SuiteError(shown, None, "", f"cannot read the suite file: {exc.strerror or exc}") from None
    doc = _read_yaml(shown, data)
    check = _Checker(shown)
    top = _parse_part(check, doc, "", TOP_KEYS, 1)
    name = check.scalar(doc["name"], TOP_KEYS["name"], "name", doc.lines["name"])
    if not _NAME.match(name):
        raise check.error(doc.lines["name"], "name", f"name {name!r} must be {TOP_KEYS['name'].allowed}, starting "
                          "with a letter or digit")
    description = check.scalar(doc["description"], TOP_KEYS["description"], "description",
                               doc.lines["description"]) if "description" in doc else ""
    hardware = _hardware(check, check.mapping(doc, "hardware", "hardware")) if "hardware" in doc else Hardware()
    sections = {}
    for device in DEVICES:
        if device in doc:
            sections[device] = _parse_part(check, check.mapping(doc, device, device), device + ".", SECTION_KEYS,
                                           doc.lines[device])
    settings = {d: _settings(d, [top, *([sections[d]] if d in sections else [])]) for d in DEVICES}
    tasks = {d: _tasks(check, top, sections.get(d), d) for d in DEVICES}
    cases = {d: tuple(_cases(check, top, sections.get(d), d, bool(tasks[d]))) for d in DEVICES}
    base = _settings("", [top])
    return Suite(
        name=name, description=description, path=Path(path), file_hash=hashlib.sha256(data).hexdigest(),
        include=base.include, exclude=base.exclude, baseline=base.baseline, correctness=base.correctness,
        timing=base.timing, timeout_s=base.timeout_s, memory_budget=base.memory_budget,
        _settings=settings, _cases=cases, _tasks=tasks, hardware=hardware,
    )


def _hardware(check: _Checker, m: _Map) -> Hardware:
    """The ``hardware`` section: names a cluster can take as they are, a positive GPU count."""
    check.keys(m, HARDWARE_KEYS, "hardware")
    values = {}
    for k, v in m.items():
        field, key = f"hardware.{k}", HARDWARE_KEYS[k]
        values[k] = check.scalar(v, key, field, m.lines[k])
        if key.type == "string" and not _NAME.match(values[k]):
            raise check.error(m.lines[k], field, f"{field} {values[k]!r} must be {key.allowed}, starting with a "
                              "letter or digit")
    return Hardware(**values)


def _settings(device: str, parts: list[_Part]) -> Settings:
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


def _cases(check: _Checker, top: _Part, section: _Part | None, device: str, has_tasks: bool) -> dict[Case, None]:
    """The device's cases, deduplicated in order (a dict used as an ordered set); none is fine beside tasks."""
    parts = [top] if section is None else [top, section]
    matrices = [p for p in parts if p.matrix is not None]
    include_cases = next((p.include_cases for p in reversed(parts) if p.include_cases is not None), None)
    if not matrices and not include_cases:
        if has_tasks:
            return {}
        raise check.error(parts[-1].line, "matrix", f"the suite defines no cases on {device}: add a matrix or "
                          "include_cases, or declare tasks")
    cases: dict[Case, None] = {}
    if matrices:
        layers = [_BUILTIN]
        for p in parts:
            layers += [p.defaults, p.matrix or {}]
        blame = matrices[-1]
        cases |= dict.fromkeys(_expand(check, _resolve(layers), device, blame.prefix + "matrix", blame.line))
    for where, line, axes in include_cases or ():
        fields = _resolve([_BUILTIN, *(p.defaults for p in parts), axes])
        cases |= dict.fromkeys(_expand(check, fields, device, where, line))
    return cases


def _tasks(check: _Checker, top: _Part, section: _Part | None, device: str) -> tuple[TaskConfig, ...]:
    """The device's task configs: each task's preset, then the suite's task keys, then the device section's."""
    parts = [p for p in (top, section) if p is not None and p.tasks is not None]
    if not parts:
        return ()
    values = {k: value for p in parts for k, (value, _) in p.tasks.items()}
    configs = []
    for name in values.get("names", TASK_KEYS["names"].default):
        changes = {k: values[k] for k in ("steps", "eval_size") if k in values}
        changes["seeds"] = tuple(range(values.get("seeds", TASK_KEYS["seeds"].default)))
        changes["threads"] = values.get("threads", TASK_KEYS["threads"].default)
        try:
            configs.append(dataclasses.replace(preset(name, device, values.get("size")), **changes))
        except ValueError as exc:
            # A preset and an override that do not fit together: blame the most specific tasks mapping.
            where = parts[-1].prefix + "tasks"
            line = min(line for _, line in parts[-1].tasks.values())
            raise check.error(line, where, f"{where}: task {name} on {device}: {exc}") from None
    return tuple(configs)
