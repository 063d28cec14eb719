"""Measuring one pair, inside the worker: build, correctness trials, memory, timing, the post-timing check.

Correctness is checked on fresh seeded inputs against a float64 reference.
Timed calls then rotate over several input sets -- the trials' own inputs, so
their references are already computed -- and the last output on each set is
checked again after timing: an implementation that caches outputs by input,
or goes wrong after its first calls, is caught at no extra reference cost.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from time import perf_counter  # bound before plugins load: a patched time.perf_counter cannot skew it

import torch

from attnbench.case import FP8_DTYPES, Case, dtype_name
from attnbench.implementation import Implementation, Unsupported, from_layout, to_layout
from attnbench.measure import correctness as corr
from attnbench.measure import memory
from attnbench.measure.timing import Timing, time_cpu, time_cuda, warmup
from attnbench.options import Correctness, trial_seed
from attnbench.options import Timing as TimingOptions
from attnbench.outcome import GRAD_NAMES, classify, describe, error_prefix
from attnbench.telemetry import gpu_state, gpu_uuid, throttling

MEMORY_TRIAL = 1
"""The correctness trial whose call is also the memory measurement: the second, so one-time
allocations of the first call (oneDNN primitives, cuBLAS workspaces) are not counted."""
SLOW_CALL_S = 0.25
"""A checked call at least this slow stands in for the warm-up before timing: one more call would
cost seconds on long sequences and change nothing (such calls are timed one per sample anyway)."""
MIN_INPUT_SETS = 2
"""Timed calls rotate over at least this many input sets, so no output can be served from a cache."""


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
    release: bool = False
    """The process's last request of this case: afterwards it drops the case's cached references and returns
    cached device memory, so that while another process measures the case, this one holds nothing of it."""

    def to_json(self) -> dict:
        """The request as one JSON-ready object, as it travels on the worker's stdin."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "case": self.case.to_dict(),
                "correctness": asdict(self.correctness), "timing": asdict(self.timing)}

    @classmethod
    def from_json(cls, data: dict) -> Request:
        """The request ``to_json`` wrote; protocol fields (the request id) are not the request's."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in names}, "case": Case.from_dict(data["case"]),
                      "correctness": Correctness(**data["correctness"]), "timing": TimingOptions(**data["timing"])})


@dataclass(frozen=True)
class Trial:
    """One input set with what its outputs should be: the float64 reference and the same-dtype baseline."""

    seed: int
    inputs: corr.Inputs
    rows: torch.Tensor | None
    expected: tuple[torch.Tensor, ...]
    baseline: tuple[torch.Tensor, ...]
    label: str = ""

    def negated_v(self) -> Trial:
        """The same trial with v (and dO) negated, whose references follow exactly, without computing one.

        Attention is linear in v: the output negates, and with dO negated too the
        loss is unchanged, so dq and dk stay and dv negates. Negation is exact in
        floating point, so the baseline's errors are the original's.
        """
        i = self.inputs
        twin = i.replace(v=_negated(i.v), grad_out=None if i.grad_out is None else -i.grad_out)
        flip = (True, False, False, True)  # out, dq, dk, dv
        return Trial(self.seed, twin, self.rows,
                     tuple(-t if f else t for t, f in zip(self.expected, flip)),
                     tuple(-t if f else t for t, f in zip(self.baseline, flip)), label=" with v negated")


def _negated(t: torch.Tensor) -> torch.Tensor:
    """``-t``; fp8 tensors (which torch cannot negate on every device) by flipping their sign bit, as exact."""
    if t.dtype in FP8_DTYPES.values():
        return (t.view(torch.uint8) ^ 0x80).view(t.dtype)
    return -t


class _References:
    """The last case's trials by seed: each reference is computed once, for every implementation of the case."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.trials: dict[int, Trial] = {}

    def clear(self) -> None:
        self.key, self.trials = None, {}

    def get(self, case: Case, seed: int, max_rows: int | None) -> Trial:
        key = (case, max_rows)
        if key != self.key:
            self.key, self.trials = key, {}
        if seed not in self.trials:
            inputs = corr.make_inputs(case, seed)
            rows = corr.sample_rows(case, max_rows, seed) if not case.needs_backward else None
            expected = corr.reference_outputs(inputs, case, dtype=torch.float64, rows=rows)
            baseline = corr.reference_outputs(inputs, case, dtype=case.dtype, rows=rows)
            self.trials[seed] = Trial(seed, inputs, rows, expected, baseline)
        return self.trials[seed]


