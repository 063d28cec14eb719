"""Runner: what to measure (options, pairs, the plan) and the worker process that measures it.

The parent never runs a plugin's kernel: it talks to ``python -m
attnbench.worker`` children. Executors (``attnbench.executors``) decide where
those children run: this machine's GPUs, Slurm jobs or Ray tasks. Every pair
yields exactly one record, whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from attnbench.case import Case
from attnbench.implementation import Implementation
from attnbench.options import Correctness, Timing, trial_seed
from attnbench.packing import block_table
from attnbench.plugins import ONLY_ENV
from attnbench.protocol import MAX_REPLY_BYTES, ProtocolViolation, new_request, parse_reply
from attnbench.results import Record
from attnbench.worker import MEMORY_LIMIT_ENV

WORKER_START_TIMEOUT_S = 180.0
STDERR_TAIL_LINES = 12
EXIT_POLL_S = 0.25
"""How often a worker that sends nothing is checked for having exited."""


@dataclass(frozen=True)
class RunOptions:
    """How to measure: the suite's settings after command-line overrides."""

    seed: int = 0
    correctness: Correctness = field(default_factory=Correctness)
    timing: Timing = field(default_factory=Timing)
    timeout_s: float = 300.0
    memory_budget_bytes: int | None = None
    device_name: str = ""
    """The measured device's name (a GPU's, or the CPU model), for the peak table and records."""
    peak_tflops: float | None = None
    """A measured compute ceiling that replaces the published peak table (any device)."""
    peak_gbps: float | None = None
    """A measured bandwidth ceiling that replaces the published peak table (any device)."""
    worker_memory_bytes: int | None = None
    """CPU: address space each worker may add after start-up (RLIMIT_AS), so a greedy implementation fails alone."""
    ceilings: dict | None = None
    """This machine's measured ceilings (attnbench.ceilings.measure): the roofline and the implausible-time floor."""
    plugins: tuple[str, ...] | None = None
    """The plugins whose implementations the run measures: workers import only these and the built-ins (None: all)."""


class WorkerDied(Exception):
    """The worker process exited (crash, abort, kill) before answering."""

    def __init__(self, returncode: int | None, stderr_tail: str) -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        super().__init__(describe_exit(returncode))


class WorkerTimeout(Exception):
    """The worker did not answer within the case's timeout and was killed."""


def describe_exit(returncode: int | None) -> str:
    """'killed by SIGSEGV' / 'exited with status 3'."""
    if returncode is None:
        return "worker vanished"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _child_setup() -> None:
    """In the child before exec: its own process group, and SIGKILL when the runner dies.

    The group is what gets killed: a helper process a plugin forked dies with
    its worker instead of outliving the run and holding the reply pipe open.
    """
    import ctypes  # only in the forked child, where the parent's imports are not in the way

    os.setpgid(0, 0)
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkerProcess:
    """One ``python -m attnbench.worker`` child, restarted after crashes and timeouts."""

    def __init__(self, index: int, env: dict[str, str] | None = None) -> None:
        self.index = index
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._stderr = None
        self._buffer = b""
        self.starts = 0

    def start(self) -> None:
        self._stderr = tempfile.TemporaryFile()
        self._buffer = b""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attnbench.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=self.env,
            preexec_fn=_child_setup if sys.platform == "linux" else None,
        )
        self.starts += 1

    def wait_ready(self) -> dict:
        """The worker's first line: it has loaded its plugins (and says which failed)."""
        ready = self._read_line(WORKER_START_TIMEOUT_S)
        try:
            reply = json.loads(ready)
        except (ValueError, RecursionError):
            reply = None
        if not isinstance(reply, dict) or reply.get("ready") is not True:
            self.kill()
            raise ProtocolViolation("the worker's first line is not its ready line")
        return reply

    def ensure_started(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.kill()  # the group of a worker that died: children it left behind go with it
            self.start()
            self.wait_ready()

    def call(self, request: dict, timeout_s: float) -> dict:
        """Send one request (with a fresh id) and wait for the reply that answers it.

        Raises ProtocolViolation, after killing the worker, when the line that
        comes back is not that reply, or more than one line does.
        """
        if self._stray_output():
            # Bytes arrived between requests: something in the worker writes to the pipe. No pair is
            # waiting for them, so none is blamed; a fresh worker takes the next request.
            self.kill()
        self.ensure_started()
        assert self.proc is not None and self.proc.stdin is not None
        request = new_request(request)
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None
        line = self._read_line(timeout_s)
        try:
            reply = parse_reply(line, request)
            if self._buffer or self._stray_output():
                raise ProtocolViolation("more than one line came back for one request")
        except ProtocolViolation:
            self.kill()
            raise
        return reply

    def _stray_output(self) -> bool:
        """Whether the pipe holds bytes nobody asked for (read without waiting)."""
        if self.proc is None or self.proc.stdout is None:
            return False
        if self._buffer:
            return True
        ready, _, _ = select.select([self.proc.stdout.fileno()], [], [], 0)
        return bool(ready)

    def _read_line(self, timeout_s: float) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerTimeout(f"no answer within {timeout_s:g} s")
            ready, _, _ = select.select([fd], [], [], min(remaining, EXIT_POLL_S))
            if not ready:
                # A child the worker forked may hold the pipe open after the worker died: its exit is the signal.
                if self.proc.poll() is not None:
                    raise self._died()
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise self._died()
            self._buffer += chunk
            if len(self._buffer) > MAX_REPLY_BYTES:
                self.kill()
                raise ProtocolViolation(f"a reply line longer than {MAX_REPLY_BYTES >> 20} MiB")
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _died(self) -> WorkerDied:
        assert self.proc is not None
        try:
            returncode = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self.proc.returncode if self.proc is not None else None
        tail = self.stderr_tail()
        self._kill_group()
        self.proc = None
        return WorkerDied(returncode, tail)

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - 8192))
        text = self._stderr.read().decode(errors="replace")
        self._stderr.seek(0, os.SEEK_END)
        return "\n".join(text.strip().splitlines()[-lines:])

    def interrupt(self) -> None:
        """Kill the process from another thread: the thread using this worker sees it die and stops waiting."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self._kill_group()

    def kill(self) -> None:
        """Kill the worker and everything in its process group, and forget it."""
        if self.proc is not None:
            self._kill_group()
            self.proc.wait()
        self.proc = None
        self._buffer = b""

    def _kill_group(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            # The worker's pid is its group's id (_child_setup); the group outlives its leader while members remain.
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if proc.poll() is None:
                proc.kill()


def worker_env(options: RunOptions, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment workers start with: ``env`` (default: this process's), the per-worker memory limit, and
    the plugins they may import."""
    env = dict(os.environ if env is None else env)
    if options.worker_memory_bytes:
        env[MEMORY_LIMIT_ENV] = str(options.worker_memory_bytes)
    if options.plugins is not None:
        env[ONLY_ENV] = ",".join(options.plugins)
    return env


