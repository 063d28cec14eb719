"""The Ray executor: one task per case (a GPU each, none for CPU cases), never retried, streamed back.

A task first reports where it started, then measures its case's pairs with a
LocalExecutor on its node, as on one machine (in rounds, on one card), and
reports each pair's start and record as they happen. One task per case, not
per pair: its implementations share the worker processes (each a Python
process importing torch), which then stay with the Ray worker process for its
next task on the same GPU (attnbench.executors.pool), so a lane pays their
start-up once. That process never initialises CUDA, so it may run tasks on
different GPUs one after another. The driver turns every other outcome into
records for the pairs the task had not returned: a request no live node can
satisfy is ``infeasible`` at once (Ray itself would wait forever), a lost
node ``node_lost``, a dead task process ``crashed``, and a task running past
the sum of its pairs' budgets is cancelled (``ray.cancel(force=True)``) as
``timeout``.
"""

from __future__ import annotations

import queue
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import ray
from ray import exceptions as ray_errors

from attnbench.executors.placement import by_case, ray_request, unfit_reason
from attnbench.executors.pool import WorkerPool
from attnbench.executors.remote import describe, measure_here
from attnbench.results import Record
from attnbench.runner import WORKER_START_TIMEOUT_S, OnStart, Pair, RunOptions, make_record

NODE_LOST = (ray_errors.NodeDiedError, ray_errors.LocalRayletDiedError, ray_errors.ObjectLostError)
"""Errors that mean the task's node (or the driver's link to it) is gone; OwnerDiedError is an ObjectLostError."""

KEPT = WorkerPool()
"""In a Ray worker process: the workers its tasks leave to the next one."""


