"""Where a run happened: hardware and environment fingerprint, and device peak tables."""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import torch

import attnbench
from attnbench.telemetry import gpu_uuid


@dataclass(frozen=True)
class DevicePeak:
    """Vendor-published dense peaks (no sparsity) for one card."""

    match: str
    """Words of ``torch.cuda.get_device_name`` that pick this entry (case, '-' and '_' ignored; the longest match wins)."""
    name: str
    tflops: dict[str, float]
    """Peak TFLOP/s by dtype name: dense tensor (matrix) cores for 16-bit, plain non-tensor FP32 (not TF32) for float32."""
    gbps: float
    """Peak memory bandwidth in GB/s."""


def _peak(match: str, name: str, half: float, fp32: float, gbps: float) -> DevicePeak:
    return DevicePeak(match, name, {"bfloat16": half, "float16": half, "float32": fp32}, gbps)


# The longest ``match`` found in the device name (as whole words) wins, so "H200 NVL" beats "H200" and "GH200"
# beats both, whatever the order. Figures are the vendor datasheets': 16-bit is the dense
# tensor-core rate (half the "with sparsity" figure where only that is printed), float32 the
# non-tensor FP32 rate, bandwidth the memory's peak. ROCm reports AMD cards as "cuda" too.
DEVICE_PEAKS: tuple[DevicePeak, ...] = (
    # NVIDIA H100 Tensor Core GPU datasheet (SXM, PCIe and NVL columns): BF16/FP16 1,979 / 1,513 /
    # 1,671 TFLOPS with sparsity ("one-half lower without"), FP32 67 / 51 / 60, 3.35 / 2 / 3.9 TB/s.
    # The SXM card names itself "NVIDIA H100 80GB HBM3", hence the bare "H100".
    _peak("H100", "NVIDIA H100 SXM", 989.5, 67.0, 3350),
    _peak("H100 PCIe", "NVIDIA H100 PCIe", 756.5, 51.0, 2000),
    _peak("H100 NVL", "NVIDIA H100 NVL", 835.5, 60.0, 3900),
    # NVIDIA H200 Tensor Core GPU datasheet (SXM and NVL): BF16/FP16 1,979 / 1,671 TFLOPS with
    # sparsity, FP32 67 / 60, 4.8 TB/s both. The SXM card names itself "NVIDIA H200".
    _peak("H200", "NVIDIA H200 SXM", 989.5, 67.0, 4800),
    _peak("H200 NVL", "NVIDIA H200 NVL", 835.5, 60.0, 4800),
    # NVIDIA GH200 Grace Hopper Superchip datasheet: BF16/FP16 990 TFLOPS dense, FP32 67; HBM3 96GB
    # at 4 TB/s ("GH200 480GB" counts the Grace LPDDR5X too), the HBM3e 144GB version 4.9 TB/s.
    _peak("GH200", "NVIDIA GH200 96GB HBM3", 990.0, 67.0, 4000),
    _peak("GH200 144G", "NVIDIA GH200 144GB HBM3e", 990.0, 67.0, 4900),
    # NVIDIA HGX B200 datasheet, per GPU (the 8-GPU board's figures / 8): FP16/BF16 36 PFLOPS with
    # sparsity -> 2.25 dense, FP32 600 TFLOPS -> 75, HBM3e 8 TB/s.
    _peak("B200", "NVIDIA B200", 2250.0, 75.0, 8000),
    # NVIDIA L40S datasheet: BF16/FP16 362.05 TFLOPS dense (733 with sparsity), FP32 91.6, 864 GB/s.
    _peak("L40S", "NVIDIA L40S", 362.05, 91.6, 864),
    # NVIDIA A100 Tensor Core GPU datasheet: BF16/FP16 312 TFLOPS dense, FP32 19.5 for every form;
    # bandwidth 1,555 GB/s (40GB PCIe and SXM), 1,935 (80GB PCIe), 2,039 (80GB SXM). An unlisted
    # A100 gets the 40GB figure, the lowest.
    _peak("A100", "NVIDIA A100 40GB", 312.0, 19.5, 1555),
    _peak("A100-SXM4-40GB", "NVIDIA A100 SXM 40GB", 312.0, 19.5, 1555),
    _peak("A100-SXM4-80GB", "NVIDIA A100 SXM 80GB", 312.0, 19.5, 2039),
    _peak("A100-PCIE-40GB", "NVIDIA A100 PCIe 40GB", 312.0, 19.5, 1555),
    _peak("A100 80GB PCIe", "NVIDIA A100 PCIe 80GB", 312.0, 19.5, 1935),
    # AMD Instinct MI300X data sheet: BF16/FP16 matrix 1,307.4 TFLOPS dense (2,614.9 with
    # sparsity), FP32 vector 163.4, HBM3 5.3 TB/s.
    _peak("MI300X", "AMD Instinct MI300X", 1307.4, 163.4, 5300),
    # NVIDIA L4 datasheet: BF16/FP16 242 TFLOPS with sparsity -> 121 dense, FP32 30.3, 300 GB/s.
    _peak("L4", "NVIDIA L4", 121.0, 30.3, 300),
    # NVIDIA Ada Lovelace GPU architecture whitepaper, RTX 4090: BF16/FP16 tensor with FP32
    # accumulate 165.2 TFLOPS dense, FP32 82.6, 1,008 GB/s.
    _peak("RTX 4090", "NVIDIA GeForce RTX 4090", 165.2, 82.6, 1008),
)