_REFERENCES = _References()


def _copy(inputs: corr.Inputs) -> corr.Inputs:
    """Inputs an implementation may scribble on without touching the cached ones the next is checked on."""
    keywords = {name: value.clone() if isinstance(value, torch.Tensor) else value
                for name, value in inputs.keywords.items()}
    return corr.Inputs(*(None if t is None else t.clone() for t in (inputs.q, inputs.k, inputs.v, inputs.grad_out)),
                       keywords=keywords)


def output_buffer(q: torch.Tensor, case: Case) -> torch.Tensor:
    """An empty ``out=`` buffer for q as the implementation takes it: q's shape with the value head dim last,
    in the output dtype."""
    return q.new_empty((*q.shape[:-1], case.value_dim), dtype=case.out_dtype)


def layout_of(impl: Implementation, case: Case) -> str:
    """The layout ``impl`` is handed ``case`` in: its declared one, but packed tensors have only one."""
    return "bhsd" if case.packed else impl.layout


class Step:
    """The timed region for the case's pass -- forward (no autograd), backward alone, or both -- one call each
    time it is called, rotating over its input sets. ``last[i]`` holds the latest results on set ``i``
    (output, then gradients), in the implementation's layout; ``calls`` counts the calls made."""

    def __init__(self, fn: Callable, impl: Implementation, case: Case, sets: Sequence[corr.Inputs]) -> None:
        self.calls = 0
        self.last: list[tuple | None] = [None] * len(sets)
        self.reused_at: int | None = None
        """The call that returned the very output an earlier call on its set returned (still held, so no
        fresh allocation could sit there): an output served from a cache."""
        # An out= implementation returns its buffer every time, by contract; a backward-only step reuses its forward.
        self._fresh_outputs = not impl.out and case.pass_ != "bwd"
        self._calls = [self._one(fn, impl, case, inputs, i) for i, inputs in enumerate(sets)]

    def __call__(self) -> object:
        i = self.calls % len(self._calls)
        self.calls += 1
        previous = self.last[i]
        result = self._calls[i]()
        if (self._fresh_outputs and self.reused_at is None and previous is not None
                and _same_storage(previous[0], self.last[i][0])):
            self.reused_at = self.calls
        return result

    def _one(self, fn: Callable, impl: Implementation, case: Case, inputs: corr.Inputs, i: int) -> Callable[[], object]:
        given = _in_layout(inputs, impl, case)
        q, k, v = given.q, given.k, given.v
        keywords = given.keywords
        last = self.last
        if case.pass_ == "fwd":
            buffer = output_buffer(q, case) if impl.out else None

            def forward():
                with torch.no_grad():
                    out = fn(q, k, v, **keywords) if buffer is None else fn(q, k, v, out=buffer, **keywords)
                last[i] = (out,)
                return out
            return forward
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
        grad_out = given.grad_out
        if case.pass_ == "bwd":
            out = fn(q, k, v, **keywords)

            def backward():
                grads = torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True)
                last[i] = (out.detach(), *grads)
                return grads
            return backward

        def forward_backward():
            out = fn(q, k, v, **keywords)
            grads = torch.autograd.grad(out, (q, k, v), grad_out)
            last[i] = (out.detach(), *grads)
            return grads
        return forward_backward


