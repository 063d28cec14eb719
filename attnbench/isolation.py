"""What one pair may not leave behind in its worker: torch's global state, and the timers.

The worker snapshots torch's process-wide settings before plugins load,
puts them back before each pair and compares after it: a plugin that sets
threads, the default dtype, TF32 or an SDPA backend changes its own pair at
most, and the change is named in its record. The timer functions are bound
at start-up, before any plugin is imported; a pair during which one was
replaced is caught by identity and its record becomes ``error``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Knob:
    """One piece of global state: how to read it and how to set it back."""

    name: str
    get: Callable[[], object]
    set: Callable[[object], None]


def _attribute(owner: object, attr: str, name: str) -> Knob:
    return Knob(name, lambda: getattr(owner, attr), lambda value: setattr(owner, attr, value))


def _flush_denormal() -> bool:
    # torch has a setter but no getter: a denormal multiplied by one survives only when not flushed.
    return (torch.tensor([1e-40], dtype=torch.float32) * 1.0).item() == 0.0


def _deterministic() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()


def _sdpa_knobs() -> list[Knob]:
    backends = torch.backends.cuda
    knobs = []
    for kind in ("flash", "mem_efficient", "math", "cudnn"):
        getter, setter = getattr(backends, f"{kind}_sdp_enabled", None), getattr(backends, f"enable_{kind}_sdp", None)
        if getter is not None and setter is not None:
            knobs.append(Knob(f"torch.backends.cuda.{kind}_sdp_enabled()", getter, setter))
    if hasattr(backends, "fp16_bf16_reduction_math_sdp_allowed"):
        knobs.append(Knob("torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()",
                          backends.fp16_bf16_reduction_math_sdp_allowed,
                          backends.allow_fp16_bf16_reduction_math_sdp))
    return knobs


def _knobs() -> tuple[Knob, ...]:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    knobs = [
        Knob("torch.get_num_threads()", torch.get_num_threads, torch.set_num_threads),
        # Settable once, before any parallel work: a change is noted, and restoring it may fail (said so).
        Knob("torch.get_num_interop_threads()", torch.get_num_interop_threads, torch.set_num_interop_threads),
        Knob("torch.get_default_dtype()", torch.get_default_dtype, torch.set_default_dtype),
        Knob("torch.is_grad_enabled()", torch.is_grad_enabled, torch.set_grad_enabled),
        Knob("torch.are_deterministic_algorithms_enabled()", _deterministic,
             lambda value: torch.use_deterministic_algorithms(value[0], warn_only=value[1])),
        Knob("torch.get_float32_matmul_precision()", torch.get_float32_matmul_precision,
             torch.set_float32_matmul_precision),
        Knob("torch.set_flush_denormal()", _flush_denormal, torch.set_flush_denormal),
        _attribute(matmul, "allow_tf32", "torch.backends.cuda.matmul.allow_tf32"),
        _attribute(matmul, "allow_fp16_reduced_precision_reduction",
                   "torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction"),
        _attribute(matmul, "allow_bf16_reduced_precision_reduction",
                   "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction"),
        _attribute(cudnn, "enabled", "torch.backends.cudnn.enabled"),
        _attribute(cudnn, "benchmark", "torch.backends.cudnn.benchmark"),
        _attribute(cudnn, "deterministic", "torch.backends.cudnn.deterministic"),
        _attribute(cudnn, "allow_tf32", "torch.backends.cudnn.allow_tf32"),
        _attribute(torch.backends.mkldnn, "enabled", "torch.backends.mkldnn.enabled"),
        *_sdpa_knobs(),
    ]
    return tuple(knobs)


KNOBS = _knobs()
"""torch's global settings a pair could change to its advantage or another's cost."""


def torch_state() -> dict[str, object]:
    """The current value of every knob."""
    return {knob.name: knob.get() for knob in KNOBS}


def state_changes(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """``name: old -> new`` for each knob that differs."""
    return [f"{name}: {before[name]!r} -> {after[name]!r}" for name in before if after.get(name) != before[name]]


def restore_torch_state(saved: dict[str, object]) -> list[str]:
    """Set every changed knob back; the names of those torch would not take back."""
    failed = []
    for knob in KNOBS:
        if knob.get() != saved[knob.name]:
            try:
                knob.set(saved[knob.name])
            except (RuntimeError, ValueError):
                failed.append(knob.name)
    return failed


@dataclass(frozen=True)
class BoundTimer:
    """A timer function as it was at start-up, and where it lives."""

    name: str
    owner: object
    attr: str
    original: object

    @property
    def replaced(self) -> bool:
        return getattr(self.owner, self.attr, None) is not self.original

    def put_back(self) -> None:
        setattr(self.owner, self.attr, self.original)


def bind_timers() -> tuple[BoundTimer, ...]:
    """The clocks timing relies on, captured now: call before any plugin is imported."""
    places: list[tuple[str, object, str]] = [
        ("time.perf_counter", time, "perf_counter"),
        ("time.perf_counter_ns", time, "perf_counter_ns"),
        ("time.monotonic", time, "monotonic"),
        ("torch.cuda.synchronize", torch.cuda, "synchronize"),
        ("torch.cuda.Event", torch.cuda, "Event"),
    ]
    event = torch.cuda.Event
    places += [(f"torch.cuda.Event.{m}", event, m) for m in ("record", "elapsed_time", "synchronize")]
    return tuple(BoundTimer(name, owner, attr, getattr(owner, attr)) for name, owner, attr in places)


def patched_timers(timers: tuple[BoundTimer, ...]) -> list[str]:
    """Names of the timers replaced since they were bound."""
    return [t.name for t in timers if t.replaced]


def restore_timers(timers: tuple[BoundTimer, ...]) -> None:
    for timer in timers:
        if timer.replaced:
            timer.put_back()