def call_or_failure(worker: WorkerProcess, request: dict, timeout_s: float) -> dict:
    """The worker's reply, or a reply saying how the worker failed (it is restarted on its next call)."""
    try:
        return worker.call(request, timeout_s)
    except WorkerTimeout as exc:
        return {"status": "timeout", "reason": f"{exc}; worker killed", "metrics": {}, "samples_ms": []}
    except ProtocolViolation as exc:
        return {"status": "crashed", "reason": f"worker protocol violated: {exc}; worker restarted", "metrics": {},
                "samples_ms": []}
    except WorkerDied as exc:
        reason = f"worker {describe_exit(exc.returncode)}"
        if exc.returncode == -signal.SIGKILL:
            reason += " (by the OS out-of-memory killer, if nobody else sent it)"
        if exc.stderr_tail:
            reason += f"; stderr: {exc.stderr_tail[-600:]}"
        return {"status": "crashed", "reason": reason, "metrics": {}, "samples_ms": []}


@dataclass
class Pair:
    """One case x implementation to measure."""

    case: Case
    impl: Implementation


OnStart = Callable[[Pair], None]
"""Called as a pair starts (or, under Slurm, as its job does): progress display."""


def plan(cases: Iterable[Case], impls: list[Implementation], options: RunOptions,
         predict: Callable[[Case, Implementation], int] | None = None) -> tuple[list[Pair], list[Record]]:
    """Split pairs into those to measure and those settled without a worker (unsupported, skipped)."""
    todo, settled = [], []
    for case in cases:
        for impl in impls:
            reason = impl.declines(case)
            if reason:
                settled.append(make_record(impl, case, "unsupported", reason, options))
                continue
            if predict is not None and options.memory_budget_bytes is not None:
                need = predict(case, impl)
                if need > options.memory_budget_bytes:
                    settled.append(make_record(impl, case, "skipped",
                                               f"predicted peak {need / 2**30:.2f} GiB exceeds the memory budget "
                                               f"{options.memory_budget_bytes / 2**30:.2f} GiB", options))
                    continue
            todo.append(Pair(case, impl))
    return todo, settled


TABLE_PAGES_RECORDED = 1024
"""A paged pair's record holds each trial's page table in full up to this many pages; a larger pool's tables
are recorded by seed and digest only (``packing.block_table`` rebuilds them), so a record stays a few KB."""


def trial_seeds(options: RunOptions) -> list[int]:
    """The seeds of the input sets a pair's workers make: ``options.trial_seed`` per correctness trial, as
    ``measurement._seed`` draws them (a run that checks none times on trial 0's)."""
    return [trial_seed(options.seed, trial) for trial in range(options.correctness.seeds) or [0]]


def paging_metrics(case: Case, options: RunOptions) -> dict:
    """What a reader needs to rebuild a paged pair's caches: the pool's size and each trial's page table.

    Computed here in the parent from the case and the seeds (the harness's tables are a function of both), so the
    worker protocol carries nothing more. ``pages`` lists sequence i's pages in order (the table the kernel got is
    these rows padded with 0); ``sha256`` digests that padded int32 table's little-endian bytes, row after row.
    Empty for a case that is not paged.
    """
    if not case.paged:
        return {}
    tables = []
    for seed in trial_seeds(options):
        table = block_table(case, seed)
        entry = {"seed": seed, "sha256": hashlib.sha256(table.numpy().astype("<i4").tobytes()).hexdigest()}
        if case.num_pages <= TABLE_PAGES_RECORDED:
            entry["pages"] = [row[:n] for row, n in zip(table.tolist(), case.pages_per_sequence)]
        tables.append(entry)
    return {"page_pool": case.num_pages, "block_tables": tables}


def make_record(impl: Implementation, case: Case, status: str, reason: str, options: RunOptions, **extra) -> Record:
    """The record of one pair, with the implementation's identity filled in (and a paged case's page tables)."""
    paging = paging_metrics(case, options)
    if paging:
        extra["metrics"] = {**paging, **extra.get("metrics", {})}
    return Record(impl=impl.name, case=case.to_dict(), status=status, reason=reason, plugin=impl.plugin,
                  version=impl.version, exact=impl.exact, ranked=impl.ranked, hardware=options.device_name, **extra)
