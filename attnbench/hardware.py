"""Where a run happened: hardware and environment fingerprint, and device peak tables."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass

import torch

import attnbench


@dataclass(frozen=True)
class DevicePeak:
    """Vendor-published dense peaks (no sparsity) for one card."""

    match: str
    name: str
    tflops: dict[str, float]
    """Peak TFLOP/s by dtype name: tensor cores for 16-bit, plain FP32 (no TF32) for float32."""
    gbps: float
    """Peak memory bandwidth in GB/s."""


# Order matters: the first whose ``match`` is in the device name wins.
DEVICE_PEAKS: tuple[DevicePeak, ...] = (
    DevicePeak("H200", "NVIDIA H200 SXM", {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9}, 4800),
    DevicePeak("H100 NVL", "NVIDIA H100 NVL", {"bfloat16": 835.0, "float16": 835.0, "float32": 60.0}, 3900),
    DevicePeak("H100 PCIe", "NVIDIA H100 PCIe", {"bfloat16": 756.5, "float16": 756.5, "float32": 51.2}, 2000),
    DevicePeak("H100", "NVIDIA H100 SXM", {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9}, 3350),
    DevicePeak("A100-SXM4-80GB", "NVIDIA A100 SXM 80GB", {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}, 2039),
    DevicePeak("A100", "NVIDIA A100 40GB", {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}, 1555),
    DevicePeak("L4", "NVIDIA L4", {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3}, 300),
    DevicePeak("RTX 4090", "NVIDIA GeForce RTX 4090", {"bfloat16": 165.2, "float16": 165.2, "float32": 82.6}, 1008),
)


def device_peak(device_name: str) -> DevicePeak | None:
    """The peak table entry for a CUDA device name, or None when the card is not in the table."""
    for entry in DEVICE_PEAKS:
        if entry.match in device_name:
            return entry
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or platform's guess elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_memory_bytes() -> int | None:
    """Physical memory of this machine."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory_bytes() -> int | None:
    """Memory the OS says is available now (MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi, when there is one."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def cuda_devices() -> list[dict]:
    """Name, memory and compute capability of each visible CUDA device."""
    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        peak = device_peak(props.name)
        devices.append({
            "index": index,
            "name": props.name,
            "memory_bytes": props.total_memory,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "peak": None if peak is None else {"name": peak.name, "tflops": peak.tflops, "gbps": peak.gbps},
        })
    return devices


def software_fields() -> dict:
    """The host and software versions every fingerprint starts with; asks no GPU anything."""
    try:
        import triton  # noqa: F401 - optional, recorded when present

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - a broken triton install must not stop a run
        triton_version = None
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "attnbench": attnbench.__version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_runtime": torch.version.cuda,
    }


def fingerprint() -> dict:
    """Everything needed to tell two machines' results apart and merge them."""
    cuda = torch.cuda.is_available()
    return {
        **software_fields(),
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": nvidia_driver_version() if cuda else None,
        "cuda_devices": cuda_devices(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": total_memory_bytes(),
    }


def hardware_label(print_: dict, device: str) -> str:
    """Short name of the hardware a run measured: the GPU's name, or the CPU model and thread count."""
    if device == "cuda" and print_.get("cuda_devices"):
        return print_["cuda_devices"][0]["name"]
    return f"{print_.get('cpu', 'cpu')} ({print_.get('torch_threads')} threads)"
