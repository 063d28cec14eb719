"""The settings a run takes from a suite on one device: what to run, and how (``attnbench.options``).

Plain frozen data with no knowledge of YAML; ``parts.layer_settings`` builds
them from a suite's top level and device section.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from attnbench.measure.correctness import DEFAULT_ABS_FLOOR as DEFAULT_FLOORS
from attnbench.options import Correctness, Hardware, MemoryBudget, Timing

__all__ = ["DEFAULT_FLOORS", "Correctness", "Hardware", "MemoryBudget", "Settings", "Timing"]


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
