"""The results file's schema as checks (docs/results.md): ``check(data, source)`` before anything reads a file.

A results file may come from another machine, another attnbench or a
person's editor, so readers trust none of it. ``check`` walks a parsed
file against the documented fields and raises ``ResultsError`` at the first
value that does not fit, naming the file and the value's JSON path
(``runs/a.json: records[3].metrics.time_ms_median: expected ..., got 1e+308``).
What passes is safe for every reader's arithmetic and formatting: the types
they index, finite numbers no measurement would exceed, bounded nesting.

Nothing here imports the rest of attnbench but its errors, so ``results``
builds on it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from attnbench.errors import UserError

SCHEMA_VERSION = 1
STATUSES = ("ok", "incorrect", "implausible", "unsupported", "skipped", "error", "oom", "timeout", "crashed",
            "preempted", "infeasible", "node_lost")

MAX_DEPTH = 32
"""Deepest nesting a file may have; the writer's goes about 7 deep (``records[i].where.gpu_telemetry[j]...``)."""
LARGEST = 1e30
"""Largest magnitude a number may have. 1e308 is a finite float, but a ratio or a product of two such
overflows to inf; every real figure (ms, bytes, FLOP/s, counts) is far below this."""
SMALLEST = 1e-30
"""Smallest magnitude a non-zero number may have, so that dividing by it stays finite too."""
SHOWN = 60
"""Characters of a bad string a message quotes."""

Check = Callable[[Any, str, int], None]
"""``check(value, json_path, depth)``: returns, or raises ResultsError for the value at that path."""


class ResultsError(UserError, ValueError):
    """A results file that is not what attnbench writes: exit 1, naming the file and where in it."""


class _Problem(Exception):
    """A value that does not fit; ``check`` adds the file name."""


def _show(value: Any) -> str:
    """A value as JSON would spell it, strings shortened, containers by kind."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str) and len(value) > SHOWN:
        return json.dumps(value[:SHOWN]) + "…"
    return json.dumps(value)


def _fail(path: str, expected: str, value: Any, why: str = "") -> None:
    raise _Problem(f"{path or 'the file'}: expected {expected}, got {_show(value)}{why}")


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key[:SHOWN])}]"


def _deeper(path: str, depth: int, value: Any) -> int:
    if depth >= MAX_DEPTH:
        _fail(path, f"at most {MAX_DEPTH} levels of nesting", value)
    return depth + 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range_problem(value: float) -> str:
    """Why a number is not one a reader can compute with, or '' when it is."""
    if isinstance(value, float) and not math.isfinite(value):
        return " (not a finite number)"
    if abs(value) > LARGEST:
        return f" (larger than {LARGEST:g}, which no measurement reaches)"
    if value and abs(value) < SMALLEST:
        return f" (smaller than {SMALLEST:g} but not 0)"
    return ""


# --- building blocks -------------------------------------------------------------------------------------------------


def number(minimum: float | None = 0, *, integer: bool = False, nullable: bool = False, above: bool = False) -> Check:
    """A finite number in range; ``minimum`` None: any sign; ``above``: strictly greater than ``minimum``."""
    kind = "an integer" if integer else "a finite number"
    expected = kind + ("" if minimum is None else f" {'>' if above else '>='} {minimum:g}") + (" or null" if nullable else "")

    def check(value: Any, path: str, depth: int) -> None:
        if value is None and nullable:
            return
        if not _is_number(value) or (integer and not isinstance(value, int)):
            _fail(path, expected, value)
        why = _range_problem(value)
        if why or (minimum is not None and (value <= minimum if above else value < minimum)):
            _fail(path, expected, value, why)

    return check


def text(*, nullable: bool = False, choices: tuple[str, ...] = ()) -> Check:
    """A string (one of ``choices`` when given)."""
    expected = (f"one of {', '.join(choices)}" if choices else "a string") + (" or null" if nullable else "")

    def check(value: Any, path: str, depth: int) -> None:
        if value is None and nullable:
            return
        if not isinstance(value, str) or (choices and value not in choices):
            _fail(path, expected, value)

    return check


def flag(*, nullable: bool = False) -> Check:
    expected = "true or false" + (" or null" if nullable else "")

    def check(value: Any, path: str, depth: int) -> None:
        if not (isinstance(value, bool) or (value is None and nullable)):
            _fail(path, expected, value)

    return check


def array(item: Check) -> Check:
    """A list whose every item passes ``item``."""

    def check(value: Any, path: str, depth: int) -> None:
        if not isinstance(value, list):
            _fail(path, "a list", value)
        inner = _deeper(path, depth, value)
        for i, v in enumerate(value):
            item(v, _child(path, i), inner)

    return check


def obj(required: dict[str, Check] | None = None, optional: dict[str, Check] | None = None,
        rest: Check | None = None) -> Check:
    """An object with ``required`` keys, maybe ``optional`` ones, and any other key's value passing ``rest``."""
    required, optional = required or {}, optional or {}
    rest = rest or free

    def check(value: Any, path: str, depth: int) -> None:
        if not isinstance(value, dict):
            _fail(path, "an object", value)
        inner = _deeper(path, depth, value)
        for key in required:
            if key not in value:
                raise _Problem(f"{_child(path, key)}: missing")
        for key, v in value.items():
            (required.get(key) or optional.get(key) or rest)(v, _child(path, key), inner)

    return check