def _same_storage(a: object, b: object) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.numel() > 0 and (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


def make_step(fn: Callable, impl: Implementation, case: Case, inputs: corr.Inputs | Sequence[corr.Inputs]) -> Step:
    """The timed region over one input set or several (rotated call by call)."""
    return Step(fn, impl, case, [inputs] if isinstance(inputs, corr.Inputs) else list(inputs))


def _in_layout(inputs: corr.Inputs, impl: Implementation, case: Case) -> corr.Inputs:
    """The inputs as the implementation takes them: converted here, outside any measured region, so a bshd
    implementation is not charged for the harness's transposes."""
    layout = layout_of(impl, case)
    return corr.Inputs(*(None if t is None else to_layout(t, layout)
                         for t in (inputs.q, inputs.k, inputs.v, inputs.grad_out)), keywords=inputs.keywords)


def _run_trial(fn: Callable, impl: Implementation, case: Case, given: corr.Inputs) -> tuple[torch.Tensor, ...]:
    """Outputs (and gradients for backward cases) of one correctness call on inputs already in the
    implementation's layout (``_in_layout``), back in bhsd layout."""
    q, k, v = given.q, given.k, given.v
    keywords, layout = given.keywords, layout_of(impl, case)
    if not case.needs_backward:
        poisoned = output_buffer(q, case).fill_(float("nan")) if impl.out else None
        with torch.no_grad():
            out = fn(q, k, v, **keywords) if poisoned is None else fn(q, k, v, out=poisoned, **keywords)
        _check_output(out, case, given)
        if poisoned is not None:
            if out.data_ptr() != poisoned.data_ptr():
                raise _Incorrect("declares out= but returned another tensor than the out buffer")
            unwritten = int(torch.isnan(poisoned).sum())
            if unwritten:
                raise _Incorrect(f"left {unwritten} of {poisoned.numel()} elements of the out buffer unwritten")
        return (from_layout(out, layout),)
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, **keywords)
    _check_output(out, case, given)
    if not out.requires_grad:
        raise _Incorrect("output does not depend on q, k, v through autograd (no gradient)")
    grads = torch.autograd.grad(out, (q, k, v), given.grad_out, allow_unused=True)
    if any(g is None for g in grads):
        raise _Incorrect("gradient missing for " + ", ".join(n for n, g in zip("qkv", grads) if g is None))
    return tuple(from_layout(t, layout) for t in (out.detach(), *grads))


def _check_output(out: object, case: Case, given: corr.Inputs) -> None:
    """``given``: the inputs in the implementation's layout, whose q the output must match in shape and type."""
    problem = corr.output_problem(out, case, given.q)
    if problem:
        raise _Incorrect(problem)


class _Incorrect(Exception):
    """The implementation ran but its result is unacceptable (shape, dtype, mutation...)."""


def _trials(req: Request) -> list[int]:
    return list(range(req.correctness.seeds)) if req.trials is None else list(req.trials)


def _seed(req: Request, trial: int) -> int:
    return trial_seed(req.seed, trial)


def _memory_from_trials(req: Request) -> bool:
    """Whether a correctness trial can double as the memory measurement (its call is the timed step's)."""
    return req.measure_memory and req.check_correctness and MEMORY_TRIAL in _trials(req)[1:] and req.case.pass_ != "bwd"


def _judge(results: Sequence[torch.Tensor], trial: Trial, impl: Implementation, case: Case,
           tolerance: corr.Tolerance) -> tuple[dict[str, dict], str | None]:
    """Each tensor's errors against the trial's reference (and the baseline's), and the first failure."""
    judged, failure = {}, None
    for name, got, exp, base in zip(GRAD_NAMES, results, trial.expected, trial.baseline):
        got = got if trial.rows is None or name != "out" else got[:, :, trial.rows.to(got.device)]
        errors = corr.error_metrics(got, exp)
        base_errors = corr.error_metrics(base, exp)
        reason = corr.judge(errors, base_errors, dtype_name(case.out_dtype), tolerance) if impl.exact else None
        if errors["nonfinite"]:
            reason = f"{errors['nonfinite']} NaN/Inf values"
        judged[name] = {"errors": errors, "baseline": base_errors}
        if reason and failure is None:
            failure = f"{name}: {reason} (seed {trial.seed}{trial.label})"
    return judged, failure


