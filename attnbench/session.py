"""One ``attnbench run``: its files and their lock, journal, resume, executor, quality tasks, and the results file.

Records reach the journal as they are measured, wherever the executor measured
them; ``results.json`` is written atomically at the end, and also when the run
is interrupted (Ctrl-C, SIGTERM), so nothing measured is lost. The journal's
first line says how the run was made, and ``--resume`` continues only a run made
the same way.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
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
from attnbench.ceilings import RooflineJudge
from attnbench.errors import UserError
from attnbench.executors import ExecutorConfig, open_executor
from attnbench.hardware import fingerprint, hardware_label, published_peaks
from attnbench.implementation import Implementation
from attnbench.plugins import Registry
from attnbench.quality.config import TaskConfig
from attnbench.quality.runner import plan_tasks, record_case, run_tasks
from attnbench.report.html import PAGE_NAME
from attnbench.results import JOURNAL_FORMAT, RESCHEDULE, Journal, JournalContents, Record, pair_key, write_results
from attnbench.runner import Pair, RunOptions, plan

JOURNAL_NAME = "journal.jsonl"
RESULTS_NAME = "results.json"
LOCK_NAME = ".attnbench.lock"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    remeasure_ceilings: Callable[[dict], dict] | None = None
    """Measures this machine's ceilings again, keeping the higher of each (ceilings.measured_ceilings)."""
    """Quality tasks, trained on this machine after the cases (attnbench.quality.runner)."""


def new_run_id(suite_name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{os.getpid()}"


def file_hash(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class RunPaths:
    """A run's files. ``--output DIR`` (and the default): DIR/journal.jsonl, results.json, index.html;
    ``--output FILE.json``: FILE.json with FILE.journal.jsonl and FILE.html beside it, so runs can share a folder."""

    target: Path
    """What ``--output`` and ``--resume`` name: the run directory or the results file."""
    journal: Path
    results: Path
    page: Path
    lock: Path
    work: Path
    """Where an executor keeps its own files (Slurm's jobs)."""

    @classmethod
    def of(cls, path: str | os.PathLike) -> RunPaths:
        """The run at ``path``: a results file when it ends in ``.json``, else a run directory."""
        path = Path(path)
        if path.suffix == ".json":
            return cls(path, path.with_suffix(".journal.jsonl"), path, path.with_suffix(".html"),
                       path.with_suffix(".lock"), path.with_suffix(".run"))
        return cls(path, path / JOURNAL_NAME, path / RESULTS_NAME, path / PAGE_NAME, path / LOCK_NAME, path)

    @property
    def folder(self) -> Path:
        return self.results.parent

    @property
    def run_id(self) -> str:
        return self.results.stem if self.target == self.results else self.target.name

    def written(self) -> list[Path]:
        """Those of the run's files that exist: a fresh run writes into none of them."""
        return [p for p in (self.journal, self.results, self.page) if p.exists()]

    def refuse_used(self) -> None:
        """UserError when a fresh run would overwrite files it did not write (an earlier run's, or anyone's)."""
        found = ", ".join(str(p) for p in self.written())
        if self.journal.exists() or self.results.exists():
            raise UserError(f"--output {self.target}: an earlier run is there ({found}); continue it with "
                            f"--resume {self.target}, or give --output a fresh path")
        if found:
            raise UserError(f"--output {self.target}: {found} exists, and this run would replace it; "
                            "give --output a fresh path")


class RunLock:
    """An exclusive ``flock`` on the run's lock file while it writes, so a second run into the same files
    stops at once; the OS releases it should the process die. The file says the holder's pid."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self._fd = -1

    def __enter__(self) -> RunLock:
        path = self.paths.lock
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise UserError(f"{path}: another attnbench run{f' (pid {holder})' if holder else ''} is writing "
                                f"{self.paths.target}; wait for it to end, or give --output a fresh path") from None
            # The holder unlinks the file as it lets go: a lock on that file guards nothing, so lock the new one.
            if _same_file(path, fd):
                break
            os.close(fd)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is for the message only
        return self

    def __exit__(self, *exc: object) -> None:
        # Unlink while still holding it, so whoever opened it meanwhile sees it gone and opens afresh.
        self.paths.lock.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return text if text.isdigit() else ""


def _same_file(path: Path, fd: int) -> bool:
    try:
        named, held = path.stat(), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def journal_header(spec: RunSpec, memory_budget: str | None = None) -> dict:
    """The journal's first line: what must match for ``--resume`` to add to the run.

    ``memory_budget`` is the budget as asked for (``--memory-budget``'s text; None: the suite's, which
    its sha256 covers), not the bytes, which follow free memory and so differ from one start to the next.
    """
    import torch

    options = asdict(spec.options)
    return {
        "journal": JOURNAL_FORMAT,
        "suite": {"name": spec.suite_name, "sha256": spec.suite_hash},
        "attnbench": attnbench.__version__,
        "torch": torch.__version__,
        "device": spec.device,
        "options": {"seed": options["seed"], "correctness": options["correctness"], "timing": options["timing"],
                    "memory_budget": memory_budget or "suite's"},
    }


def read_for_resume(paths: RunPaths, header: dict) -> JournalContents:
    """The journal of the run to continue; UserError when it was made otherwise than ``header`` says,
    or by an attnbench that wrote no header."""
    found = Journal.scan(paths.journal)
    if found.header is None and found.records:
        raise UserError(f"--resume {paths.target}: {paths.journal} has no header line (an older attnbench wrote it), "
                        "so nothing says how that run was made; start a fresh run with --output NEW_PATH")
    if found.header is not None:
        # Through JSON, as the header was written: tuples become lists.
        differences = _differences(found.header, json.loads(json.dumps(header)))
        if differences:
            raise UserError(f"--resume {paths.target}: that run differs from this one (then != now): {'; '.join(differences)}; "
                            "resume with the same suite, attnbench and options, or start afresh with --output NEW_PATH")
    return found


def _differences(old: object, new: object, where: str = "") -> list[str]:
    """``where: old != new`` for each leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(key), new.get(key), f"{where} {key}".strip())]
    return [] if old == new else [f"{where or 'header'}: {_shown(old)} != {_shown(new)}"]


