"""The inside of a Slurm job or Ray task: the pairs it was handed, measured on its node by a LocalExecutor.

The driver sends pairs as plain data (the implementation's identity and the
case's fields), not pickled Implementation objects: the node needs the plugin
only where the worker process loads it, so a plugin missing on one node is
that pair's ``error`` record ("did not load in the worker"), not a failure to
unpickle the whole job. Crashes stay records too: the pair still runs in a
worker subprocess, as on one machine. A process that runs task after task
(Ray's) passes its WorkerPool: its workers then outlive the task, and its GPUs
are read without initialising CUDA in this process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from attnbench.case import Case
from attnbench.executors.local import LocalExecutor
from attnbench.implementation import Implementation
from attnbench.results import Record
from attnbench.runner import OnStart, Pair, RunOptions

if TYPE_CHECKING:
    from attnbench.executors.pool import WorkerPool


def describe(pair: Pair) -> dict:
    """A pair as plain data, for the trip to another machine."""
    impl = pair.impl
    return {"impl": {"name": impl.name, "plugin": impl.plugin, "version": impl.version, "exact": impl.exact,
                     "ranked": impl.ranked},
            "case": pair.case.to_dict()}


def rebuild(described: dict) -> Pair:
    """The pair again, on the node; its implementation is only ever built by the worker process."""
    impl = Implementation(build=_built_by_the_worker, **described["impl"])
    return Pair(Case.from_dict(described["case"]), impl)


def _built_by_the_worker(case: Case):
    raise RuntimeError("a remote pair's implementation is built by its worker process, never by the executor")


def measure_here(described: list[dict], options: RunOptions, env: dict[str, str], context: dict,
                 on_start: OnStart | None = None, kept: WorkerPool | None = None) -> Iterator[Record]:
    """Records of the described pairs, measured on this node; ``env`` is added to the workers' environment."""
    pairs = [rebuild(d) for d in described]
    device = "cuda" if any(p.case.device == "cuda" for p in pairs) else "cpu"
    # This node names its own hardware; the driver's device name is another machine's.
    options = replace(options, device_name="")
    env = {**os.environ, **env}
    slots = kept.slots(device, env) if kept is not None else None
    with LocalExecutor(options, env=env, device=device, context=context, slots=slots, kept=kept) as executor:
        yield from executor.submit(pairs, on_start)
