"""Executors: where a run's pairs are measured.

- ``local``: this machine, one slot per GPU (one on CPU), slots side by side.
- ``slurm``: a job array through submitit (``pip install 'attnbench[slurm]'``).
- ``ray``: a Ray task per case (``pip install 'attnbench[ray]'``).

All yield one record per pair whatever happens, and run the same isolated
worker process for each measurement. docs/executors.md has the details.
"""

from attnbench.executors.base import EXECUTORS, Executor, ExecutorConfig, open_executor

__all__ = ["EXECUTORS", "Executor", "ExecutorConfig", "open_executor"]
