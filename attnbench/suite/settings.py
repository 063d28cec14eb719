"""The settings a run takes from a suite: how outputs are checked, calls timed, memory budgeted.

Plain frozen data with no knowledge of YAML; ``parts.layer_settings`` builds
them from a suite's top level and device section.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch

from attnbench.case import dtype_name

DEFAULT_FLOORS: dict[str, float] = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}
"""Absolute error always allowed per dtype: about one unit in the last place at 1.0 for
the 16-bit types, so an unusually exact eager baseline does not fail everyone else."""


@dataclass(frozen=True)
class Correctness:
    """How outputs are checked: an implementation passes a case in a dtype when its
    error <= ``tolerance_factor`` x the error of ``eager`` in that dtype + the dtype's floor."""

    seeds: int = 3
    tolerance_factor: float = 2.0
    floors: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FLOORS))

    def tolerance(self, dtype: torch.dtype | str, eager_error: float) -> float:
        """Largest error that passes, given eager's error on the same case and seed."""
        name = dtype if isinstance(dtype, str) else dtype_name(dtype)
        return self.tolerance_factor * eager_error + self.floors[name]


@dataclass(frozen=True)
class Timing:
    """How calls are timed, on CPU (calibrated repeats in worker processes) and on CUDA (events)."""

    warmup: int = 3
    min_time_s: float = 0.1
    repeats: int = 5
    processes: int = 2
    cuda_repeats: int = 100
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


@dataclass(frozen=True)
class Settings:
    """Everything but the cases that a run on one device uses, with that device's section applied."""

    device: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    baseline: str
    correctness: Correctness
    timing: Timing
    timeout_s: float
    memory_budget: MemoryBudget

    def selects(self, name: str) -> bool:
        """True when implementation ``name`` matches an include pattern and no exclude pattern."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude
        )
