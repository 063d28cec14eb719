"""The isolated side of a run: one process that builds and measures implementations.

The runner starts ``python -m attnbench.worker`` and sends one JSON request
per line on stdin; each reply is one JSON line on the process's original
stdout. Plugin output is redirected to stderr so it cannot corrupt the
protocol. A crash, hang or CUDA error here costs the runner one record, not
the run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch

from attnbench.case import Case
from attnbench.implementation import Implementation, Unsupported
from attnbench.measure import correctness as corr
from attnbench.measure import memory
from attnbench.measure.timing import Timing, time_cpu, time_cuda, warmup
from attnbench.options import Correctness
from attnbench.options import Timing as TimingOptions
from attnbench.outcome import GRAD_NAMES, classify, describe, error_prefix
from attnbench.quality.work import serve_task

MEMORY_LIMIT_ENV = "ATTNBENCH_WORKER_MEMORY_BYTES"
"""Bytes of address space a CPU worker may add after start-up (set by the runner from the memory budget)."""


@dataclass(frozen=True)
class Request:
    """What the runner asks of a worker for one case x implementation pair."""

    impl: str
    case: Case
    seed: int
    check_correctness: bool
    measure_memory: bool
    measure_time: bool
    trials: list[int] | None = None
    """The correctness trials (0..seeds-1) this process checks; None: all. The runner spreads them over
    its processes so that each process's first call is a checked one, not a bare warm-up."""
    correctness: Correctness = field(default_factory=Correctness)
    timing: TimingOptions = field(default_factory=TimingOptions)

    def to_json(self) -> dict:
        """The request as one JSON-ready object, as it travels on the worker's stdin."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "case": self.case.to_dict(),
                "correctness": asdict(self.correctness), "timing": asdict(self.timing)}

    @classmethod
    def from_json(cls, data: dict) -> Request:
        return cls(**{**data, "case": Case.from_dict(data["case"]), "correctness": Correctness(**data["correctness"]),
                      "timing": TimingOptions(**data["timing"])})


class _Reference:
    """The last case's float64 reference and same-dtype baseline per seed: shared by every implementation of the case."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.trials: dict[int, tuple] = {}

    def get(self, case: Case, seed: int, max_rows: int | None) -> tuple:
        key = (case, max_rows)
        if key != self.key:
            self.key, self.trials = key, {}
        if seed not in self.trials:
            inputs = corr.make_inputs(case, seed)
            rows = corr.sample_rows(case, max_rows, seed) if not case.needs_backward else None
            if case.needs_backward:
                expected = corr.math_attention_grads(inputs, case, dtype=torch.float64)
                baseline = corr.math_attention_grads(inputs, case, dtype=case.dtype)
            else:
                expected = (corr.math_attention(inputs.q, inputs.k, inputs.v, case, dtype=torch.float64, rows=rows),)
                baseline = (corr.math_attention(inputs.q, inputs.k, inputs.v, case, dtype=case.dtype, rows=rows),)
            self.trials[seed] = (inputs, rows, expected, baseline)
        return self.trials[seed]


_REFERENCE = _Reference()


def _to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.transpose(1, 2).contiguous() if layout == "bshd" else t


def _from_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.transpose(1, 2) if layout == "bshd" and isinstance(t, torch.Tensor) else t


def make_step(fn: Callable, impl: Implementation, case: Case, inputs: corr.Inputs) -> Callable[[], object]:
    """The timed region for the case's pass: forward (no autograd), backward alone, or both."""
    q, k, v = (_to_layout(t, impl.layout) for t in (inputs.q, inputs.k, inputs.v))
    if case.pass_ == "fwd":
        if impl.out:
            buffer = torch.empty_like(q)

            def forward_into():
                with torch.no_grad():
                    return fn(q, k, v, out=buffer)
            return forward_into

        def forward():
            with torch.no_grad():
                return fn(q, k, v)
        return forward
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    grad_out = _to_layout(inputs.grad_out, impl.layout)
    if case.pass_ == "bwd":
        out = fn(q, k, v)

        def backward():
            return torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True)
        return backward

    def forward_backward():
        return torch.autograd.grad(fn(q, k, v), (q, k, v), grad_out)
    return forward_backward


