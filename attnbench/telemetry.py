"""A GPU's clocks, temperature and throttle reasons, read by the worker just before and after it times a pair.

NVML (the ``pynvml`` module of nvidia-ml-py) when importable, else
``nvidia-smi``. Neither exists on CPU-only machines: CPU records carry no
telemetry, and a GPU reading that fails says why instead of holding numbers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
"""NVML's clocks-throttle (since driver 535: clocks-event) reason bits."""

BENIGN_REASONS = frozenset({"gpu_idle", "applications_clocks_setting", "sync_boost", "display_clock_setting"})
"""Reasons that mean the clocks are where the card's settings put them, not lowered by power or heat."""
CLOCK_DROP = 0.9
"""An SM clock after timing below this fraction of the one before it: the pair was timed on a slowing card."""
UUID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")

SMI_FIELDS = ("clocks.sm", "clocks.mem", "temperature.gpu")
# Drivers before 535 know only the first spelling, later ones prefer the second.
SMI_REASON_FIELDS = ("clocks_throttle_reasons.active", "clocks_event_reasons.active")


def throttle_names(mask: int) -> list[str]:
    """The named reasons set in a throttle bitmask (unknown bits as hex)."""
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    return names + ([hex(unknown)] if unknown else [])


def parse_smi_line(line: str) -> dict:
    """One ``nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu,<reasons> --format=csv,noheader,nounits`` line."""
    sm, mem, temp, reasons = (field.strip() for field in line.split(","))
    mask = int(reasons, 16) if reasons.lower().startswith("0x") else None
    return {
        "sm_clock_mhz": _number(sm),
        "mem_clock_mhz": _number(mem),
        "temperature_c": _number(temp),
        "throttle_reasons": None if mask is None else throttle_names(mask),
    }


def _number(text: str) -> int | None:
    return int(float(text)) if text.replace(".", "", 1).isdigit() else None  # "[N/A]" stays unknown


def gpu_state(gpu: str) -> dict:
    """The GPU's state now; ``gpu`` is a ``GPU-<uuid>`` or an index as nvidia-smi numbers them."""
    nvml = _from_nvml(gpu)
    if nvml is not None and "error" not in nvml:
        reading = nvml
    else:
        reading = _from_smi(gpu)
        if "error" in reading:
            reading["error"] = (f"NVML: {nvml['error']}" if nvml else "pynvml not installed") + \
                f"; nvidia-smi: {reading['error']}"
    reading["gpu"] = gpu
    reading["read_at"] = time.time()
    return reading


def _from_nvml(gpu: str) -> dict | None:
    """None when pynvml is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = (pynvml.nvmlDeviceGetHandleByUUID(gpu) if gpu.startswith(("GPU-", "MIG-"))
                  else pynvml.nvmlDeviceGetHandleByIndex(int(gpu)))
        reasons = (getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                   or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons)
        return {
            "source": "nvml",
            "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
            "throttle_reasons": throttle_names(reasons(handle)),
        }
    except Exception as exc:  # noqa: BLE001 - any NVML failure: try nvidia-smi, and say what NVML said
        return {"source": "nvml", "error": f"{type(exc).__name__}: {exc}"[:200]}


def _from_smi(gpu: str) -> dict:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"source": None, "error": "not found"}
    last_error = ""
    for reasons in SMI_REASON_FIELDS:
        query = ",".join((*SMI_FIELDS, reasons))
        try:
            done = subprocess.run([smi, "-i", gpu, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            return {"source": "nvidia-smi", "error": str(exc)[:200]}
        if done.returncode == 0 and done.stdout.strip():
            try:
                return {"source": "nvidia-smi", **parse_smi_line(done.stdout.strip().splitlines()[0])}
            except ValueError as exc:
                return {"source": "nvidia-smi", "error": f"unreadable output {done.stdout.strip()!r}: {exc}"[:200]}
        last_error = (done.stderr or done.stdout).strip()
    return {"source": "nvidia-smi", "error": last_error[:200]}


def gpu_uuid(props: object) -> str | None:
    """``GPU-<uuid>`` as nvidia-smi and NVML name the card, from torch's device properties (torch 2.4 and later)."""
    raw = str(getattr(props, "uuid", "") or "")
    bare = raw.removeprefix("GPU-")
    return f"GPU-{bare}" if UUID.match(bare) else None


def throttling(before: dict, after: dict) -> list[str]:
    """What slowed the card while a pair was timed: throttle reasons beyond its settings, or a falling SM clock."""
    found = sorted({r for reading in (before, after) for r in reading.get("throttle_reasons") or ()
                    if r not in BENIGN_REASONS})
    first, last = before.get("sm_clock_mhz"), after.get("sm_clock_mhz")
    if first and last and last < CLOCK_DROP * first:
        found.append(f"SM clock fell from {first} to {last} MHz")
    return found
