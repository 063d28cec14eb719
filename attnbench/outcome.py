"""How one measurement ended, in the words every worker reply uses.

Shared by the kernel worker (``attnbench.worker``), the quality worker
(``attnbench.quality.work``) and the parent that merges their replies
(``attnbench.executors.local``): the status an exception maps to, its
one-line description, and the names of a checked tensor's error metrics.
"""

from __future__ import annotations

import os
import traceback

import torch

FATAL_MARKERS = ("CUDA error", "illegal memory access", "device-side assert", "CUBLAS_STATUS", "cudaError")
"""Text of errors after which the CUDA context is unusable: the worker must be replaced."""
OOM_MARKERS = ("out of memory", "can't allocate memory", "Cannot allocate memory", "std::bad_alloc")

GRAD_NAMES = ("out", "dq", "dk", "dv")
"""The tensors a correctness check compares: the output, and the gradients for backward cases."""
ERROR_KEYS = ("rel_err", "max_abs_err", "baseline_rel_err", "nonfinite")
"""A tensor's error metrics, named ``error_prefix(tensor) + key``."""


def error_prefix(name: str) -> str:
    """The metric-name prefix of a checked tensor: none for the output, ``dq_``... for gradients."""
    return "" if name == "out" else f"{name}_"


def classify(exc: BaseException) -> tuple[str, bool]:
    """Status for an exception raised by an implementation, and whether the worker must be replaced."""
    text = f"{type(exc).__name__}: {exc}"
    fatal = any(m in text for m in FATAL_MARKERS)
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or any(m in text for m in OOM_MARKERS):
        return "oom", fatal
    return "error", fatal


def describe(exc: BaseException) -> str:
    """``Type: first line of the message at file.py:line`` (where it was raised), at most 500 characters."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}{where}"[:500]