def measure_case_task(described: list[dict], options: RunOptions, env: dict[str, str]) -> Iterator[dict]:
    """The Ray task: first where it runs, then each pair's start and record (as a dict) as they happen."""
    runtime = ray.get_runtime_context()
    job = {"node_id": runtime.get_node_id(), "task_id": runtime.get_task_id(),
           "worker_id": runtime.get_worker_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    yield {"where": {"node": socket.gethostname(), "job": job}}
    yield from _as_they_happen(described, options, env, {"executor": "ray", "attempt": 1, "job": job})


def _as_they_happen(described: list[dict], options: RunOptions, env: dict[str, str], context: dict) -> Iterator[dict]:
    """measure_here's pair starts (``{"started": impl}``) and records (``{"record": ...}``), as each comes.

    The measuring runs in a thread: a start is a callback from inside it, and
    only this generator can pass it on. Its workers come from KEPT and go back
    there if it ends cleanly. Left before the end (closed, or interrupted by a
    cancel that spares the process), it kills the workers it took, so the
    measuring stops and the next task starts fresh ones.
    """
    events: queue.SimpleQueue = queue.SimpleQueue()
    done = object()

    def measure() -> None:
        try:
            for record in measure_here(described, options, env, context, kept=KEPT,
                                       on_start=lambda pair: events.put({"started": pair.impl.name})):
                events.put({"record": record.to_dict()})
            events.put(done)
        except BaseException as exc:  # noqa: BLE001 - raised again in the task, where Ray reports it
            events.put(exc)

    threading.Thread(target=measure, name="attnbench-measure", daemon=True).start()
    ended = False
    try:
        while (event := events.get()) is not done:
            if isinstance(event, BaseException):
                ended = True
                raise event
            yield event
        ended = True
    finally:
        if not ended:
            KEPT.abandon()


def status_for_ray_error(exc: BaseException, node_alive: bool | None) -> str:
    """The status of a pair whose task ended in a Ray error; ``node_alive``: is the node it started on still up?"""
    if isinstance(exc, NODE_LOST):
        return "node_lost"
    if isinstance(exc, ray_errors.WorkerCrashedError):
        # The task's process died: on a live node that is a crash, otherwise the node went with it.
        return "crashed" if node_alive else "node_lost"
    if isinstance(exc, ray_errors.OutOfMemoryError):
        return "oom"
    if isinstance(exc, ray_errors.TaskUnschedulableError):
        return "infeasible"
    return "error"


@dataclass
class _Task:
    """One case's task: its pairs, what it asked Ray for, and what it has reported so far."""

    pairs: list[Pair]
    request: dict[str, float]
    budget_s: float
    started: float | None = None
    where: dict | None = None
    returned: set[str] = field(default_factory=set)
    """Implementations whose records came back."""

    def left(self) -> list[Pair]:
        return [p for p in self.pairs if p.impl.name not in self.returned]

    def pair(self, impl: str) -> Pair | None:
        return next((p for p in self.pairs if p.impl.name == impl), None)


class RayExecutor:
    """Measures each case as a Ray task on whichever node has a free slot of the requested kind.

    ``num_gpus`` per task defaults to 1 for CUDA cases and 0 for CPU cases;
    ``accelerator_type`` (e.g. ``H100``) restricts tasks to nodes advertising
    it. Connects to ``address`` (or RAY_ADDRESS, or starts a local Ray) unless
    Ray is already initialised. A task may run for ``pair_timeout_s`` per
    pair (default: worker start-up + processes x (per-pair timeout + 60 s)),
    beyond the per-pair timeout the worker already enforces.
    """

    def __init__(self, options: RunOptions, *, address: str | None = None, accelerator_type: str | None = None,
                 num_gpus: float | None = None, env: dict[str, str] | None = None,
                 pair_timeout_s: float | None = None, poll_s: float = 0.5, recheck_s: float = 5.0) -> None:
        self.options = options
        self.address = address
        self.accelerator_type = accelerator_type
        self.num_gpus = num_gpus
        self.env = dict(env or {})
        self.pair_timeout_s = pair_timeout_s or WORKER_START_TIMEOUT_S + max(1, options.timing.processes) * (options.timeout_s + 60)
        self.poll_s = poll_s
        self.recheck_s = recheck_s
        self._owns_ray = False
        self._tasks: dict[ray.ObjectRefGenerator, _Task] = {}

    def __enter__(self) -> RayExecutor:
        if not ray.is_initialized():
            self._owns_ray = True
            with signals_deferred():  # which also undoes ray.init's SIGTERM handler, one that exits on the spot
                # Ray's own logs would tear through the progress display.
                ray.init(address=self.address, log_to_driver=False,
                         **({"include_dashboard": False} if self.address is None else {}))
        # No max_calls=1: a task process never initialises CUDA (its GPUs are read by a subprocess), so it may
        # take the next task on another GPU, and keep its workers for a task on the same one.
        self._remote = ray.remote(max_retries=0)(measure_case_task)
        return self

    def __exit__(self, *exc) -> None:
        with signals_deferred():
            for generator in self._tasks:
                ray.cancel(generator, force=True)
            self._tasks = {}
            if self._owns_ray:
                ray.shutdown()

    def submit(self, pairs: list[Pair], on_start: OnStart | None = None) -> Iterator[Record]:
        """Start every feasible case's task; yield infeasible pairs at once and the rest as their tasks report."""
        with signals_deferred():
            infeasible = self._start(pairs)
        yield from infeasible
        last_check = time.monotonic()
        while self._tasks:
            recheck = time.monotonic() - last_check > self.recheck_s
            if recheck:
                last_check = time.monotonic()
            with signals_deferred():
                records = self._step(on_start, recheck)
            yield from records  # outside: the consumer's work must not run with signals held

    def _start(self, pairs: list[Pair]) -> list[Record]:
        """Submit a task for each case some live node can run; the other cases' infeasible records."""
        nodes = ray.nodes()
        infeasible = []
        for group in by_case(pairs):
            case = group[0].case
            gpus = self.num_gpus if self.num_gpus is not None else (1 if case.device == "cuda" else 0)
            task = _Task(group, ray_request(gpus, self.accelerator_type), self.pair_timeout_s * len(group))
            why = unfit_reason(task.request, nodes)
            if why:
                infeasible += self._fill(task, "infeasible", why)
                continue
            options = {"num_gpus": gpus, "num_cpus": 1}
            if self.accelerator_type:
                options["accelerator_type"] = self.accelerator_type
            generator = self._remote.options(**options).remote([describe(p) for p in group], self.options, self.env)
            self._tasks[generator] = task
        return infeasible

    def _step(self, on_start: OnStart | None, recheck: bool) -> list[Record]:
        """Wait up to ``poll_s`` for news; the records that came back, and those of tasks overdue or unplaceable."""
        records = []
        ready, _ = ray.wait(list(self._tasks), num_returns=1, timeout=self.poll_s)
        for generator in ready:
            records += self._advance(generator, on_start)
        records += self._cancel_overdue()
        if recheck:
            records += self._cancel_unplaceable()
        return records

    def _advance(self, generator: ray.ObjectRefGenerator, on_start: OnStart | None) -> list[Record]:
        """Take the task's next item (where it started, a pair's start or record), or the end that left pairs over."""
        task = self._tasks[generator]
        try:
            item = ray.get(next(generator))
        except StopIteration:
            del self._tasks[generator]
            return self._fill(task, "error", "the Ray task ended without a record for this pair")
        except ray_errors.RayError as exc:
            del self._tasks[generator]
            status = status_for_ray_error(exc, self._node_alive(task))
            return self._fill(task, status, f"Ray task failed: {type(exc).__name__}: {_first_line(exc)}")
        if "where" in item:
            task.started = time.monotonic()
            task.where = item["where"]
            return []
        if "started" in item:
            pair = task.pair(item["started"])
            if on_start is not None and pair is not None:
                on_start(pair)
            return []
        record = Record.from_dict(item["record"])
        task.returned.add(record.impl)
        if not task.left():
            del self._tasks[generator]  # its last record: the task is ending, no need to wait for it
        return [record]

    def _cancel_overdue(self) -> list[Record]:
        now = time.monotonic()
        records = []
        for generator, task in list(self._tasks.items()):
            if task.started is not None and now - task.started > task.budget_s:
                ray.cancel(generator, force=True)
                del self._tasks[generator]
                records += self._fill(task, "timeout", f"the Ray task ran past its {task.budget_s:g} s "
                                      f"({len(task.pairs)} pairs) and was cancelled (ray.cancel, force=True)")
        return records

    def _cancel_unplaceable(self) -> list[Record]:
        """Queued tasks that no live node can run any more (their nodes left): Ray would hold them forever."""
        nodes = ray.nodes()
        records = []
        for generator, task in list(self._tasks.items()):
            why = None if task.started is not None else unfit_reason(task.request, nodes)
            if why:
                ray.cancel(generator, force=True)
                del self._tasks[generator]
                records += self._fill(task, "infeasible", why)
        return records

    def _node_alive(self, task: _Task) -> bool | None:
        if task.where is None:
            return None
        node_id = task.where["job"]["node_id"]
        return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())

    def _fill(self, task: _Task, status: str, reason: str) -> list[Record]:
        """A record saying ``status`` for each of the task's pairs that has none yet."""
        where = {"executor": "ray", "attempt": 1, "requested": task.request, **(task.where or {})}
        left = task.left()
        task.returned.update(p.impl.name for p in left)
        return [make_record(p.impl, p.case, status, reason, self.options, where=where) for p in left]


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT wait for the block to end, then reach the handlers in place before it.

    A handler's exception raised inside Ray's C++ calls (ray.wait, ray.init)
    comes out as a SystemError, and ray.init installs a SIGTERM handler that
    exits on the spot: the run's own handlers must see the signal, in Python.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers run in the main thread only
        return
    caught: list[int] = []
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    for signum in before:
        signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in caught:
            signal.raise_signal(signum)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