def _run_trial(fn: Callable, impl: Implementation, case: Case, inputs: corr.Inputs) -> tuple[torch.Tensor, ...]:
    """Outputs (and gradients for backward cases) of one correctness call, back in bhsd layout."""
    q, k, v = (_to_layout(t, impl.layout) for t in (inputs.q, inputs.k, inputs.v))
    if not case.needs_backward:
        poisoned = torch.full_like(q, float("nan")) if impl.out else None
        with torch.no_grad():
            out = fn(q, k, v) if poisoned is None else fn(q, k, v, out=poisoned)
        problem = corr.output_problem(_from_layout(out, impl.layout), case, inputs.q)
        if problem:
            raise _Incorrect(problem)
        if poisoned is not None:
            if out.data_ptr() != poisoned.data_ptr():
                raise _Incorrect("declares out= but returned another tensor than the out buffer")
            unwritten = int(torch.isnan(poisoned).sum())
            if unwritten:
                raise _Incorrect(f"left {unwritten} of {poisoned.numel()} elements of the out buffer unwritten")
        return (_from_layout(out, impl.layout),)
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    problem = corr.output_problem(_from_layout(out, impl.layout), case, inputs.q)
    if problem:
        raise _Incorrect(problem)
    if not out.requires_grad:
        raise _Incorrect("output does not depend on q, k, v through autograd (no gradient)")
    grads = torch.autograd.grad(out, (q, k, v), _to_layout(inputs.grad_out, impl.layout), allow_unused=True)
    if any(g is None for g in grads):
        raise _Incorrect("gradient missing for " + ", ".join(n for n, g in zip("qkv", grads) if g is None))
    return tuple(_from_layout(t, impl.layout) for t in (out.detach(), *grads))


class _Incorrect(Exception):
    """The implementation ran but its result is unacceptable (shape, dtype, mutation...)."""


MEMORY_TRIAL = 1
"""The correctness trial whose call is also the memory measurement: the second, so one-time
allocations of the first call (oneDNN primitives, cuBLAS workspaces) are not counted."""
SLOW_CALL_S = 0.25
"""A checked call at least this slow stands in for the warm-up before timing: one more call would
cost seconds on long sequences and change nothing (such calls are timed one per sample anyway)."""


def _trials(req: Request) -> list[int]:
    return list(range(req.correctness.seeds)) if req.trials is None else list(req.trials)


def _memory_from_trials(req: Request) -> bool:
    """Whether a correctness trial can double as the memory measurement (its call is the timed step's)."""
    return req.measure_memory and req.check_correctness and MEMORY_TRIAL in _trials(req)[1:] and req.case.pass_ != "bwd"


def _check_correctness(fn, impl: Implementation, req: Request, metrics: dict, call_s: list[float]) -> str | None:
    """Run this process's trials on fresh inputs; fill error metrics (worst over trials) and each call's
    seconds into ``call_s``; return the failure reason or None."""
    case = req.case
    tolerance = req.correctness.rule()
    worst: dict[str, dict] = {}
    failure = None
    for trial in _trials(req):
        seed = req.seed * 1000 + trial
        pristine, rows, expected, baseline = _REFERENCE.get(case, seed, req.correctness.max_rows)
        # The implementation gets copies: a write into them is caught here and cannot
        # corrupt the cached inputs that the next implementation is checked on.
        inputs = corr.Inputs(*(None if t is None else t.clone() for t in (pristine.q, pristine.k, pristine.v, pristine.grad_out)))
        if trial == MEMORY_TRIAL and _memory_from_trials(req):
            box: list = []

            def trial_call(box=box, inputs=inputs):
                box.append(_run_trial(fn, impl, case, inputs))

            metrics["peak_bytes"] = _measure_memory(trial_call, case.device)
            results = box[0]
        else:
            start = time.perf_counter()
            results = _run_trial(fn, impl, case, inputs)
            call_s.append(time.perf_counter() - start)
        for name, before, after in zip("qkv", (pristine.q, pristine.k, pristine.v), (inputs.q, inputs.k, inputs.v)):
            if not torch.equal(before, after):
                raise _Incorrect(f"the implementation wrote into its input {name}")
        for name, got, exp, base in zip(GRAD_NAMES, results, expected, baseline):
            got = got if rows is None or name != "out" else got[:, :, rows.to(got.device)]
            errors = corr.error_metrics(got, exp)
            base_errors = corr.error_metrics(base, exp)
            reason = corr.judge(errors, base_errors, case.dtype_name, tolerance) if impl.exact else None
            if errors["nonfinite"]:
                reason = f"{errors['nonfinite']} NaN/Inf values"
            previous = worst.get(name)
            if previous is None or _worse(errors, previous["errors"]):
                worst[name] = {"errors": errors, "baseline": base_errors}
            if reason and failure is None:
                failure = f"{name}: {reason} (seed {seed})"
    for name, entry in worst.items():
        prefix = error_prefix(name)
        metrics[f"{prefix}rel_err"] = entry["errors"]["rel_err"]
        metrics[f"{prefix}max_abs_err"] = entry["errors"]["max_abs_err"]
        metrics[f"{prefix}baseline_rel_err"] = entry["baseline"]["rel_err"]
        if entry["errors"]["nonfinite"]:
            metrics[f"{prefix}nonfinite"] = entry["errors"]["nonfinite"]
    metrics["correctness_seeds"] = len(_trials(req))
    max_rows = req.correctness.max_rows
    metrics["correctness_rows"] = None if max_rows is None or case.seq_q <= max_rows or case.needs_backward else max_rows
    return failure


