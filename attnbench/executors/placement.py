"""Placement: which pairs go together and where, as pure functions of device lists and cluster state.

Nothing here starts a process or imports torch, Ray or submitit: the executors
ask these functions, and the tests call them with made-up devices and nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

P = TypeVar("P")


@dataclass(frozen=True)
class Gpu:
    """A CUDA device as the executing process sees it."""

    ordinal: int
    """torch's index, 0..device_count-1 in this process."""
    name: str
    uuid: str | None = None
    """``GPU-…`` as nvidia-smi prints it, when torch exposes it: what telemetry is asked about."""


@dataclass(frozen=True)
class Slot:
    """One lane of measurement: a single GPU, or on CPU the whole machine. A slot times one pair at a time."""

    index: int
    cuda_visible_devices: str | None
    """What the slot's workers get as CUDA_VISIBLE_DEVICES; None leaves the variable as inherited."""
    gpu: Gpu | None = None
    gpu_index: int | None = None
    """The GPU's number on its node where the pin is a plain index (else its ordinal here)."""


def device_slots(device: str, visible: str | None, gpus: Sequence[Gpu]) -> list[Slot]:
    """One slot per visible GPU for CUDA cases, pinned through CUDA_VISIBLE_DEVICES; one unpinned slot on CPU.

    ``visible`` is this process's CUDA_VISIBLE_DEVICES (None when unset) and
    ``gpus`` the devices torch enumerates under it. A pin reuses the entry of
    ``visible`` that torch's ordinal stands for (an index, a UUID or a MIG
    name), so a run already confined to some GPUs stays inside them.
    """
    if device != "cuda" or not gpus:
        return [Slot(0, None)]
    entries = [e.strip() for e in visible.split(",")] if visible is not None else None
    slots = []
    for gpu in gpus:
        pin = entries[gpu.ordinal] if entries and gpu.ordinal < len(entries) else str(gpu.ordinal)
        slots.append(Slot(len(slots), pin, gpu, int(pin) if pin.isdigit() else gpu.ordinal))
    return slots


def by_case(pairs: Sequence[P]) -> list[list[P]]:
    """Pairs (anything with a hashable ``.case``) grouped by case, in first-seen order:
    a case's implementations are measured together, in rounds."""
    groups: dict[Any, list[P]] = {}
    for pair in pairs:
        groups.setdefault(pair.case, []).append(pair)
    return list(groups.values())


def chunk(groups: Sequence[list[P]], per_chunk: int) -> list[list[P]]:
    """Consecutive groups joined ``per_chunk`` at a time (the last chunk may hold fewer)."""
    per_chunk = max(1, per_chunk)
    return [[p for group in groups[i:i + per_chunk] for p in group] for i in range(0, len(groups), per_chunk)]


def gres_gpus(gres: str | None) -> int:
    """GPUs per job in a Slurm gres string: ``gpu:h100:4`` -> 4, ``gpu:2`` -> 2, ``gpu:h100`` -> 1, none -> 0."""
    for item in (gres or "").split(","):
        name, *rest = item.strip().split(":")
        if name == "gpu":
            return int(rest[-1]) if rest and rest[-1].isdigit() else 1
    return 0


def ray_request(num_gpus: float, accelerator_type: str | None, num_cpus: float = 1) -> dict[str, float]:
    """The resources one Ray task asks for, spelled as nodes advertise them."""
    request = {"CPU": float(num_cpus)}
    if num_gpus:
        request["GPU"] = float(num_gpus)
    if accelerator_type:
        # Ray's accelerator_type option is a tiny claim on this custom resource.
        request[f"accelerator_type:{accelerator_type}"] = 0.001
    return request


def node_fits(request: dict[str, float], node: dict[str, Any]) -> bool:
    """Whether one node of ``ray.nodes()`` could ever run the request (its totals, not what is free now)."""
    if not node.get("Alive", node.get("alive", False)):
        return False
    have = node.get("Resources") or {}
    return all(have.get(name, 0.0) >= amount for name, amount in request.items())


def unfit_reason(request: dict[str, float], nodes: Sequence[dict[str, Any]]) -> str | None:
    """None when some live node fits; otherwise what was asked and what the live nodes offer."""
    if any(node_fits(request, n) for n in nodes):
        return None
    asked = ", ".join(f"{k}={v:g}" for k, v in sorted(request.items()))
    alive = [n for n in nodes if n.get("Alive", n.get("alive", False))]
    offers = sorted({", ".join(f"{k}={v:g}" for k, v in sorted((n.get("Resources") or {}).items())
                               if k in ("CPU", "GPU") or k.startswith("accelerator_type:"))
                     for n in alive})
    return f"no live Ray node offers {asked}; live nodes: " + ("; ".join(offers) if offers else "none")