def _shown(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run(spec: RunSpec, out: RunPaths | Path, *, resume: bool = False, header: dict | None = None,
        on_plan: Callable[[int], None] | None = None,
        on_start: Callable[[Pair], None] | None = None,
        on_record: Callable[[Record], None] | None = None) -> tuple[dict, list[Record], bool]:
    """Measure every pair the journal does not settle; return (run info, records, interrupted?).

    ``out`` is the run's files, or a run directory. A fresh run refuses files that exist;
    on resume, the journal's header must match ``header`` (default ``journal_header(spec)``).
    A pair the fleet failed (preempted, infeasible, node lost) is measured again; every other
    record in the journal stands. Hold a ``RunLock`` around it where another run may write the same files.
    """
    paths = out if isinstance(out, RunPaths) else RunPaths.of(out)
    header = header or journal_header(spec)
    paths.folder.mkdir(parents=True, exist_ok=True)
    if not resume:
        paths.refuse_used()
    found = read_for_resume(paths, header) if resume else JournalContents()
    if resume and found.header is None:
        # No header and no record (killed while writing its first line): nothing to continue, so start it afresh.
        paths.journal.unlink(missing_ok=True)
    # The journal may hold a pair twice (a preempted record, then its measurement): the last one counts.
    latest = {r.key: r for r in found.records}
    previous = [r for r in latest.values() if r.status not in RESCHEDULE]
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
        "id": paths.run_id,
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
        # The ceilings are the run's own entry, beside the published peaks: not repeated among the options.
        "options": {k: v for k, v in asdict(spec.options).items() if k != "ceilings"},
        "ceilings": {"measured": spec.options.ceilings, "published": published_peaks(spec.device, print_)},
        "resumed_records": len(previous),
    } | spec.extra_run_info

    records = list(previous)
    journal = Journal(paths.journal, header)
    if on_plan is not None:
        on_plan(len(todo) + len(settled) + len(task_todo))
    interrupted = False
    stop = _StopSignals()
    previous_handlers = {signum: signal.signal(signum, stop.handle) for signum in (signal.SIGTERM, signal.SIGINT)}

    roof = RooflineJudge(spec.options.ceilings, peak_tflops=spec.options.peak_tflops,
                         peak_gbps=spec.options.peak_gbps, remeasure=spec.remeasure_ceilings)

    def keep(record: Record) -> None:
        record = roof.judge(record)
        with stop.held():  # the journal and the results file must agree, whenever the run is stopped
            journal.append(record)
            records.append(record)
        if on_record:
            on_record(record)

    failure: BaseException | None = None
    try:
        for record in settled:
            keep(record)
        if todo:  # nothing left to measure starts no workers, jobs or cluster
            with open_executor(spec.executor, spec.options, device=spec.device, run_dir=paths.work) as executor:
                for record in executor.submit(todo, on_start=on_start):
                    keep(record)
        if task_todo:
            for record in run_tasks(task_todo, spec.options, previous=previous, on_start=on_start):
                keep(record)
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
    except BaseException as exc:
        failure = exc
        raise
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        journal.close()
        run_info["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        run_info["ceilings"]["measured"] = roof.ceilings  # measured again during the run if a record beat them
        run_info["interrupted"] = interrupted
        if spec.executor.remote:
            # The measuring machines, not the one that submitted: each record names its own.
            run_info["hardware"] = " + ".join(sorted({r.hardware for r in records if r.hardware})) or "?"
        try:
            write_results(paths.results, run_info, _in_plan_order(records, spec))
        except OSError as exc:
            if failure is None:
                raise naming(exc, paths.results) from exc
            # Else the run's own failure (the journal's disk full, say) is the one to report.
    return run_info, records, interrupted


def naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as an OSError of the same kind that names ``path`` (a failed write names no file, or a temporary one)."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


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