def free(value: Any, path: str, depth: int) -> None:
    """Any JSON the readers only show: numbers in range, bounded nesting."""
    if _is_number(value) and _range_problem(value):
        _fail(path, "a finite number", value, _range_problem(value))
    if isinstance(value, (list, dict)):
        inner = _deeper(path, depth, value)
        for key, v in (value.items() if isinstance(value, dict) else enumerate(value)):
            free(v, _child(path, key), inner)


def scalar(value: Any, path: str, depth: int) -> None:
    """A case field: compared, hashed and printed, so a string, a number, true/false or null."""
    if isinstance(value, (list, dict)):
        _fail(path, "a string, number, true, false or null", value)
    free(value, path, depth)


def measure(value: Any, path: str, depth: int) -> None:
    """A metric: a figure >= 0, a label, a verdict or null, or lists and objects of those."""
    if isinstance(value, (list, dict)):
        inner = _deeper(path, depth, value)
        for key, v in (value.items() if isinstance(value, dict) else enumerate(value)):
            measure(v, _child(path, key), inner)
    elif _is_number(value):
        FIGURE(value, path, depth)


# --- the schema -----------------------------------------------------------------------------------------------------

TEXT, MAYBE_TEXT, FLAG = text(), text(nullable=True), flag()
POSITIVE, COUNT = number(1, integer=True), number(0, integer=True)
FIGURE = number(nullable=True)
"""A measured figure: time, bytes, FLOP/s, an error, a count; null where it was not finite."""

LENGTHS = array(POSITIVE)
"""A packed batch's per-sequence lengths (``seqlens_q``, ``seqlens_kv``)."""
_KERNEL_FIELDS = obj(
    required={**dict.fromkeys(("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim"), POSITIVE),
              "dtype": TEXT, "device": TEXT, "mask": TEXT, "window": number(1, integer=True, nullable=True),
              "scale": number(0, above=True, nullable=True), "pass": TEXT},
    optional={"block": number(1, integer=True, nullable=True), "seqlens_q": LENGTHS, "seqlens_kv": LENGTHS,
              "page_size": number(1, integer=True, nullable=True), "head_dim_v": number(1, integer=True, nullable=True),
              "softcap": number(0, above=True, nullable=True), "bias": MAYBE_TEXT, "sinks": FLAG},
    rest=scalar,
)


def _lengths_fit(value: dict, path: str) -> None:
    """A packed case's lengths as ``Case`` takes them: both or neither, one per sequence, the longest seq_q/seq_kv.

    Readers sum them, key on them and rebuild the Case from them, so lengths that disagree with the rest of the
    case are refused here rather than as a ValueError deep in a report.
    """
    if ("seqlens_q" in value) != ("seqlens_kv" in value):
        given, other = ("seqlens_q", "seqlens_kv") if "seqlens_q" in value else ("seqlens_kv", "seqlens_q")
        raise _Problem(f"{_child(path, other)}: missing (a packed case gives {given} and {other} together)")
    for name, longest in (("seqlens_q", "seq_q"), ("seqlens_kv", "seq_kv")):
        lengths = value.get(name)
        if lengths is None:
            continue
        expected = f"one length per sequence ({value['batch']}, the batch), the longest {value[longest]} ({longest})"
        if len(lengths) != value["batch"] or max(lengths, default=0) != value[longest]:
            _fail(_child(path, name), expected, lengths, f" of {len(lengths)}, longest {max(lengths, default=0)}")


def kernel_case(value: Any, path: str, depth: int) -> None:
    """A kernel case's fields; a packed one's lengths agree with its batch and longest sequences."""
    _KERNEL_FIELDS(value, path, depth)
    _lengths_fit(value, path)


