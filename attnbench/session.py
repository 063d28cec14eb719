"""One ``attnbench run``: its directory, journal, resume, and the results file.

Records reach the journal as they are measured; ``results.json`` is written
atomically at the end, and also when the run is interrupted (Ctrl-C, SIGTERM),
so nothing measured is lost.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import attnbench
from attnbench.case import Case
from attnbench.hardware import fingerprint, hardware_label
from attnbench.implementation import Implementation
from attnbench.plugins import Registry
from attnbench.results import Journal, Record, pair_key, write_results
from attnbench.runner import LocalExecutor, Pair, RunOptions, plan

JOURNAL_NAME = "journal.jsonl"
RESULTS_NAME = "results.json"


class Interrupted(Exception):
    """SIGTERM (or Ctrl-C) arrived: stop measuring, keep what was measured."""


@dataclass
class RunSpec:
    """What to run: the suite's identity, the cases, the implementations, and how."""

    suite_name: str
    suite_path: str
    suite_hash: str
    device: str
    cases: list[Case]
    impls: list[Implementation]
    options: RunOptions
    baseline: str | None = None
    registry: Registry | None = None
    predict: Callable[[Case, Implementation], int] | None = None
    extra_run_info: dict = field(default_factory=dict)


def new_run_id(suite_name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.getpid()}"


def file_hash(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run(spec: RunSpec, out_dir: Path, *, resume: bool = False,
        on_plan: Callable[[int], None] | None = None,
        on_start: Callable[[Pair], None] | None = None,
        on_record: Callable[[Record], None] | None = None) -> tuple[dict, list[Record], bool]:
    """Measure every pair not already in the journal; return (run info, records, interrupted?)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    journal_path = out_dir / JOURNAL_NAME
    previous = Journal.read(journal_path) if resume else []
    if not resume and journal_path.exists():
        journal_path.unlink()
    done = {r.key for r in previous}
    todo, settled = plan(spec.cases, spec.impls, spec.options, spec.predict)
    todo = [p for p in todo if pair_key(p.impl.name, p.case.to_dict()) not in done]
    settled = [r for r in settled if r.key not in done]

    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    print_ = fingerprint()
    run_info = {
        "id": out_dir.name,
        "suite": {"name": spec.suite_name, "path": spec.suite_path, "sha256": spec.suite_hash},
        "device": spec.device,
        "hardware": hardware_label(print_, spec.device),
        "baseline": spec.baseline,
        "started": started,
        "finished": None,
        "attnbench": attnbench.__version__,
        "command": sys.argv,
        "environment": print_,
        "plugins": [p.to_dict() for p in spec.registry.plugins] if spec.registry else [],
        "options": asdict(spec.options),
        "resumed_records": len(previous),
    } | spec.extra_run_info

    records = list(previous)
    journal = Journal(journal_path)
    if on_plan is not None:
        on_plan(len(todo) + len(settled))
    interrupted = False
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        for record in settled:
            journal.append(record)
            records.append(record)
            if on_record:
                on_record(record)
        with LocalExecutor(spec.options) as executor:
            for record in executor.submit(todo, on_start=on_start):
                journal.append(record)
                records.append(record)
                if on_record:
                    on_record(record)
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        journal.close()
        run_info["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        run_info["interrupted"] = interrupted
        write_results(out_dir / RESULTS_NAME, run_info, _in_plan_order(records, spec))
    return run_info, records, interrupted


def _raise_interrupted(signum, frame):
    raise Interrupted()


def _in_plan_order(records: list[Record], spec: RunSpec) -> list[Record]:
    """Records ordered by case, then implementation, as the suite lists them."""
    case_index = {json.dumps(c.to_dict(), sort_keys=True): i for i, c in enumerate(spec.cases)}
    impl_index = {impl.name: i for i, impl in enumerate(spec.impls)}

    def position(r: Record) -> tuple:
        case_pos = case_index.get(json.dumps(r.case, sort_keys=True), len(case_index))
        return case_pos, impl_index.get(r.impl, len(impl_index)), r.impl

    return sorted(records, key=position)
