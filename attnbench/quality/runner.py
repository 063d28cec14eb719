"""Quality tasks in a run: one record per task x implementation, each seed trained in an isolated worker.

Every seed's training run is one request to a ``python -m attnbench.worker``
child, the worker kernel cases use (its side is ``attnbench.quality.work``):
a crash, hang or exception costs that implementation's record on that task,
and the run goes on. Eager runs first on each task, because an exact
implementation's accuracies are judged against eager's (``agrees_with``): one
that disagrees is recorded ``incorrect``, which is how a broken backward pass
shows in training. Approximate implementations get the comparison, not the verdict.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from attnbench.executors.machine import compact_environment
from attnbench.implementation import Implementation
from attnbench.quality.config import TaskConfig
from attnbench.quality.metrics import agrees_with, summarize
from attnbench.quality.train import task_case
from attnbench.results import Record
from attnbench.runner import RunOptions, WorkerProcess, call_or_failure, worker_env

EAGER = "eager"
"""What exact implementations must agree with."""
STATS = ("mean", "std", "min", "max")


@dataclass
class TaskPair:
    """One task x implementation to train. ``case`` is named as ``runner.Pair``'s: progress shows ``case.label()``."""

    case: TaskConfig
    impl: Implementation


def record_case(config: TaskConfig) -> dict[str, Any]:
    """A task record's ``case``: the config without its seeds (they go in the metrics), so it stays hashable."""
    return {k: v for k, v in config.to_dict().items() if k != "seeds"}


def plan_tasks(configs: Iterable[TaskConfig], impls: list[Implementation],
               options: RunOptions) -> tuple[list[TaskPair], list[Record]]:
    """Pairs to train, eager first on each task, and the records of those the capabilities rule out."""
    ordered = sorted(impls, key=lambda impl: impl.name != EAGER)
    todo, settled = [], []
    for config in configs:
        for impl in ordered:
            reason = impl.declines(task_case(config))
            if reason:
                settled.append(_record(impl, config, "unsupported", reason, options, {"seeds": list(config.seeds)}))
            else:
                todo.append(TaskPair(config, impl))
    return todo, settled


def run_tasks(pairs: list[TaskPair], options: RunOptions, *, env: dict[str, str] | None = None,
              previous: Iterable[Record] = (), on_start: Callable[[TaskPair], None] | None = None) -> Iterator[Record]:
    """Train every pair over its seeds in one worker process (restarted after a crash or timeout); yield its record.

    ``previous`` records (a resumed run's) supply eager's accuracies for tasks
    whose eager record is already there.
    """
    env = worker_env(options, env)
    eager = {_key(r.case): _accuracies(r) for r in previous if r.impl == EAGER and r.status == "ok" and "task" in r.case}
    context = {"executor": "local", "attempt": 1, "node": socket.gethostname(), "environment": compact_environment()}
    worker = WorkerProcess(0, env)
    try:
        for pair in pairs:
            if on_start is not None:
                on_start(pair)
            key = _key(record_case(pair.case))
            record = _train(worker, pair, options, eager.get(key), context)
            if pair.impl.name == EAGER and record.status == "ok":
                eager[key] = _accuracies(record)
            yield record
    finally:
        worker.kill()


def _train(worker: WorkerProcess, pair: TaskPair, options: RunOptions, eager: list[float] | None,
           context: dict) -> Record:
    impl, config = pair.impl, pair.case
    metrics: dict[str, Any] = {"seeds": list(config.seeds), "per_seed": []}
    status, reason, pids = "ok", "", []
    started = time.time()
    for i, seed in enumerate(config.seeds):
        request = {"impl": impl.name, "task": config.to_dict(), "seed": seed, "kernel_error": i == 0}
        reply = call_or_failure(worker, request, options.timeout_s)
        pids.append(reply.get("pid"))
        if "kernel_rel_err" in reply:
            metrics["kernel_rel_err"] = reply["kernel_rel_err"]
        if reply["status"] != "ok":
            # One seed failing fails the record: a mean over the seeds that happened to survive would mislead.
            status = reply["status"]
            reason = reply["reason"] if status == "unsupported" else f"seed {seed}: {reply['reason']}"
            break
        metrics["per_seed"].append(reply["result"])
    if status == "ok":
        for name, stats in summarize(metrics["per_seed"]).items():
            if name != "seeds":
                metrics.update({f"{name}_{stat}": stats[stat] for stat in STATS})
        agrees, why = _agreement(impl, _accuracies_of(metrics["per_seed"]), eager)
        metrics["agrees_with_eager"], metrics["agreement"] = agrees, why
        if impl.exact and agrees is False:
            status, reason = "incorrect", f"accuracy disagrees with eager's: {why}"
    where = {**context, "pids": pids, "started": started, "finished": time.time()}
    return _record(impl, config, status, reason, options, metrics, where)


def _agreement(impl: Implementation, accuracies: list[float], eager: list[float] | None) -> tuple[bool | None, str]:
    if impl.name == EAGER:
        return None, "eager is the reference"
    if eager is None:
        return None, "no eager result on this task to compare with"
    return agrees_with(eager, accuracies)


def _record(impl: Implementation, config: TaskConfig, status: str, reason: str, options: RunOptions,
            metrics: dict[str, Any], where: dict[str, Any] | None = None) -> Record:
    return Record(impl=impl.name, case=record_case(config), status=status, reason=reason, plugin=impl.plugin,
                  version=impl.version, exact=impl.exact, ranked=impl.ranked, metrics=metrics,
                  hardware=options.device_name, where=where or {})


def _key(case: dict[str, Any]) -> tuple:
    return tuple(sorted(case.items()))


def _accuracies_of(per_seed: list[dict]) -> list[float]:
    return [result["accuracy"] for result in per_seed]


def _accuracies(record: Record) -> list[float]:
    return _accuracies_of(record.metrics.get("per_seed") or [])