def _normalised(name: str) -> str:
    # "A100-PCIE-40GB" and "A100 80GB PCIe" spell the same words differently.
    return re.sub(r"[-_\s]+", " ", name).strip().lower()


def _names(entry: DevicePeak, device_name: str) -> bool:
    # Whole words only: "L4" must not match "L40S", nor "H200" "GH200".
    pattern = r"(?<![a-z0-9])" + re.escape(_normalised(entry.match)) + r"(?![a-z0-9])"
    return re.search(pattern, device_name) is not None


def device_peak(device_name: str) -> DevicePeak | None:
    """The entry whose ``match`` is the longest whole-word match in a device name; None for a card not in the table."""
    name = _normalised(device_name)
    found = [entry for entry in DEVICE_PEAKS if _names(entry, name)]
    return max(found, key=lambda entry: len(entry.match), default=None)


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


PROBE_TIMEOUT_S = 180.0
"""As long as a worker may take to start: the probe imports torch and initialises CUDA."""


def cuda_devices() -> list[dict]:
    """Name, memory (total and free now), UUID and compute capability of each visible CUDA device.

    Asked of a short-lived subprocess, so this process never holds a CUDA
    context: the runner's parent must not, or under the EXCLUSIVE_PROCESS
    compute mode no worker could use the card, and elsewhere the context
    would cost memory on GPU 0 for the whole run.
    """
    if not torch.cuda.is_available():
        return []
    return _probe(os.environ.get("CUDA_VISIBLE_DEVICES"))


@functools.cache
def _probe(visible: str | None) -> list[dict]:
    env = dict(os.environ)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return cuda_devices_seen_with(env)


def cuda_devices_seen_with(env: Mapping[str, str]) -> list[dict]:
    """``cuda_devices_here`` as a fresh process with ``env`` sees them (as a worker would): this process touches
    no CUDA at all, so a process that runs under several CUDA_VISIBLE_DEVICES in turn (a Ray task's) can ask."""
    done = subprocess.run([sys.executable, "-m", "attnbench.hardware"], env=dict(env), capture_output=True,
                          text=True, timeout=PROBE_TIMEOUT_S)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"listing the CUDA devices under CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r} "
                           f"failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")
    return json.loads(lines[-1])


def cuda_devices_here() -> list[dict]:
    """``cuda_devices`` as this process sees them, initialising CUDA in it (the probe's side)."""
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free, _ = torch.cuda.mem_get_info(index)
        peak = device_peak(props.name)
        devices.append({
            "index": index,
            "name": props.name,
            "uuid": gpu_uuid(props),
            "memory_bytes": props.total_memory,
            "free_bytes": free,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "l2_cache_bytes": getattr(props, "L2_cache_size", None),
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


def published_peaks(device: str, print_: dict) -> dict | None:
    """The vendor's peaks for the run's first GPU, from the table; None on CPU or for a card it lacks."""
    devices = print_.get("cuda_devices") or []
    peak = device_peak(devices[0]["name"]) if device == "cuda" and devices else None
    return None if peak is None else {"name": peak.name, "tflops": dict(peak.tflops), "gbps": peak.gbps}


def hardware_label(print_: dict, device: str) -> str:
    """Short name of the hardware a run measured: the GPU's name, or the CPU model and thread count."""
    if device == "cuda" and print_.get("cuda_devices"):
        return print_["cuda_devices"][0]["name"]
    return f"{print_.get('cpu', 'cpu')} ({print_.get('torch_threads')} threads)"


if __name__ == "__main__":
    print(json.dumps(cuda_devices_here()))
