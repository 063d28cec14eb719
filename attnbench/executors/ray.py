"""The Ray executor: one task per pair, a GPU each (none for CPU cases), never retried, streamed back.

A task first reports where it started, then measures its pair with a
LocalExecutor on its node and returns the record. The driver turns every
other outcome into the pair's record: a request no live node can satisfy is
``infeasible`` at once (Ray itself would wait forever), a lost node
``node_lost``, a dead task process ``crashed``, and a task running past its
budget is cancelled (``ray.cancel(force=True)``) as ``timeout``.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray
from ray import exceptions as ray_errors

from attnbench.executors.base import OnStart
from attnbench.executors.placement import ray_request, unfit_reason
from attnbench.executors.remote import describe, measure_here
from attnbench.results import Record
from attnbench.runner import WORKER_START_TIMEOUT_S, Pair, RunOptions, make_record

NODE_LOST = (ray_errors.NodeDiedError, ray_errors.LocalRayletDiedError, ray_errors.ObjectLostError)
"""Errors that mean the task's node (or the driver's link to it) is gone; OwnerDiedError is an ObjectLostError."""


def measure_pair_task(described: dict, options: RunOptions, env: dict[str, str]) -> Iterator[dict]:
    """The Ray task: first where it runs, then the pair's record (as a dict)."""
    runtime = ray.get_runtime_context()
    job = {"node_id": runtime.get_node_id(), "task_id": runtime.get_task_id(),
           "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    yield {"started": time.time(), "node": socket.gethostname(), "job": job}
    (record,) = measure_here([described], options, env, {"executor": "ray", "attempt": 1, "job": job})
    yield record.to_dict()


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
    pair: Pair
    request: dict[str, float]
    started: float | None = None
    where: dict | None = None


class RayExecutor:
    """Measures each pair as a Ray task on whichever node has a free slot of the requested kind.

    ``num_gpus`` per task defaults to 1 for CUDA cases and 0 for CPU cases;
    ``accelerator_type`` (e.g. ``H100``) restricts tasks to nodes advertising
    it. Connects to ``address`` (or RAY_ADDRESS, or starts a local Ray) unless
    Ray is already initialised. ``task_timeout_s`` bounds a running task
    beyond the per-pair timeout the worker already enforces.
    """

    def __init__(self, options: RunOptions, *, address: str | None = None, accelerator_type: str | None = None,
                 num_gpus: float | None = None, env: dict[str, str] | None = None,
                 task_timeout_s: float | None = None, poll_s: float = 0.5, recheck_s: float = 5.0) -> None:
        self.options = options
        self.address = address
        self.accelerator_type = accelerator_type
        self.num_gpus = num_gpus
        self.env = dict(env or {})
        self.task_timeout_s = task_timeout_s or WORKER_START_TIMEOUT_S + max(1, options.processes) * (options.timeout_s + 60)
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
        # CUDA pinned once in a task process stays pinned: a GPU task gets a fresh process (max_calls=1).
        self._on_gpu = ray.remote(max_retries=0, max_calls=1)(measure_pair_task)
        self._on_cpu = ray.remote(max_retries=0)(measure_pair_task)
        return self

    def __exit__(self, *exc) -> None:
        with signals_deferred():
            for generator in self._tasks:
                ray.cancel(generator, force=True)
            self._tasks = {}
            if self._owns_ray:
                ray.shutdown()

    def submit(self, pairs: list[Pair], on_start: OnStart | None = None) -> Iterator[Record]:
        """Start every feasible pair's task; yield infeasible pairs at once and the rest as their tasks end."""
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
        """Submit a task for each pair some live node can run; the others' infeasible records."""
        nodes = ray.nodes()
        infeasible = []
        for pair in pairs:
            gpus = self.num_gpus if self.num_gpus is not None else (1 if pair.case.device == "cuda" else 0)
            request = ray_request(gpus, self.accelerator_type)
            why = unfit_reason(request, nodes)
            if why:
                infeasible.append(self._failed(_Task(pair, request), "infeasible", why))
                continue
            remote = self._on_gpu if pair.case.device == "cuda" else self._on_cpu
            options = {"num_gpus": gpus, "num_cpus": 1}
            if self.accelerator_type:
                options["accelerator_type"] = self.accelerator_type
            generator = remote.options(**options).remote(describe(pair), self.options, self.env)
            self._tasks[generator] = _Task(pair, request)
        return infeasible

    def _step(self, on_start: OnStart | None, recheck: bool) -> list[Record]:
        """Wait up to ``poll_s`` for news; the records of the tasks that ended, were overdue or became unplaceable."""
        records = []
        ready, _ = ray.wait(list(self._tasks), num_returns=1, timeout=self.poll_s)
        for generator in ready:
            record = self._advance(generator, on_start)
            if record is not None:
                del self._tasks[generator]
                records.append(record)
        records += self._cancel_overdue()
        if recheck:
            records += self._cancel_unplaceable()
        return records

    def _advance(self, generator: ray.ObjectRefGenerator, on_start: OnStart | None) -> Record | None:
        """Take the task's next item: its start (None is returned) or its record, or the error that ended it."""
        task = self._tasks[generator]
        try:
            item = ray.get(next(generator))
        except StopIteration:
            return self._failed(task, "error", "the Ray task ended without a record")
        except ray_errors.RayError as exc:
            node_alive = self._node_alive(task)
            status = status_for_ray_error(exc, node_alive)
            return self._failed(task, status, f"Ray task failed: {type(exc).__name__}: {_first_line(exc)}")
        if "started" in item:
            task.started = time.monotonic()
            task.where = {"node": item["node"], "job": item["job"]}
            if on_start is not None:
                on_start(task.pair)
            return None
        return Record.from_dict(item)

    def _cancel_overdue(self) -> list[Record]:
        now = time.monotonic()
        records = []
        for generator, task in list(self._tasks.items()):
            if task.started is not None and now - task.started > self.task_timeout_s:
                ray.cancel(generator, force=True)
                del self._tasks[generator]
                records.append(self._failed(task, "timeout", f"the Ray task ran past {self.task_timeout_s:g} s and "
                                                             "was cancelled (ray.cancel, force=True)"))
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
                records.append(self._failed(task, "infeasible", why))
        return records

    def _node_alive(self, task: _Task) -> bool | None:
        if task.where is None:
            return None
        node_id = task.where["job"]["node_id"]
        return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())

    def _failed(self, task: _Task, status: str, reason: str) -> Record:
        where = {"executor": "ray", "attempt": 1, "requested": task.request, **(task.where or {})}
        return make_record(task.pair.impl, task.pair.case, status, reason, self.options, where=where)


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
