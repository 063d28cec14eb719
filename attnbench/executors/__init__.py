"""Executors: where a run's pairs are measured.

- ``local``: this machine, one slot per GPU (one on CPU), slots side by side.
- ``slurm``: a job array through submitit (``pip install 'attnbench[slurm]'``).
- ``ray``: a Ray task per case (``pip install 'attnbench[ray]'``).

All yield one record per pair whatever happens, and run the same isolated
worker process for each measurement. docs/executors.md has the details.
"""

from __future__ import annotations

import os
from pathlib import Path

from attnbench.executors.base import EXECUTORS, Executor, ExecutorConfig
from attnbench.runner import RunOptions

FORWARDED_ENV_PREFIX = "ATTNBENCH_"
"""Variables the driver hands to remote workers (plugin modules, memory limits): configuration, not paths."""


__all__ = ["EXECUTORS", "Executor", "ExecutorConfig", "open_executor"]


def forwarded_env() -> dict[str, str]:
    """This process's attnbench settings, for workers on other machines."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}


def open_executor(config: ExecutorConfig, options: RunOptions, *, device: str, run_dir: Path) -> Executor:
    """The executor ``config`` names, not yet entered; Slurm keeps its jobs' files under ``run_dir/slurm``."""
    if config.kind == "local":
        from attnbench.executors.local import LocalExecutor

        return LocalExecutor(options, device=device)
    if config.kind == "slurm":
        from attnbench.executors.slurm import SlurmExecutor

        return SlurmExecutor(options, run_dir / "slurm", device=device, partition=config.slurm_partition,
                             gres=config.slurm_gres, constraint=config.slurm_constraint,
                             gpus_per_job=config.slurm_gpus_per_job, time_min=config.slurm_time_min,
                             env=forwarded_env())
    if config.kind == "ray":
        from attnbench.executors.ray import RayExecutor

        return RayExecutor(options, address=config.ray_address, accelerator_type=config.ray_accelerator_type,
                           env=forwarded_env())
    raise ValueError(f"executor {config.kind!r} is not one of {', '.join(EXECUTORS)}")
