"""Runner: pairs cases with implementations and drives worker processes to measure them.

The parent never runs a plugin's kernel. Each case is measured in rounds:
round 0 (worker 0) builds, checks correctness over fresh seeds, measures
memory and times; rounds 1.. (workers 1..) build and time again, with the
implementations in another order, so process-to-process noise and drift hit
all implementations alike. Samples from all rounds are pooled into the
median and IQR. Every pair yields exactly one record, whatever happens.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

from attnbench.case import Case
from attnbench.hardware import device_peak
from attnbench.implementation import Implementation
from attnbench.measure.correctness import Tolerance
from attnbench.measure.timing import iqr
from attnbench.results import MEASURED, Record
from attnbench.worker import MEMORY_LIMIT_ENV

WORKER_START_TIMEOUT_S = 180.0
STDERR_TAIL_LINES = 12


@dataclass
class RunOptions:
    """How to measure: the suite's settings after command-line overrides."""

    seed: int = 0
    seeds: int = 3
    max_rows: int | None = 2048
    tolerance: Tolerance = field(default_factory=Tolerance)
    processes: int = 2
    min_time_s: float = 1.0
    min_samples: int = 5
    warmup_calls: int = 1
    cuda_repeats: int = 100
    flush_l2: bool = True
    cuda_graph: bool = False
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


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the runner dies, so no worker outlives a killed run."""
    import ctypes

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
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.starts += 1

    def wait_ready(self) -> dict:
        return self._read_reply(WORKER_START_TIMEOUT_S)

    def ensure_started(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
            self.wait_ready()

    def call(self, request: dict, timeout_s: float) -> dict:
        """Send one request and wait for its reply."""
        self.ensure_started()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None
        return self._read_reply(timeout_s)

    def _read_reply(self, timeout_s: float) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerTimeout(f"no answer within {timeout_s:g} s")
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise self._died()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _died(self) -> WorkerDied:
        assert self.proc is not None
        try:
            returncode = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self.proc.returncode
        tail = self.stderr_tail()
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

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self.proc = None


@dataclass
class Pair:
    case: Case
    impl: Implementation


def plan(cases: Iterable[Case], impls: list[Implementation], options: RunOptions,
         predict: Callable[[Case, Implementation], int] | None = None) -> tuple[list[Pair], list[Record]]:
    """Split pairs into those to measure and those settled without a worker (unsupported, skipped)."""
    todo, settled = [], []
    for case in cases:
        for impl in impls:
            reason = impl.declines(case)
            if reason:
                settled.append(_record(impl, case, "unsupported", reason, options))
                continue
            if predict is not None and options.memory_budget_bytes is not None:
                need = predict(case, impl)
                if need > options.memory_budget_bytes:
                    settled.append(_record(impl, case, "skipped",
                                           f"predicted peak {need / 2**30:.2f} GiB exceeds the memory budget "
                                           f"{options.memory_budget_bytes / 2**30:.2f} GiB", options))
                    continue
            todo.append(Pair(case, impl))
    return todo, settled


def _record(impl: Implementation, case: Case, status: str, reason: str, options: RunOptions, **extra) -> Record:
    return Record(impl=impl.name, case=case.to_dict(), status=status, reason=reason, plugin=impl.plugin,
                  version=impl.version, exact=impl.exact, ranked=impl.ranked, hardware=options.device_name, **extra)


class LocalExecutor:
    """Measures pairs on this machine with ``options.processes`` worker processes, one at a time."""

    def __init__(self, options: RunOptions, env: dict[str, str] | None = None) -> None:
        self.options = options
        env = dict(os.environ if env is None else env)
        if options.worker_memory_bytes:
            env[MEMORY_LIMIT_ENV] = str(options.worker_memory_bytes)
        self.workers = [WorkerProcess(i, env) for i in range(max(1, options.processes))]

    def __enter__(self) -> LocalExecutor:
        # Start all workers together: their torch imports overlap.
        for w in self.workers:
            w.start()
        for w in self.workers:
            try:
                w.wait_ready()
            except (WorkerDied, WorkerTimeout):
                w.proc = None  # restarted on first use; the failure surfaces as that pair's record
        return self

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            w.stop()

    def submit(self, pairs: list[Pair], on_start: Callable[[Pair], None] | None = None) -> Iterator[Record]:
        """Yield one record per pair, case by case."""
        by_case: dict[Case, list[Implementation]] = {}
        for p in pairs:
            by_case.setdefault(p.case, []).append(p.impl)
        for case, impls in by_case.items():
            yield from self._measure_case(case, impls, on_start)

    def _request(self, impl: Implementation, case: Case, first_round: bool) -> dict:
        o = self.options
        return {
            "impl": impl.name, "case": case.to_dict(), "seed": o.seed,
            "correctness": first_round, "memory": first_round, "timing": True,
            "seeds": o.seeds, "max_rows": o.max_rows, "tolerance": asdict(o.tolerance),
            "min_time_s": o.min_time_s, "min_samples": o.min_samples, "warmup_calls": o.warmup_calls,
            "cuda_repeats": o.cuda_repeats, "flush_l2": o.flush_l2, "cuda_graph": o.cuda_graph,
        }

    def _measure_case(self, case: Case, impls: list[Implementation], on_start) -> Iterator[Record]:
        state = {impl.name: {"status": None, "reason": "", "metrics": {}, "samples": [], "process_medians": [], "pids": []}
                 for impl in impls}
        rounds = len(self.workers)
        for r in range(rounds):
            worker = self.workers[r]
            order = impls if r % 2 == 0 else list(reversed(impls))
            for impl in order:
                s = state[impl.name]
                if r > 0 and s["status"] not in MEASURED:
                    continue
                if r == 0 and on_start is not None:
                    on_start(Pair(case, impl))
                reply = self._call(worker, impl, case, r == 0)
                s["pids"].append(reply.get("pid"))
                if r == 0:
                    s["status"], s["reason"] = reply["status"], reply["reason"]
                    s["metrics"].update(reply.get("metrics", {}))
                elif reply["status"] not in MEASURED:
                    # A later round failed: keep what round 0 measured, but say what happened.
                    s["status"] = reply["status"]
                    s["reason"] = f"timing process {r + 1}: {reply['reason']}"
                if reply.get("samples_ms"):
                    s["samples"].extend(reply["samples_ms"])
                    s["process_medians"].append(statistics.median(reply["samples_ms"]))
                    for key in ("timing_method", "timing_inner", "timing_notes"):
                        if key in reply.get("metrics", {}):
                            s["metrics"][key] = reply["metrics"][key]
        for impl in impls:
            s = state[impl.name]
            metrics = s["metrics"]
            if s["samples"]:
                metrics.update(self._timing_metrics(case, s["samples"], s["process_medians"]))
            yield _record(impl, case, s["status"], s["reason"], self.options, metrics=metrics,
                          where={"node": socket.gethostname(), "pids": s["pids"],
                                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})

    def _call(self, worker: WorkerProcess, impl: Implementation, case: Case, first_round: bool) -> dict:
        try:
            return worker.call(self._request(impl, case, first_round), self.options.timeout_s)
        except WorkerTimeout as exc:
            return {"status": "timeout", "reason": f"{exc}; worker killed", "metrics": {}, "samples_ms": []}
        except WorkerDied as exc:
            reason = f"worker {describe_exit(exc.returncode)}"
            if exc.returncode == -signal.SIGKILL:
                reason += " (by the OS out-of-memory killer, if nobody else sent it)"
            if exc.stderr_tail:
                reason += f"; stderr: {exc.stderr_tail[-600:]}"
            return {"status": "crashed", "reason": reason, "metrics": {}, "samples_ms": []}

    def _timing_metrics(self, case: Case, samples: list[float], process_medians: list[float]) -> dict:
        median = statistics.median(samples)
        seconds = median / 1e3
        metrics = {
            "time_ms_median": median,
            "time_ms_iqr": iqr(samples),
            "time_ms_n": len(samples),
            "time_ms_process_medians": process_medians,
            "tflops": case.flops() / seconds / 1e12,
            "gbps": case.io_bytes() / seconds / 1e9,
        }
        if len(process_medians) > 1:
            metrics["process_spread"] = max(process_medians) / min(process_medians) - 1
        peak_tflops, peak_gbps = self.options.peak_tflops, self.options.peak_gbps
        table = device_peak(self.options.device_name) if case.device == "cuda" else None
        if table is not None:
            peak_tflops = peak_tflops or table.tflops.get(case.dtype_name)
            peak_gbps = peak_gbps or table.gbps
        if peak_tflops:
            metrics["pct_peak_tflops"] = 100 * metrics["tflops"] / peak_tflops
        if peak_gbps:
            metrics["pct_peak_gbps"] = 100 * metrics["gbps"] / peak_gbps
        return metrics

