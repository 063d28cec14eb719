"""What a Ray task process keeps from one task to the next: its worker processes, and the GPUs it was shown.

A Ray worker process runs task after task. Each task used to start its own
``python -m attnbench.worker`` processes, a torch import each (seconds). Here
a task that ends cleanly gives its workers back, and the next task that would
start workers the same way (same environment, CUDA_VISIBLE_DEVICES included,
same count) takes them as they are: they measure case after case, as the
local executor's workers do. Workers started any other way are ended when a
task takes its own, so idle ones never pile up (on a GPU each holds a CUDA
context); a task that raises, or is abandoned, kills the workers it took.

Workers die with the thread that started them (PDEATHSIG follows the
thread), so here one thread that lives as long as the process starts them
all, restarts included: they outlive the task's thread and still die with the
process, as when a timed-out task is cancelled with force.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from attnbench.executors.machine import gpus_seen_with
from attnbench.executors.placement import Gpu, Slot, device_slots
from attnbench.runner import WorkerProcess

_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnbench-spawner")

Key = tuple[tuple[tuple[str, str], ...], int]


class Abandoned(RuntimeError):
    """The task these workers were lent to was given up: they are not to be started again."""


class KeptWorker(WorkerProcess):
    """A worker started by the process's long-lived spawner thread, so that it can outlive its task."""

    refused = False
    """Set when its task is abandoned: a restart raises instead, which ends that task's measuring."""

    def start(self) -> None:
        if self.refused:
            raise Abandoned("the task that took this worker was abandoned")
        _spawner.submit(super().start).result()


class WorkerPool:
    """Idle workers by how they were started, lent to one task at a time, and the GPUs each environment shows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[Key, list[WorkerProcess]] = {}
        self._lent: list[KeptWorker] = []
        self._gpus: dict[tuple, list[Gpu]] = {}

    def take(self, env: dict[str, str], count: int) -> list[WorkerProcess]:
        """The idle workers started with ``env``, else ``count`` new ones; other idle workers are killed."""
        with self._lock:
            workers = self._idle.pop(_key(env, count), None)
            stale, self._idle = self._idle, {}
            if workers is None:
                workers = [KeptWorker(i, env) for i in range(count)]
            # Those killed by an executor that raised are no longer anyone's.
            self._lent = [w for w in self._lent if w.proc is not None] + workers
        _kill(stale.values())
        return workers

    def give_back(self, slots: list[list[WorkerProcess]]) -> None:
        """Keep these, from a task that ended cleanly (each between two requests), for the next task."""
        with self._lock:
            back = {id(w) for workers in slots for w in workers}
            self._lent = [w for w in self._lent if id(w) not in back]
            refused = [workers for workers in slots if any(getattr(w, "refused", False) for w in workers)]
            stale, self._idle = self._idle, {_key(ws[0].env or {}, len(ws)): ws for ws in slots
                                             if ws and ws not in refused}
        _kill([*stale.values(), *refused])

    def abandon(self) -> None:
        """Kill the lent workers and refuse their restarts: their task's measuring stops at its next call."""
        with self._lock:
            lent, self._lent = self._lent, []
        for worker in lent:
            worker.refused = True
            worker.interrupt()

    def slots(self, device: str, env: Mapping[str, str]) -> list[Slot]:
        """The slots a task with ``env`` measures ``device`` cases on, its GPUs read by a subprocess (once per env)."""
        if device != "cuda":
            return device_slots(device, None, [])
        key = tuple(sorted(env.items()))
        if key not in self._gpus:
            self._gpus[key] = gpus_seen_with(env)
        return device_slots(device, env.get("CUDA_VISIBLE_DEVICES"), self._gpus[key])


def _key(env: Mapping[str, str], count: int) -> Key:
    return tuple(sorted(env.items())), count


def _kill(sets) -> None:
    for workers in sets:
        for worker in workers:
            worker.kill()
