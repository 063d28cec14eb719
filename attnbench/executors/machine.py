"""This node as its records describe it: a compact environment and the GPUs this process sees."""

from __future__ import annotations

import functools
import re

import torch

from attnbench.executors.placement import Gpu
from attnbench.hardware import fingerprint

COMPACT_KEYS = ("hostname", "platform", "python", "attnbench", "torch", "triton", "cuda_runtime", "cudnn", "driver",
                "cpu", "cpu_count", "memory_bytes")
"""The fingerprint fields that tell one node's measurements from another's (the run keeps the full one)."""

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@functools.cache
def compact_environment() -> dict:
    """This node's software and hardware, once per process (nvidia-smi is asked for the driver once)."""
    full = fingerprint()
    return {key: full.get(key) for key in COMPACT_KEYS}


def visible_gpus() -> list[Gpu]:
    """CUDA devices under this process's CUDA_VISIBLE_DEVICES, in torch's order; none without CUDA."""
    if not torch.cuda.is_available():
        return []
    gpus = []
    for ordinal in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(ordinal)
        gpus.append(Gpu(ordinal, props.name, _uuid(props)))
    return gpus


def _uuid(props) -> str | None:
    """``GPU-<uuid>`` as nvidia-smi and NVML name the card, when this torch exposes it (2.4 and later)."""
    raw = str(getattr(props, "uuid", "") or "")
    bare = raw.removeprefix("GPU-")
    return f"GPU-{bare}" if UUID.match(bare) else None