def _check_correctness(fn, impl: Implementation, req: Request, metrics: dict, call_s: list[float]) -> str | None:
    """Run this process's trials on fresh inputs; fill error metrics (worst over trials) and each call's
    seconds into ``call_s``; return the failure reason or None."""
    case = req.case
    tolerance = req.correctness.rule()
    worst: dict[str, dict] = {}
    failure = None
    for trial_index in _trials(req):
        trial = _REFERENCES.get(case, _seed(req, trial_index), req.correctness.max_rows)
        given = _in_layout(_copy(trial.inputs), impl, case)
        if trial_index == MEMORY_TRIAL and _memory_from_trials(req):
            box: list = []

            def trial_call(box=box, given=given):
                box.append(_run_trial(fn, impl, case, given))

            metrics["peak_bytes"] = _measure_memory(trial_call, case.device)
            results = box[0]
        else:
            start = perf_counter()
            results = _run_trial(fn, impl, case, given)
            call_s.append(perf_counter() - start)
        for name, before, after in zip("qkv", (trial.inputs.q, trial.inputs.k, trial.inputs.v),
                                       (given.q, given.k, given.v)):
            # The tensors the implementation was handed, compared in bhsd: a write into them is caught here,
            # and cannot reach the cached inputs that the next implementation is checked on.
            if not torch.equal(before, from_layout(after, layout_of(impl, case))):
                raise _Incorrect(f"the implementation wrote into its input {name}")
        for name, before in trial.inputs.keywords.items():
            if isinstance(before, torch.Tensor) and not torch.equal(before, given.keywords[name]):
                raise _Incorrect(f"the implementation wrote into its input {name}")
        judged, reason = _judge(results, trial, impl, case, tolerance)
        for name, entry in judged.items():
            if name not in worst or _worse(entry["errors"], worst[name]["errors"]):
                worst[name] = entry
        failure = failure or reason
    for name, entry in worst.items():
        prefix = error_prefix(name)
        metrics[f"{prefix}rel_err"] = entry["errors"]["rel_err"]
        metrics[f"{prefix}max_abs_err"] = entry["errors"]["max_abs_err"]
        metrics[f"{prefix}baseline_rel_err"] = entry["baseline"]["rel_err"]
        if entry["errors"]["nonfinite"]:
            metrics[f"{prefix}nonfinite"] = entry["errors"]["nonfinite"]
    metrics["correctness_seeds"] = len(_trials(req))
    max_rows = req.correctness.max_rows
    metrics["correctness_rows"] = None if max_rows is None or case.seq_q <= max_rows or case.needs_backward or case.packed else max_rows
    return failure


def _worse(a: dict, b: dict) -> bool:
    if a["nonfinite"] or b["nonfinite"]:
        return a["nonfinite"] > b["nonfinite"]
    return a["rel_err"] > b["rel_err"]


def timing_trials(req: Request) -> list[Trial]:
    """The input sets timed calls rotate over: this process's trials (their references are cached), twinned
    with v negated while fewer than ``MIN_INPUT_SETS``. A process that checks no trial takes the first."""
    indices = _trials(req) if req.check_correctness else []
    trials = [_REFERENCES.get(req.case, _seed(req, t), req.correctness.max_rows) for t in indices or [0]]
    for trial in list(trials):
        if len(trials) >= MIN_INPUT_SETS:
            break
        trials.append(trial.negated_v())
    return trials


def _check_after_timing(step: Step, trials: list[Trial], impl: Implementation, req: Request) -> str | None:
    """The failure, if any, of the last outputs timing produced on each input set."""
    if step.reused_at is not None:
        return (f"after {step.calls} calls: call {step.reused_at} returned the tensor an earlier call on the same "
                "inputs had returned (an output cache, not a computation)")
    for results, trial in zip(step.last, trials):
        if results is None:
            continue
        out = results[0]
        layout = layout_of(impl, req.case)
        problem = corr.output_problem(from_layout(out, layout) if isinstance(out, torch.Tensor) else out,
                                      req.case, trial.inputs.q)
        if problem:
            return f"after {step.calls} calls: {problem} (seed {trial.seed}{trial.label})"
        _, failure = _judge([from_layout(t, layout) for t in results], trial, impl, req.case,
                            req.correctness.rule())
        if failure:
            return f"after {step.calls} calls: {failure}"
    return None


