"""This node as its records describe it: a compact environment and the GPUs a process sees.

Nothing here initialises CUDA in the calling process except ``visible_gpus``:
a Ray task process runs task after task, each under its own
CUDA_VISIBLE_DEVICES, and CUDA reads that variable once, at initialisation.
Such a process asks ``gpus_seen_with``, which runs ``visible_gpus`` in a
short-lived subprocess under the task's variables.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict

import torch

from attnbench.executors.placement import Gpu
from attnbench.hardware import cpu_model, nvidia_driver_version, software_fields, total_memory_bytes
from attnbench.telemetry import gpu_uuid

PROBE_TIMEOUT_S = 180.0
"""As long as a worker may take to start: the probe imports torch and initialises CUDA too."""


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
    if not torch.cuda.is_available():
        return []
    gpus = []
    for ordinal in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(ordinal)
        gpus.append(Gpu(ordinal, props.name, gpu_uuid(props)))
    return gpus


def gpus_seen_with(env: Mapping[str, str]) -> list[Gpu]:
    """``visible_gpus`` as a fresh process with ``env`` sees them (as a worker would); this process's CUDA stays untouched."""
    done = subprocess.run([sys.executable, "-m", "attnbench.executors.machine"], env=dict(env), capture_output=True,
                          text=True, timeout=PROBE_TIMEOUT_S)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"listing the GPUs under CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r} "
                           f"failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")
    return [Gpu(**gpu) for gpu in json.loads(lines[-1])]


if __name__ == "__main__":
    print(json.dumps([asdict(gpu) for gpu in visible_gpus()]))
