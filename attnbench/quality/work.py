"""The worker side of a quality task: one seed's training run of one implementation, as a worker reply.

``attnbench.worker`` hands a request with a ``task`` key here instead of
measuring a kernel case; the runner side is ``attnbench.quality.runner``.
A request is ``{"impl", "task": TaskConfig.to_dict(), "seed", "kernel_error"}``;
the reply carries ``status``, ``reason``, ``fatal`` (as the worker's kernel
replies do), the seed's figures in ``result`` and, when asked,
``kernel_rel_err``.
"""

from __future__ import annotations

import dataclasses
from time import perf_counter  # bound before plugins load: a patched time.perf_counter cannot skew it

import torch

from attnbench.case import Case
from attnbench.implementation import Implementation, Unsupported
from attnbench.measure.correctness import error_metrics, make_inputs, math_attention
from attnbench.outcome import classify, describe
from attnbench.quality.config import TaskConfig
from attnbench.quality.train import run_task, task_case


def kernel_error(impl: Implementation, case: Case) -> float | None:
    """Relative-L2 error of one forward call against float64 attention (seed 0); None when the implementation declines."""
    if impl.declines(case):
        return None
    try:
        attend = impl.build(case)
    except Unsupported:
        return None
    inputs = make_inputs(case, seed=0)
    q, k, v = inputs.q, inputs.k, inputs.v
    with torch.no_grad():
        if impl.layout == "bshd":
            out = attend(*(t.transpose(1, 2).contiguous() for t in (q, k, v))).transpose(1, 2)
        else:
            out = attend(q, k, v)
    return error_metrics(out, math_attention(q, k, v, case, dtype=torch.float64))["rel_err"]


def serve_task(impl: Implementation, data: dict) -> dict:
    """Train and score one seed; always returns a reply, whatever the implementation does."""
    reply: dict = {"status": "ok", "reason": "", "fatal": False, "result": None}
    begun = perf_counter()
    try:
        config = TaskConfig.from_dict(data["task"])
        if data.get("kernel_error"):
            # The forward call the model makes, on standard-normal inputs: how far the kernel is from exact.
            reply["kernel_rel_err"] = kernel_error(impl, dataclasses.replace(task_case(config), pass_="fwd"))
        result = run_task(impl, config, int(data["seed"]))
        reply["result"] = {k: v for k, v in result.items() if k not in ("task", "implementation")}
    except Unsupported as exc:
        reply.update(status="unsupported", reason=exc.reason)
    except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; it becomes this pair's record
        status, fatal = classify(exc)
        reply.update(status=status, reason=describe(exc), fatal=fatal)
    reply["wall_s"] = perf_counter() - begun
    return reply