def _worse(a: dict, b: dict) -> bool:
    if a["nonfinite"] or b["nonfinite"]:
        return a["nonfinite"] > b["nonfinite"]
    return a["rel_err"] > b["rel_err"]


def _measure_memory(step: Callable[[], object], device: str) -> int:
    if device == "cuda":
        return memory.peak_bytes_cuda(step)
    return memory.peak_bytes_cpu(step)


def _time(step: Callable[[], object], req: Request, warm: bool, checked_call_s: float | None = None) -> Timing:
    """Time ``step``; ``warm``: calls of it ran already, the fastest unprofiled one taking ``checked_call_s``."""
    device = req.case.device
    if device == "cpu" and warm and checked_call_s is not None and checked_call_s >= SLOW_CALL_S:
        estimate = checked_call_s
    else:
        estimate = warmup(step, 1 if warm else max(1, req.timing.warmup), device)
    if device == "cuda":
        return time_cuda(step, repeats=req.timing.cuda_repeats, flush_l2=req.timing.flush_l2,
                         cuda_graph=req.timing.cuda_graph)
    return time_cpu(step, min_time_s=req.timing.min_time_s, min_samples=req.timing.repeats,
                    first_estimate_s=estimate)


def measure(impl: Implementation, req: Request) -> dict:
    """Build and measure one pair; always returns a reply (status, reason, metrics, samples)."""
    reply: dict = {"status": "ok", "reason": "", "metrics": {}, "samples_ms": [], "fatal": False}
    metrics = reply["metrics"]
    case = req.case
    begun = time.perf_counter()
    try:
        start = time.perf_counter()
        fn = impl.build(case)
        metrics["build_s"] = time.perf_counter() - start
        if not callable(fn):
            raise _Incorrect(f"build returned {type(fn).__name__}, not a callable")
        warm = False
        call_s: list[float] = []
        if req.check_correctness and _trials(req):
            try:
                failure = _check_correctness(fn, impl, req, metrics, call_s)
            except _Incorrect as exc:  # unusable output: still timed, as every incorrect result is
                failure = str(exc)
            warm = True
            if failure:
                reply.update(status="incorrect", reason=failure)
        timing_inputs = corr.make_inputs(case, req.seed * 1000 + 999)
        step = make_step(fn, impl, case, timing_inputs)
        if req.measure_memory and not _memory_from_trials(req):
            if not warm:
                # One-time allocations (oneDNN primitives, cuBLAS workspaces) are not the call's memory.
                warmup(step, 1, case.device)
            metrics["peak_bytes"] = _measure_memory(step, case.device)
            warm = True
        if req.measure_time:
            timing = _time(step, req, warm, min(call_s) if call_s else None)
            reply["samples_ms"] = timing.samples_ms
            metrics["timing_method"] = timing.method
            metrics["timing_inner"] = timing.inner
            if timing.notes:
                metrics["timing_notes"] = timing.notes
    except Unsupported as exc:
        reply.update(status="unsupported", reason=exc.reason)
    except _Incorrect as exc:
        reply.update(status="incorrect", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; it becomes this pair's record
        status, fatal = classify(exc)
        reply.update(status=status, reason=describe(exc), fatal=fatal)
    reply["wall_s"] = time.perf_counter() - begun
    return reply


def serve(registry_impls: dict[str, Implementation], requests, replies) -> None:
    """Answer requests until stdin closes."""
    for line in requests:
        if not line.strip():
            continue
        data = json.loads(line)
        impl = registry_impls.get(data["impl"])
        if impl is None:
            reply = {"status": "error", "reason": f"implementation {data['impl']!r} did not load in the worker", "metrics": {}, "samples_ms": [], "fatal": False}
        elif "task" in data:  # a quality task's training run, not a kernel case
            reply = serve_task(impl, data)
        else:
            reply = measure(impl, Request.from_json(data))
        reply["pid"] = os.getpid()
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
    import resource

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
    from attnbench.plugins import load_registry

    registry = load_registry()
    if os.environ.get(MEMORY_LIMIT_ENV):
        limit_address_space(int(os.environ[MEMORY_LIMIT_ENV]))
    replies.write(json.dumps({"ready": True, "pid": os.getpid(), "plugin_errors": [p.to_dict() for p in registry.failures]}) + "\n")
    replies.flush()
    serve(registry.implementations, sys.stdin, replies)


if __name__ == "__main__":
    main()
