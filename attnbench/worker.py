"""The isolated side of a run: one process that builds and measures implementations.

The runner starts ``python -m attnbench.worker`` and sends one JSON request
per line on stdin; each reply is one JSON line on the process's original
stdout, echoing the request's id and pair (``attnbench.protocol``). Plugin
output is redirected to stderr so it cannot corrupt the protocol by accident;
a plugin that writes to the reply pipe on purpose is caught by the echo. The
worker imports only the plugins the run selected, and puts torch's global
state and the timers back around every pair (``attnbench.isolation``). A
crash, hang or CUDA error here costs the runner one record, not the run.
"""

from __future__ import annotations

import json
import os
import sys
from typing import IO

import torch

from attnbench import isolation
from attnbench.implementation import Implementation
from attnbench.measurement import Request, make_step, measure
from attnbench.plugins import load_registry
from attnbench.protocol import echo
from attnbench.quality.work import serve_task

__all__ = ["MEMORY_LIMIT_ENV", "Request", "make_step", "measure", "main"]

MEMORY_LIMIT_ENV = "ATTNBENCH_WORKER_MEMORY_BYTES"
"""Bytes of address space a CPU worker may add after start-up (set by the runner from the memory budget)."""


class Guard:
    """torch's global state and the timers as they were before any plugin loaded, kept around each pair."""

    def __init__(self) -> None:
        self.pristine = isolation.torch_state()
        self.timers = isolation.bind_timers()

    def settle(self) -> list[str]:
        """Put everything back as it was at start-up; what had been changed, as notes."""
        notes = isolation.state_changes(self.pristine, isolation.torch_state())
        notes += [f"{name} replaced" for name in isolation.patched_timers(self.timers)]
        isolation.restore_timers(self.timers)
        stuck = isolation.restore_torch_state(self.pristine)
        notes += [f"{name} could not be restored" for name in stuck]
        return notes

    def run(self, answer, data: dict) -> dict:
        """``answer(data)`` between two settles; a reply noting what the pair changed, ``error`` if it was a timer."""
        self.settle()  # whatever happened between requests (nothing should) does not reach this pair
        reply = answer(data)
        patched = isolation.patched_timers(self.timers)
        notes = self.settle()
        if notes:
            reply.setdefault("metrics", {})["torch_state_changed"] = notes
        if patched:
            reply.update(status="error", reason=f"timer patched: {', '.join(patched)} replaced during the pair")
        return reply


def _answer(impls: dict[str, Implementation], data: dict) -> dict:
    impl = impls.get(data.get("impl"))
    if impl is None:
        return {"status": "error", "reason": f"implementation {data.get('impl')!r} did not load in the worker",
                "metrics": {}, "samples_ms": [], "fatal": False}
    if "task" in data:  # a quality task's training run, not a kernel case
        return serve_task(impl, data)
    return measure(impl, Request.from_json(data))


def serve(impls: dict[str, Implementation], requests: IO[str], replies: IO[str], guard: Guard | None = None) -> None:
    """Answer requests until stdin closes."""
    guard = guard or Guard()
    for line in requests:
        if not line.strip():
            continue
        data = json.loads(line)
        reply = guard.run(lambda d: _answer(impls, d), data)
        reply.update(echo(data), pid=os.getpid())
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if reply.get("fatal"):
            # A CUDA error poisons the context: exit so the runner starts a fresh worker.
            os._exit(70)


def limit_address_space(extra_bytes: int) -> None:
    """Cap this process at what it maps now plus ``extra_bytes``.

    An allocation past the budget then fails inside the worker (reported as
    ``oom``) instead of the OS killing a process, perhaps not this one. Used on
    CPU only: CUDA reserves vast virtual ranges, so RLIMIT_AS would break it.
    """
    import resource  # Unix only; the worker runs there, and importing it elsewhere would fail

    # Start the intra-op thread pool first: its stacks are address space too.
    torch.ones(256, 256) @ torch.ones(256, 256)
    with open("/proc/self/status") as f:
        vm_size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_size + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main() -> None:
    # Keep the protocol channel private: fd 1 becomes stderr for anything plugins print.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    guard = Guard()  # before any plugin is imported: the state and timers they could change
    registry = load_registry()
    if os.environ.get(MEMORY_LIMIT_ENV):
        limit_address_space(int(os.environ[MEMORY_LIMIT_ENV]))
    # What importing the plugins changed is undone here, before the first pair, and said on the ready line.
    import_notes = guard.settle()
    replies.write(json.dumps({"ready": True, "pid": os.getpid(), "import_changed": import_notes,
                              "plugin_errors": [p.to_dict() for p in registry.failures]}) + "\n")
    replies.flush()
    serve(registry.implementations, sys.stdin, replies, guard)


if __name__ == "__main__":
    main()
