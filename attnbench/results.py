"""Results: the record, the crash-safe journal, JSON I/O and the pandas view.

``results.json`` holds ``{"schema": SCHEMA_VERSION, "run": {...}, "records": [...]}``;
docs/results.md documents every field, and ``read_results`` refuses a file that
does not fit them (``results_schema``). The journal (``journal.jsonl``) gets
each record as it is measured, flushed and fsynced, so a killed run loses at
most the pair in flight and ``--resume`` can pick up from it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# SCHEMA_VERSION and STATUSES live with the schema's checks; importing them from here keeps working.
from attnbench.results_schema import SCHEMA_VERSION, STATUSES, ResultsError, check, record_problem

MEASURED = ("ok", "incorrect")
"""Statuses that carry timings."""
FAILURES = ("incorrect", "implausible", "error", "timeout", "crashed")
"""Statuses that make ``--strict`` fail."""
RESCHEDULE = ("preempted", "infeasible", "node_lost")
"""Statuses that say what happened to the fleet, not to the implementation: ``--resume`` measures these pairs again."""


@dataclass
class Record:
    """One case x implementation pair, whatever happened to it."""

    impl: str
    case: dict[str, Any]
    status: str
    reason: str = ""
    plugin: str = ""
    version: str = ""
    exact: bool = True
    ranked: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)
    hardware: str = ""
    where: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")

    @property
    def key(self) -> tuple:
        """Identity of the pair: implementation and case fields."""
        return pair_key(self.impl, self.case)

    def to_dict(self) -> dict:
        return _finite(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def pair_key(impl: str, case: dict[str, Any]) -> tuple:
    return (impl, *sorted((k, json.dumps(v)) for k, v in case.items()))


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


JOURNAL_FORMAT = 1
"""The header's ``journal`` value: the first line of a run's journal says how the run was made."""


@dataclass
class JournalContents:
    """What a journal holds: its header (None: an old journal, or a job's), its records, and the lines it skipped."""

    header: dict | None = None
    records: list[Record] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """One line each: ``line N: why``; the torn last line of a killed run is among them."""


class Journal:
    """Append-only JSON-lines log of records, each line written whole, then fsynced.

    Opening it repairs a torn last line (the process died mid-write): cut, so the next
    record starts on a line of its own. A write that fails (disk full) is undone, so the
    journal stays readable; its OSError names the journal.
    """

    def __init__(self, path: Path, header: dict | None = None) -> None:
        self.path = Path(path)
        # os.open, not open(): no buffer left to flush (and fail again) at close, and mode 0666 less the umask.
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            self._repair()
            if header is not None and os.fstat(self._fd).st_size == 0:
                self._write(header)
        except BaseException:
            os.close(self._fd)
            raise

    def append(self, record: Record) -> None:
        self._write(record.to_dict())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _write(self, data: dict) -> None:
        line = memoryview((json.dumps(data) + "\n").encode("utf-8"))
        size = os.fstat(self._fd).st_size
        try:
            while line:
                line = line[os.write(self._fd, line):]
            os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, size)  # a line is in the journal whole or not at all
            except OSError:
                pass  # a torn line is cut when the journal is next opened
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def _repair(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return
        data = os.pread(self._fd, size, 0)
        start = data.rfind(b"\n") + 1
        if _parse(data[start:]) is _NOT_JSON:
            os.ftruncate(self._fd, start)
        else:  # whole but for its newline
            os.write(self._fd, b"\n")

    @staticmethod
    def scan(path: Path) -> JournalContents:
        """Everything in a journal, never raising on its contents: a line that is not a record is skipped, and said."""
        found = JournalContents()
        if not Path(path).exists():
            return found
        data = Path(path).read_bytes()
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            value = _parse(raw)
            if number == len(lines) and value is _NOT_JSON:
                found.skipped.append(f"line {number}: cut short (the run was stopped while writing it)")
            elif number == 1 and isinstance(value, dict) and "journal" in value:
                found.header = value
            elif isinstance(why := _record_or_why(value), str):
                found.skipped.append(f"line {number}: {why}")
            else:
                found.records.append(why)
        return found

    @staticmethod
    def read(path: Path) -> list[Record]:
        """The records of a journal, in order; its header and any line that is not a record are left out."""
        return Journal.scan(path).records


_NOT_JSON = object()


def _parse(raw: bytes) -> Any:
    """A line's JSON value; ``_NOT_JSON`` for a line that is not JSON."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _NOT_JSON


def _record_or_why(value: Any) -> Record | str:
    """The record a journal line holds, or why it holds none."""
    if value is _NOT_JSON:
        return "not JSON"
    # The rules results.json's records pass: a line that passes them reads back from results.json too.
    why = record_problem(value)
    return f"not a record ({why})" if why else Record.from_dict(value)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file in the same directory, fsync it and rename it over ``path``.

    The temporary file is opened with mode 0666 less the umask, as any file the user writes
    (mkstemp's 0600 would leave results.json and index.html unreadable to the group or a web server).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON atomically (``write_text_atomic``), non-finite floats as null."""
    write_text_atomic(path, json.dumps(_finite(data), indent=1))


def write_results(path: Path, run: dict, records: list[Record]) -> None:
    """Write ``results.json`` atomically."""
    write_json_atomic(path, {"schema": SCHEMA_VERSION, "run": run, "records": [r.to_dict() for r in records]})


def read_results(path: str | os.PathLike) -> dict:
    """Parse a results.json and check it against the schema (``results_schema.check``).

    Anything but a file attnbench could have written is a ResultsError naming the file and
    what is wrong where; a missing file is FileNotFoundError, for the caller to word.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path}: not UTF-8 text (byte {exc.start} is {raw[exc.start:exc.start + 1]!r})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        cut = " (the file ends early: truncated?)" if exc.pos >= len(text.rstrip()) else ""
        raise ResultsError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}{cut}") from None
    except RecursionError:
        # json recurses once per level and gives up near the interpreter's recursion limit (~1000).
        raise ResultsError(f"{path}: nested too deeply to be a results file") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ResultsError(f"{path}: not valid JSON: {exc}") from None
    check(data, str(path))
    return data


def load(path: str | os.PathLike):
    """One row per record as a pandas DataFrame: case fields, impl, status, reason and metrics as columns.

    A packed case's lengths are one text cell each (``"37,512,4096"``): a cell pandas can group by and CSV and
    Parquet write as they are, where a list would be neither. Metrics that are lists or objects (a paged pair's
    ``block_tables``) are left out.
    """
    import pandas as pd

    data = read_results(path)
    run = data["run"]
    rows = []
    for rec in data["records"]:
        row = {"run_id": run.get("id"), "suite": run.get("suite", {}).get("name"), "hardware": rec.get("hardware")}
        row.update({k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in rec["case"].items()})
        row.update({k: rec.get(k) for k in ("impl", "plugin", "version", "exact", "ranked", "status", "reason")})
        row.update({k: v for k, v in rec.get("metrics", {}).items() if not isinstance(v, (list, dict))})
        rows.append(row)
    return pd.DataFrame(rows)