KERNEL_CASE = kernel_case
TASK_CASE = obj(
    required={"task": TEXT, **dict.fromkeys(("seq_len", "vocab", "d_model", "heads", "layers", "batch", "steps",
                                             "eval_size"), POSITIVE),
              "lr": number(0, above=True), "device": TEXT, "threads": number(1, integer=True, nullable=True)},
    rest=scalar,
)


def case(value: Any, path: str, depth: int) -> None:
    """A kernel case, or a quality task's configuration (it has a ``task``)."""
    (TASK_CASE if isinstance(value, dict) and "task" in value else KERNEL_CASE)(value, path, depth)


NUMERIC_METRICS = ("time_ms_median", "time_ms_iqr", "time_ms_n", "process_spread", "timing_inner", "tflops", "gbps",
                   "pct_peak_tflops", "pct_peak_gbps", "peak_bytes", "build_s", "correctness_seeds",
                   "correctness_rows", "kernel_rel_err",
                   *(f"{p}{e}" for p in ("", "dq_", "dk_", "dv_")
                     for e in ("rel_err", "max_abs_err", "baseline_rel_err", "nonfinite")))
"""Metrics the readers compute with: each a figure or null, never a string or a list."""
TASK_STATS = ("_mean", "_std", "_min", "_max")


def metric(value: Any, path: str, depth: int) -> None:
    """A metric not named in METRICS: figures if its name says it is a task statistic, else ``measure``."""
    (FIGURE if path.endswith(TASK_STATS) else measure)(value, path, depth)


BLOCK_TABLE = obj(required={"seed": number(None, integer=True), "sha256": TEXT},
                  optional={"pages": array(array(COUNT))})
"""One trial's page table of a paged pair (runner.paging_metrics): its seed, digest, and maybe its rows."""
METRICS = obj(
    optional={**dict.fromkeys(NUMERIC_METRICS, FIGURE), "time_ms_process_medians": array(FIGURE),
              "page_pool": COUNT, "block_tables": array(BLOCK_TABLE),
              "timing_method": TEXT, "timing_notes": array(TEXT), "seeds": array(COUNT),
              "per_seed": array(obj(rest=measure)), "agrees_with_eager": flag(nullable=True),
              "agreement": MAYBE_TEXT},
    rest=metric,
)
RECORD = obj(
    required={"impl": TEXT, "case": case, "status": text(choices=STATUSES), "reason": TEXT, "plugin": TEXT,
              "version": TEXT, "exact": FLAG, "ranked": FLAG, "metrics": METRICS, "hardware": TEXT},
    optional={"where": obj()},
)
PLUGIN = obj(required={"name": TEXT, "distribution": TEXT, "version": TEXT, "builtin": FLAG,
                       "implementations": array(TEXT), "errors": array(TEXT), "ok": FLAG})
RUN = obj(
    required={"id": TEXT, "suite": obj(required={"name": TEXT, "path": TEXT, "sha256": TEXT}),
              "device": TEXT, "hardware": TEXT, "baseline": MAYBE_TEXT, "started": TEXT, "finished": MAYBE_TEXT,
              "interrupted": FLAG, "attnbench": TEXT, "command": array(TEXT),
              "environment": obj(optional=dict.fromkeys(("hostname", "torch", "cpu", "platform", "python"), MAYBE_TEXT)),
              "plugins": array(PLUGIN), "options": obj(), "resumed_records": COUNT},
    optional={"executor": obj()},
)


def _schema(value: Any, path: str, depth: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value != SCHEMA_VERSION:
        raise _Problem(f"results schema {_show(value)}, this attnbench reads {SCHEMA_VERSION}")


FILE = obj(required={"schema": _schema, "run": RUN, "records": array(RECORD)})


def record_problem(value: Any) -> str | None:
    """Why ``value`` is not a record as results.json holds one (a journal line, say), or None when it is."""
    try:
        RECORD(value, "record", 0)
    except _Problem as exc:
        return str(exc)
    return None


def check(data: Any, source: str) -> None:
    """Raise ResultsError, naming ``source`` and the JSON path, unless ``data`` fits the results schema."""
    if not isinstance(data, dict) or "records" not in data:
        raise ResultsError(f"{source}: not an attnbench results file (no 'records')")
    try:
        if "schema" in data:  # another version's file: say so before its fields do
            _schema(data["schema"], "schema", 0)
        FILE(data, "", 0)
    except _Problem as exc:
        raise ResultsError(f"{source}: {exc}") from None
