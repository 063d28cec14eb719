"""One ``attnbench run``: its directory, journal, resume, executor, quality tasks, and the results file.

Records reach the journal as they are measured, wherever the executor measured
them; ``results.json`` is written atomically at the end, and also when the run
is interrupted (Ctrl-C, SIGTERM), so nothing measured is lost.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import attnbench
from attnbench.case import Case
from attnbench.executors import ExecutorConfig, open_executor
from attnbench.hardware import fingerprint, hardware_label
from attnbench.implementation import Implementation
from attnbench.plugins import Registry
from attnbench.quality.config import TaskConfig
from attnbench.quality.runner import plan_tasks, record_case, run_tasks
from attnbench.results import RESCHEDULE, Journal, Record, pair_key, write_results
from attnbench.runner import Pair, RunOptions, plan

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
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    tasks: list[TaskConfig] = field(default_factory=list)
    """Quality tasks, trained on this machine after the cases (attnbench.quality.runner)."""


def new_run_id(suite_name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.getpid()}"


def file_hash(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run(spec: RunSpec, out_dir: Path, *, resume: bool = False,
        on_plan: Callable[[int], None] | None = None,
        on_start: Callable[[Pair], None] | None = None,
        on_record: Callable[[Record], None] | None = None) -> tuple[dict, list[Record], bool]:
    """Measure every pair the journal does not settle; return (run info, records, interrupted?).

    On resume a pair the fleet failed (preempted, infeasible, node lost) is
    measured again; every other record in the journal stands.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    journal_path = out_dir / JOURNAL_NAME
    # The journal may hold a pair twice (a preempted record, then its measurement): the last one counts.
    latest = {r.key: r for r in Journal.read(journal_path)} if resume else {}
    previous = [r for r in latest.values() if r.status not in RESCHEDULE]
    if not resume and journal_path.exists():
        journal_path.unlink()
    done = {r.key for r in previous}
    todo, settled = plan(spec.cases, spec.impls, spec.options, spec.predict)
    todo = [p for p in todo if pair_key(p.impl.name, p.case.to_dict()) not in done]
    settled = [r for r in settled if r.key not in done]
    task_todo, task_settled = plan_tasks(spec.tasks, spec.impls, spec.options)
    task_todo = [p for p in task_todo if pair_key(p.impl.name, record_case(p.case)) not in done]
    settled += [r for r in task_settled if r.key not in done]

    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    print_ = fingerprint()
    run_info = {
        "id": out_dir.name,
        "suite": {"name": spec.suite_name, "path": spec.suite_path, "sha256": spec.suite_hash},
        "device": spec.device,
        "hardware": hardware_label(print_, spec.device),
        "executor": spec.executor.to_dict(),
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
        on_plan(len(todo) + len(settled) + len(task_todo))
    interrupted = False
    stop = _StopSignals()
    previous_handlers = {signum: signal.signal(signum, stop.handle) for signum in (signal.SIGTERM, signal.SIGINT)}

    def keep(record: Record) -> None:
        with stop.held():  # the journal and the results file must agree, whenever the run is stopped
            journal.append(record)
            records.append(record)
        if on_record:
            on_record(record)

    try:
        for record in settled:
            keep(record)
        if todo:  # nothing left to measure starts no workers, jobs or cluster
            with open_executor(spec.executor, spec.options, device=spec.device, run_dir=out_dir) as executor:
                for record in executor.submit(todo, on_start=on_start):
                    keep(record)
        if task_todo:
            for record in run_tasks(task_todo, spec.options, previous=previous, on_start=on_start):
                keep(record)
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        journal.close()
        run_info["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        run_info["interrupted"] = interrupted
        if spec.executor.remote:
            # The measuring machines, not the one that submitted: each record names its own.
            run_info["hardware"] = " + ".join(sorted({r.hardware for r in records if r.hardware})) or "?"
        write_results(out_dir / RESULTS_NAME, run_info, _in_plan_order(records, spec))
    return run_info, records, interrupted


class _StopSignals:
    """SIGTERM (Interrupted) and SIGINT (KeyboardInterrupt) stop the run at once, except in a ``held()`` block,
    which they stop as it ends. Python runs handlers in the main thread, between two of its steps, so a
    flag is enough; blocking the signals would not be, with executor threads about to take them."""

    def __init__(self) -> None:
        self._holding = False
        self._pending: BaseException | None = None

    def handle(self, signum, frame) -> None:
        stop = KeyboardInterrupt() if signum == signal.SIGINT else Interrupted()
        if self._holding:
            self._pending = stop
            return
        raise stop

    @contextmanager
    def held(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            if self._pending is not None:
                stop, self._pending = self._pending, None
                raise stop


def _in_plan_order(records: list[Record], spec: RunSpec) -> list[Record]:
    """Records ordered by case, then implementation, as the suite lists them."""
    cases = [c.to_dict() for c in spec.cases] + [record_case(t) for t in spec.tasks]
    case_index = {json.dumps(c, sort_keys=True): i for i, c in enumerate(cases)}
    impl_index = {impl.name: i for i, impl in enumerate(spec.impls)}

    def position(r: Record) -> tuple:
        case_pos = case_index.get(json.dumps(r.case, sort_keys=True), len(case_index))
        return case_pos, impl_index.get(r.impl, len(impl_index)), r.impl

    return sorted(records, key=position)