def _telemetry_id(device: str) -> str | None:
    """The card this worker times on, as NVML names it; None on CPU or when torch cannot say."""
    if device != "cuda":
        return None
    return gpu_uuid(torch.cuda.get_device_properties(torch.cuda.current_device()))


def _measure_memory(step: Callable[[], object], device: str) -> int:
    if device == "cuda":
        return memory.peak_bytes_cuda(step)
    return memory.peak_bytes_cpu(step)


def _time(step: Callable[[], object], req: Request, warm: bool, checked_call_s: float | None = None) -> Timing:
    """Time ``step``; ``warm``: calls of it ran already, the fastest unprofiled one taking ``checked_call_s``."""
    t = req.timing
    calls = 1 if warm else max(1, t.warmup)
    if req.case.device == "cuda":  # time_cuda warms up itself: its repeats are sized from the warm-up
        return time_cuda(step, repeats=t.cuda_repeats, time_ms=t.cuda_time_ms, max_repeats=t.cuda_max_repeats,
                         warmup_calls=calls, warmup_ms=t.warmup_ms, flush_l2=t.flush_l2,
                         cuda_graph=t.cuda_graph, backward_only=req.case.pass_ == "bwd")
    if warm and checked_call_s is not None and checked_call_s >= SLOW_CALL_S:
        estimate = checked_call_s
    else:
        estimate = warmup(step, calls, "cpu", min_ms=t.warmup_ms)
    return time_cpu(step, min_time_s=t.min_time_s, min_samples=t.repeats,
                    first_estimate_s=estimate)


def measure(impl: Implementation, req: Request) -> dict:
    """Build and measure one pair; always returns a reply (status, reason, metrics, samples)."""
    reply: dict = {"status": "ok", "reason": "", "metrics": {}, "samples_ms": [], "fatal": False}
    metrics = reply["metrics"]
    case = req.case
    begun = perf_counter()
    try:
        start = perf_counter()
        fn = impl.build(case)
        metrics["build_s"] = perf_counter() - start
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
        if not (req.measure_memory or req.measure_time):
            return _finish(reply, req, begun)
        trials = timing_trials(req)
        step = make_step(fn, impl, case, [_copy(t.inputs) for t in trials])
        if req.measure_memory and not _memory_from_trials(req):
            if not warm:
                # One-time allocations (oneDNN primitives, cuBLAS workspaces) are not the call's memory.
                warmup(step, 1, case.device)
            metrics["peak_bytes"] = _measure_memory(step, case.device)
            warm = True
        if req.measure_time:
            gpu = _telemetry_id(case.device)
            before = gpu_state(gpu) if gpu else None
            timing = _time(step, req, warm, min(call_s) if call_s else None)
            if gpu and before is not None:
                after = gpu_state(gpu)
                reply["telemetry"] = {"before": before, "after": after}
                slowed = throttling(before, after)
                if slowed:
                    metrics["throttled"] = slowed
            reply["samples_ms"] = timing.samples_ms
            metrics["timing_method"] = timing.method
            metrics["timing_inner"] = timing.inner
            metrics["timing_input_sets"] = len(trials)
            if timing.notes:
                metrics["timing_notes"] = timing.notes
        if reply["status"] == "ok":
            late = _check_after_timing(step, trials, impl, req)
            if late:
                reply.update(status="incorrect", reason=late)
    except Unsupported as exc:
        reply.update(status="unsupported", reason=exc.reason)
    except _Incorrect as exc:
        reply.update(status="incorrect", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a plugin may raise anything; it becomes this pair's record
        status, fatal = classify(exc)
        reply.update(status=status, reason=describe(exc), fatal=fatal)
    return _finish(reply, req, begun)


def _finish(reply: dict, req: Request, begun: float) -> dict:
    reply["wall_s"] = perf_counter() - begun
    if req.release:
        release(req.case.device)
    return reply


def release(device: str) -> None:
    """Give back what measuring a case held: its cached references, and the allocator's cached device memory."""
    _REFERENCES.clear()
    gc.collect()  # implementations' reference cycles (closures over tensors) would keep memory until later
    if device == "cuda":
        torch.cuda.empty_cache()
