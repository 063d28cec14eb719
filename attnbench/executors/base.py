"""The executor seam: ``submit(pairs) -> records``, one record per pair whatever happens, and how a run picks one.

Every executor is a context manager whose ``submit(pairs, on_start)`` yields
exactly one Record per pair, in whatever order the pairs finish. Where the
measurement ran travels in ``Record.where`` (executor, node, GPU,
CUDA_VISIBLE_DEVICES, attempt, the node's environment) and ``Record.hardware``.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Protocol

from attnbench.errors import UserError
from attnbench.executors.placement import gres_gpus
from attnbench.options import Hardware
from attnbench.results import Record
from attnbench.runner import OnStart, Pair

EXECUTORS = ("local", "slurm", "ray")
EXTRAS = {"slurm": ("submitit", "attnbench[slurm]"), "ray": ("ray", "attnbench[ray]")}
"""Remote executors: the module each needs and the extra that installs it."""
FLAGS = {"slurm_partition": "--slurm-partition", "slurm_gres": "--slurm-gres", "slurm_constraint": "--slurm-constraint",
         "slurm_time_min": "--slurm-time", "ray_address": "--ray-address", "ray_accelerator_type": "--ray-accelerator-type"}
"""Each executor setting's command-line flag."""

class Executor(Protocol):
    """Where pairs are measured."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc) -> None: ...

    def submit(self, pairs: list[Pair], on_start: OnStart | None = None) -> Iterator[Record]:
        """One record per pair; ``on_start`` is called as a pair (or its job) starts."""
        ...


@dataclass(frozen=True)
class ExecutorConfig:
    """``--executor`` and its flags, over the suite's ``hardware`` section."""

    kind: str = "local"
    slurm_partition: str | None = None
    slurm_gres: str | None = None
    slurm_constraint: str | None = None
    slurm_time_min: int | None = None
    slurm_gpus_per_job: int | None = None
    """GPUs per job where no gres says (the suite's gpus_per_job); no flag of its own: --slurm-gres replaces it."""
    ray_address: str | None = None
    ray_accelerator_type: str | None = None

    @property
    def remote(self) -> bool:
        """Pairs are measured on other machines, whose devices this one cannot see."""
        return self.kind != "local"

    @property
    def names_gpu(self) -> bool:
        """The settings ask for GPUs: a gres with GPUs, a GPU count, or an accelerator type."""
        return bool(gres_gpus(self.slurm_gres) or self.slurm_gpus_per_job or self.ray_accelerator_type)

    @classmethod
    def from_args(cls, args: argparse.Namespace, hardware: Hardware | None = None) -> ExecutorConfig:
        """From ``attnbench run``'s flags over the suite's ``hardware``; another executor's flags, or a missing
        extra, are errors."""
        config = cls(kind=args.executor, slurm_partition=args.slurm_partition, slurm_gres=args.slurm_gres,
                     slurm_constraint=args.slurm_constraint, slurm_time_min=args.slurm_time,
                     ray_address=args.ray_address, ray_accelerator_type=args.ray_accelerator_type)
        stray = [FLAGS[name] for name, value in asdict(config).items()
                 if name in FLAGS and value is not None and not name.startswith(config.kind + "_")]
        if stray:
            raise UserError(f"{', '.join(stray)}: not a flag of --executor {config.kind}")
        if config.kind in EXTRAS:
            module, extra = EXTRAS[config.kind]
            if importlib.util.find_spec(module) is None:
                raise UserError(f"--executor {config.kind} needs {module}: pip install '{extra}'")
        return config.under(hardware) if hardware is not None else config

    def under(self, hardware: Hardware) -> ExecutorConfig:
        """These settings with the suite's ``hardware`` filling what no flag set: each flag replaces the key it names.

        ``gpu_type`` is Ray's accelerator type and Slurm's constraint; on
        Slurm it also means one GPU per job at least, unless a gres says.
        """
        if self.kind == "ray":
            return replace(self, ray_accelerator_type=self.ray_accelerator_type or hardware.gpu_type)
        if self.kind == "slurm":
            gpus = None if self.slurm_gres else hardware.gpus_per_job or (1 if hardware.gpu_type else None)
            return replace(self, slurm_partition=self.slurm_partition or hardware.partition,
                           slurm_constraint=self.slurm_constraint or hardware.gpu_type, slurm_gpus_per_job=gpus)
        return self  # a local run measures on this machine as it is

    def to_dict(self) -> dict:
        """The settings in force (flags, and the suite's hardware where no flag was given), for the run's record."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def device(self, requested: str) -> str:
        """A remote run's device: as asked, and for ``auto`` whether the flags ask for GPUs."""
        if requested != "auto":
            return requested
        return "cuda" if self.names_gpu else "cpu"
