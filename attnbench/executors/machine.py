"""This node as its records describe it: a compact environment and the GPUs a process sees.

Nothing here initialises CUDA in the calling process except ``visible_gpus``:
a Ray task process runs task after task, each under its own
CUDA_VISIBLE_DEVICES, and CUDA reads that variable once, at initialisation.
Such a process asks ``gpus_seen_with``, which asks a short-lived subprocess
under the task's variables (``hardware.cuda_devices_seen_with``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import torch

from attnbench.executors.placement import Gpu
from attnbench.hardware import (
    cpu_model,
    cuda_devices_here,
    cuda_devices_seen_with,
    nvidia_driver_version,
    software_fields,
    total_memory_bytes,
)


@functools.cache
def compact_environment() -> dict:
    """The fingerprint fields that tell one node's measurements from another's (the run keeps the full one).

    Once per process, and without initialising CUDA: the driver comes from
    nvidia-smi, the CUDA and cuDNN versions from the libraries torch loaded.
    """
    driver = nvidia_driver_version()
    return {
        **software_fields(),
        # cudnn.version() asks the library, not a device; without a driver there is no GPU to use it on.
        "cudnn": torch.backends.cudnn.version() if driver and torch.version.cuda else None,
        "driver": driver,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": total_memory_bytes(),
    }


def visible_gpus() -> list[Gpu]:
    """CUDA devices under this process's CUDA_VISIBLE_DEVICES, in torch's order; none without CUDA.

    Initialises CUDA here: from then on this process sees these devices, whatever the variable says later.
    """
    return _gpus(cuda_devices_here()) if torch.cuda.is_available() else []


def gpus_seen_with(env: Mapping[str, str]) -> list[Gpu]:
    """``visible_gpus`` as a fresh process with ``env`` sees them (as a worker would); this process's CUDA stays untouched."""
    return _gpus(cuda_devices_seen_with(env))


def _gpus(devices: list[dict]) -> list[Gpu]:
    return [Gpu(d["index"], d["name"], d["uuid"]) for d in devices]
