"""How a run measures: one frozen dataclass per concern, each defined once.

A suite produces them (``attnbench.suite``), the command line overrides
fields, ``runner.RunOptions`` carries them, and the worker receives them in
each request (``dataclasses.asdict`` one way, the constructor the other). Their defaults are
the suite schema's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attnbench.case import dtype_name
from attnbench.measure.correctness import DEFAULT_ABS_FLOOR, DEFAULT_FACTOR, Tolerance


@dataclass(frozen=True)
class Correctness:
    """How outputs are checked: an implementation passes a case in a dtype when its
    error <= ``tolerance_factor`` x the error of plain attention in that dtype + the dtype's floor."""

    seeds: int = 3
    tolerance_factor: float = DEFAULT_FACTOR
    floors: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ABS_FLOOR))
    """Absolute error always allowed, per dtype."""
    max_rows: int | None = 2048
    """Forward outputs longer than this are checked on a fresh random sample of this many rows."""

    def tolerance(self, dtype: torch.dtype | str, eager_error: float) -> float:
        """Largest max-abs error that passes, given plain attention's on the same case and seed."""
        name = dtype if isinstance(dtype, str) else dtype_name(dtype)
        return self.tolerance_factor * eager_error + self.floors[name]

    def rule(self) -> Tolerance:
        """The pass rule's parameters, as ``measure.correctness.judge`` takes them."""
        return Tolerance(factor=self.tolerance_factor, abs_floor={**DEFAULT_ABS_FLOOR, **self.floors})


def trial_seed(run_seed: int, trial: int) -> int:
    """The seed of correctness trial ``trial``'s inputs in a run with seed ``run_seed``: the one owner of the
    formula, for the worker that draws the inputs and the parent that records what they were."""
    return run_seed * 1000 + trial


@dataclass(frozen=True)
class Timing:
    """How calls are timed, on CPU (calibrated repeats in worker processes) and on CUDA (events)."""

    warmup: int = 3
    """Untimed calls before timing, at least."""
    warmup_ms: float = 25.0
    """Warm-up lasts at least this long: calls are added while ``warmup`` of them would take less
    (so only fast calls warm up longer than ``warmup`` calls)."""
    min_time_s: float = 0.1
    """CPU: timed samples in each process add up to at least this long."""
    repeats: int = 5
    """CPU: at least this many timed samples in each process."""
    processes: int = 2
    """Worker processes that time each pair, implementations interleaved."""
    cuda_repeats: int = 10
    """CUDA: at least this many timed calls in each process."""
    cuda_time_ms: float = 100.0
    """CUDA: timed calls add up to about this long (their number estimated from the warm-up)."""
    cuda_max_repeats: int = 10_000
    """CUDA: at most this many timed calls in each process (``cuda_repeats`` wins if larger)."""
    flush_l2: bool = True
    cuda_graph: bool = False


@dataclass(frozen=True)
class MemoryBudget:
    """Memory a case may use: a fraction of free memory, or a fixed number of bytes."""

    fraction: float | None = None
    nbytes: int | None = None

    def limit(self, free_bytes: int) -> int:
        """The budget in bytes, given the device's free memory."""
        if self.nbytes is not None:
            return self.nbytes
        assert self.fraction is not None
        return int(self.fraction * free_bytes)


@dataclass(frozen=True)
class Hardware:
    """What a fleet run asks its cluster for (the suite's ``hardware`` section); None: not set."""

    gpu_type: str | None = None
    gpus_per_job: int | None = None
    partition: str | None = None
